#!/usr/bin/env bash
# Generates the completions and man pages from the argument-parser definitions, one set per name dpuctl
# answers to (dpuctl itself and every applet link in .build/links/bin, made by `make links`).
#
#   generate-docs.sh completions                  -> $OUT (default completions/)
#   generate-docs.sh man GENERATE_MANUAL DATE     -> $OUT (default man/)
#   generate-docs.sh check GENERATE_MANUAL DATE   fails if the checked-in files are stale
set -euo pipefail
cd "$(dirname "$0")/.."
LINKS=.build/links/bin
mode=$1

names() { echo dpuctl; "$LINKS/dpuctl" --list | awk '{print $1}'; }

# Section of a name's page: 8 for daemons and the mount helper, 1 otherwise.
section() {
    case $1 in rexec_server | udsproxyd | qtfs_engine | engine | mount.qtfs) echo 8 ;; *) echo 1 ;; esac
}

completions() {
    local out=$1 name
    mkdir -p "$out/bash" "$out/zsh" "$out/fish"
    for name in $(names); do
        "$LINKS/$name" --generate-completion-script bash >"$out/bash/$name"
        "$LINKS/$name" --generate-completion-script zsh >"$out/zsh/_$name"
        "$LINKS/$name" --generate-completion-script fish >"$out/fish/$name.fish"
    done
}

manpages() {
    local out=$1 tool=$2 date=$3 name
    mkdir -p "$out"
    for name in $(names); do
        if [ "$name" = dpuctl ]; then
            # dpuctl.1 plus one page per verb (dpuctl.mount.apply.1 ...).
            "$tool" "$LINKS/dpuctl" --multi-page --section 1 --date "$date" -o "$out"
        else
            "$tool" "$LINKS/$name" --section "$(section "$name")" --date "$date" -o "$out"
        fi
    done
    # generate-manual copies blank lines of a discussion as they are; in mdoc a paragraph break is .Pp
    # (a blank line is a warning, and man -l prints it).
    sed -i 's/^$/.Pp/' "$out"/*.[18]
}

case $mode in
completions) rm -rf "${OUT:-completions}"; completions "${OUT:-completions}" ;;
man) rm -rf "${OUT:-man}"; manpages "${OUT:-man}" "$2" "$3" ;;
check)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    completions "$tmp/completions"
    manpages "$tmp/man" "$2" "$3"
    status=0
    diff -r completions "$tmp/completions" >/dev/null || { echo "completions/ is stale: run 'make completions'"; diff -r completions "$tmp/completions" | head -20; status=1; }
    diff -r man "$tmp/man" >/dev/null || { echo "man/ is stale: run 'make man'"; diff -r man "$tmp/man" | head -20; status=1; }
    exit $status
    ;;
*) echo "usage: $0 completions | man TOOL DATE | check TOOL DATE" >&2; exit 64 ;;
esac

#!/usr/bin/env bash
# `make install` into a staging directory: binary, links, library, units, completions, man pages; the
# pages render, the completions parse, the units pass `systemd-analyze verify`; `make uninstall` removes
# everything it installed.
. "$(dirname "$0")/lib/common.sh"
require_command man
require_command systemd-analyze

cd "$ROOT"
# A real prefix (no DESTDIR), so that the units' ExecStart= paths exist for systemd-analyze.
prefix="$W/usr"
make -s install PREFIX="$prefix" MOUNTHELPERDIR="$prefix/sbin" RELEASE_BIN="$DPUCTL" >"$W/install.log" 2>&1 \
    || { cat "$W/install.log"; failed "make install"; finish; }
expect_status "bin/dpuctl is installed" 0 test -x "$prefix/bin/dpuctl"
for name in $("$DPUCTL" --list | awk '{print $1}'); do
    link=$(ls "$prefix"/bin/"$name" "$prefix"/sbin/"$name" 2>/dev/null | head -1)
    expect_eq "link $name" "$prefix/bin/dpuctl" "$(readlink "$link")"
done
expect_status "libudsproxy.so is installed" 0 test -f "$prefix/lib/libudsproxy.so"

for page in "$prefix"/share/man/man*/*; do
    out=$(MANWIDTH=80 man -l "$page" 2>&1 >/dev/null)
    [ -z "$out" ] && pass "man -l $(basename "$page") renders cleanly" || failed "man -l $(basename "$page"): $out"
done
expect_match "rexec_server is in section 8" "REXEC_SERVER\\(8\\)" "$(MANWIDTH=80 man -l "$prefix/share/man/man8/rexec_server.8" 2>/dev/null | head -1)"

for f in "$prefix"/share/bash-completion/completions/*; do expect_status "bash -n $(basename "$f")" 0 bash -n "$f"; done
if command -v zsh >/dev/null; then
    for f in "$prefix"/share/zsh/site-functions/*; do expect_status "zsh -n $(basename "$f")" 0 zsh -n "$f"; done
fi
if command -v fish >/dev/null; then
    for f in "$prefix"/share/fish/vendor_completions.d/*; do expect_status "fish -n $(basename "$f")" 0 fish -n "$f"; done
fi

units="$prefix/lib/systemd/system"
expect_match "units name the installed binary" "ExecStart=$prefix/bin/rexec_server" "$(cat "$units/rexec.service")"
out=$(MANPATH="$prefix/share/man" SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=yes "$units"/*.service "$units"/*.socket 2>&1)
[ -z "$out" ] && pass "systemd-analyze verify accepts every unit" || failed "systemd-analyze verify: $out"

# A staged install (packaging): everything lands under DESTDIR, links point at the final paths.
stage="$W/stage"
make -s install DESTDIR="$stage" PREFIX=/usr MOUNTHELPERDIR=/usr/sbin RELEASE_BIN="$DPUCTL" >/dev/null 2>&1
expect_status "DESTDIR: usr/bin/dpuctl" 0 test -x "$stage/usr/bin/dpuctl"
expect_eq "DESTDIR: links point at the final path" "/usr/bin/dpuctl" "$(readlink "$stage/usr/bin/rexec")"
expect_status "DESTDIR: units" 0 test -f "$stage/usr/lib/systemd/system/rexec.service"
expect_status "DESTDIR: man pages" 0 test -f "$stage/usr/share/man/man8/rexec_server.8"
expect_status "DESTDIR: completions" 0 test -f "$stage/usr/share/bash-completion/completions/rexec"
expect_eq "DESTDIR: nothing outside the stage" "" "$(find "$stage" -maxdepth 1 ! -path "$stage" ! -name usr)"

make -s uninstall PREFIX="$prefix" MOUNTHELPERDIR="$prefix/sbin" RELEASE_BIN="$DPUCTL" >/dev/null 2>&1
left=$(find "$prefix" -type f -o -type l | head -5)
expect_eq "make uninstall leaves no file behind" "" "$left"
finish

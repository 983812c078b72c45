#!/usr/bin/env bash
# The multi-call binary as a user meets it: names, help, errors, exit statuses, links, keys.
. "$(dirname "$0")/lib/common.sh"

make_links
# The same text; only the usage line says how it was invoked.
expect_eq "rexec --help through the link equals dpuctl rexec --help" \
    "$("$DPUCTL" rexec --help 2>&1 | sed 's/^USAGE: dpuctl rexec /USAGE: rexec /')" "$(rexec --help 2>&1)"
expect_match "the link's help names rexec" "USAGE: rexec " "$(rexec --help 2>&1)"
expect_match "rexec_server's help names itself" "USAGE: rexec_server " "$(rexec_server --help 2>&1)"
expect_match "dpuctl rexec-server's help uses the verb" "USAGE: dpuctl rexec-server " "$("$DPUCTL" rexec-server --help 2>&1)"
expect_match "engine is the old name of qtfs_engine" "USAGE: engine " "$(engine --help 2>&1)"

out=$("$DPUCTL" nosuch 2>&1); status=$?
expect_eq "dpuctl nosuch exits 127" 127 "$status"
expect_eq "with one line" 1 "$(printf '%s\n' "$out" | wc -l)"
expect_match "naming the command" 'unknown command `nosuch`' "$out"

ln -s "$DPUCTL" "$W/bin/not-an-applet"
out=$("$W/bin/not-an-applet" 2>&1); status=$?
expect_eq "an unknown applet name exits 127" 127 "$status"
expect_match "and says how to list the names" 'unknown applet name `not-an-applet`' "$out"

# Arguments after the program belong to the program: -la must not be taken as rexec's option.
out=$(rexec /bin/ls -la 2>&1); status=$?
[ "$status" != 64 ] && pass "rexec /bin/ls -la is not a usage error" || failed "rexec /bin/ls -la: usage error: $out"
out=$(rexec 2>&1); status=$?
expect_eq "rexec without a program is a usage error" 64 "$status"

expect_eq "--version" "$("$DPUCTL" --version)" "$(grep -o 'version = "[^"]*"' "$ROOT/Sources/DPUCtlCLI/DPUCtl.swift" | cut -d'"' -f2)"
list=$("$DPUCTL" --list)
for name in rexec rexec_server udsproxyd qtfs_engine engine mount.qtfs; do
    expect_status "--list has $name" 0 grep -Eqx "$name (bin|sbin)" <<<"$list"
done

# install-links: every name, idempotent, never clobbers a stranger's file.
prefix="$W/prefix"
"$DPUCTL" install-links --prefix "$prefix" >/dev/null
expect_eq "install-links made every link" "$(echo "$list" | wc -l)" "$(find "$prefix" -type l | wc -l)"
expect_eq "mount.qtfs goes to sbin" "$DPUCTL" "$(readlink "$prefix/sbin/mount.qtfs")"
expect_status "a second run changes nothing" 0 "$DPUCTL" install-links --prefix "$prefix" >/dev/null
rm "$prefix/bin/rexec" && echo "#!/bin/sh" >"$prefix/bin/rexec"
out=$("$DPUCTL" install-links --prefix "$prefix" 2>&1); status=$?
expect_eq "a foreign file in the way is refused" 1 "$status"
expect_match "with a way out" "use --force" "$out"
"$DPUCTL" install-links --prefix "$prefix" --force >/dev/null
expect_eq "--force replaces it" "$DPUCTL" "$(readlink "$prefix/bin/rexec")"

# Keys: 0600, never overwritten silently, refused when others can read them.
"$DPUCTL" key generate "$W/key" >/dev/null
expect_eq "a new key is mode 600" 600 "$(stat -c %a "$W/key")"
expect_match "and 64 hex digits" '^[0-9a-f]{64}$' "$(cat "$W/key")"
out=$("$DPUCTL" key generate "$W/key" 2>&1); status=$?
expect_eq "an existing key is kept" 1 "$status"
expect_match "and the message says so in one line" '^dpuctl key generate: key file .* already exists' "$out"
finish

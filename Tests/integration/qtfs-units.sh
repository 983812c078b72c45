#!/usr/bin/env bash
# qtfs-engine.service and .socket as shipped: they pass systemd-analyze verify, and the engine takes the
# socket the service manager passes, says READY=1 once it serves, serves a mount through it, and says
# STOPPING=1 on SIGTERM.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"
require_command systemd-analyze
require_command systemd-socket-activate

qtfs_lab_up
mkdir -p "$W/units"
sed "s|@bindir@|$W/bin|g" "$ROOT/systemd/qtfs-engine.service.in" >"$W/units/qtfs-engine.service"
cp "$ROOT/systemd/qtfs-engine.socket" "$W/units/"
# (Documentation= man pages are checked by install.sh, where they are installed.)
expect_eq "the units pass systemd-analyze verify" "" \
    "$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$W/units/qtfs-engine.service" "$W/units/qtfs-engine.socket" 2>&1)"
expect_match "the service runs what the socket activates" "ExecStart=$W/bin/qtfs_engine" "$(cat "$W/units/qtfs-engine.service")"
expect_match "it is a notify service" "Type=notify" "$(cat "$W/units/qtfs-engine.service")"

qtfs_whitelist "$EXPORT"
lab_bg notify host socat -u "UNIX-RECV:$W/notify.sock" "OPEN:$W/notify.log,creat,append"
wait_for "lab_host test -S '$W/notify.sock'" 10
lab_bg engine host systemd-socket-activate -l "$W/engine.sock" -E "NOTIFY_SOCKET=$W/notify.sock" \
    "$W/bin/qtfs_engine" --whitelist "$W/whitelist" --key "$W/key"
wait_for "lab_host test -S '$W/engine.sock'" 10
MNT=$W/hostmnt
mkdir -p "$MNT"
expect_status "a client mounts through the activated socket" 0 \
    lab_host "$DPUCTL" qtfs mount -o "server=unix://$W/engine.sock" "$EXPORT" "$MNT"
wait_for "grep -q READY=1 '$W/notify.log'" 10
expect_match "the engine said READY=1" "READY=1" "$(cat "$W/notify.log")"
lab_host sh -c "echo through-activation > '$MNT/file'"
expect_eq "the mount works" "through-activation" "$(lab_host cat "$EXPORT/file")"
expect_eq "the engine listens on the passed socket only (no TCP listener of its own)" "" "$(lab_host ss -Hltn)"

# Stray signals during a transfer change nothing; SIGHUP reloads the whitelist, and a broken one is
# refused while the old one stays.
lab_host sh -c "head -c 50M /dev/urandom > '$EXPORT/big'"
engine=$(lab_pid engine)
lab_host sh -c "cat '$MNT/big' > '$HOSTDIR/copy'" &
reader=$!
for signal in URG PIPE WINCH CHLD URG PIPE WINCH; do kill -s "$signal" "$engine" 2>/dev/null; sleep 0.05; done
wait "$reader"
expect_eq "stray signals during a transfer change nothing" "$(lab_host cat "$EXPORT/big" | md5sum)" \
    "$(lab_host cat "$HOSTDIR/copy" | md5sum)"
expect_status "the engine is still there" 0 kill -0 "$engine"
lab_host mkdir -p "$HOSTDIR/second"
qtfs_whitelist "$EXPORT" "$HOSTDIR/second"
kill -HUP "$engine"
wait_for "grep -q 'whitelist reloaded' '$W/engine.log'" 10
mkdir -p "$W/second"
expect_status "after SIGHUP a newly whitelisted export can be mounted" 0 \
    lab_host "$DPUCTL" qtfs mount -o "server=unix://$W/engine.sock" "$HOSTDIR/second" "$W/second"
lab_host umount "$W/second"
echo "[Mount" >"$W/whitelist"
kill -HUP "$engine"
wait_for "grep -q 'keeping the previous configuration' '$W/engine.log'" 10
expect_match "a broken whitelist is refused with its file and line" "whitelist:1:" "$(grep 'reload failed' "$W/engine.log")"
expect_eq "and the old one still serves" "through-activation" "$(lab_host cat "$MNT/file")"

lab_host umount "$MNT"
lab_stop engine TERM
expect_match "and STOPPING=1 on SIGTERM" "STOPPING=1" "$(cat "$W/notify.log")"

# The original's command line: `engine BUFFER_SIZE WORKERS`.
out=$("$DPUCTL" qtfs-engine 4096 99999 2>&1); status=$?
expect_eq "engine 4096 99999 is a usage error" 64 "$status"
expect_match "naming the bad number" "WORKERS" "$out"
qtfs_whitelist "$EXPORT"
lab_bg legacy host "$W/bin/engine" 4096 16 --listen "unix://$W/legacy.sock" --whitelist "$W/whitelist"
wait_for "lab_host test -S '$W/legacy.sock'" 10
expect_status "engine 4096 16 serves" 0 lab_host "$DPUCTL" qtfs mount -o "server=unix://$W/legacy.sock" "$EXPORT" "$MNT"
expect_eq "and its mount works" "through-activation" "$(lab_host cat "$MNT/file")"
lab_host umount "$MNT"
finish

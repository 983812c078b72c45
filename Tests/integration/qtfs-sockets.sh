#!/usr/bin/env bash
# A unix socket of the host on a qtfs export is connectable on the DPU with no preload library: the
# client listens on the socket's own node and carries each connection to the host socket through
# udsproxyd. A socket a DPU process binds on the mount stays the DPU's.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
qtfs_whitelist "$EXPORT"
qtfs_engine_start
printf '[udsproxy]\ncontrol = %s\nallow = %s\n' "$W/host-control.sock" "$EXPORT" >"$W/uds-host.conf"
printf '[udsproxy]\ncontrol = %s\nallow = %s\n' "$W/dpu-control.sock" "$EXPORT" >"$W/uds-dpu.conf"
lab_bg udshost host "$DPUCTL" udsproxy --listen "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/uds-host.conf"
lab_bg udsdpu dpu "$DPUCTL" udsproxy --peer "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/uds-dpu.conf"
wait_for "lab_dpu test -S '$W/dpu-control.sock'" 10 || { cat "$W/udsdpu.log"; skip "udsproxyd did not start"; }
lab_bg echo host socat "UNIX-LISTEN:$EXPORT/echo.sock,fork,mode=666" EXEC:cat
wait_for "lab_host test -S '$EXPORT/echo.sock'" 10

MNT=$W/dpu/mnt
expect_status "mount" 0 qtfs_mount "$EXPORT" "$MNT" "udsproxy=$W/dpu-control.sock"
expect_eq "the host socket is a socket on the DPU" "yes" "$(lab_dpu test -S "$MNT/echo.sock" && echo yes)"
# The very first socket of a mount may refuse one connect while its listener is being set up.
wait_for "echo warm-up | lab_dpu timeout 5 socat - 'UNIX-CONNECT:$MNT/echo.sock' | grep -q warm-up" 10
expect_eq "a DPU client talks to the host's server" "hello-host" \
    "$(echo hello-host | lab_dpu timeout 5 socat - "UNIX-CONNECT:$MNT/echo.sock")"
count=$(lab_dpu sh -c "for i in \$(seq 1 50); do echo \$i | timeout 5 socat - 'UNIX-CONNECT:$MNT/echo.sock'; done" | wc -l)
expect_eq "50 connections one after another" "50" "$count"
lab_dpu sh -c "for i in \$(seq 1 10); do (echo \$i | timeout 5 socat - 'UNIX-CONNECT:$MNT/echo.sock' >>'$W/parallel') & done; wait"
expect_eq "10 at once" "10" "$(wc -l <"$W/parallel")"
chmod 755 "$W" "$W/dpu"
expect_eq "an unprivileged DPU user connects too (the socket's mode allows it)" "as-nobody" \
    "$(echo as-nobody | lab_dpu setpriv --reuid=65534 --regid=65534 --clear-groups timeout 5 socat - "UNIX-CONNECT:$MNT/echo.sock")"
expect_eq "a big transfer comes back whole" "$(head -c 3000000 /dev/zero | md5sum)" \
    "$(head -c 3000000 /dev/zero | lab_dpu timeout 20 socat -t 5 - "UNIX-CONNECT:$MNT/echo.sock" | md5sum)"
expect_eq "no preload library was involved" "" "$(lab_dpu sh -c 'echo $LD_PRELOAD')"

# A socket bound on the DPU is the DPU's.
lab_bg dpulocal dpu socat "UNIX-LISTEN:$MNT/local.sock,fork" SYSTEM:'echo dpu-side'
wait_for "lab_dpu test -S '$MNT/local.sock'" 10
expect_eq "a socket bound on the DPU serves DPU clients" "dpu-side" "$(lab_dpu timeout 5 socat -u "UNIX-CONNECT:$MNT/local.sock" -)"
expect_eq "its node exists on the host" "socket" "$(lab_host stat -c %F "$EXPORT/local.sock")"

# The host server goes away: a connection is closed at once (the listener here accepted it before the
# host could refuse); the mount still unmounts cleanly.
lab_stop echo
wait_for "! lab_host socat -u /dev/null 'UNIX-CONNECT:$EXPORT/echo.sock'" 10
expect_eq "with the host server gone, nothing answers" "" "$(echo gone | lab_dpu timeout 5 socat - "UNIX-CONNECT:$MNT/echo.sock" 2>/dev/null)"
lab_stop dpulocal
client=$(lab_dpu pgrep -f "qtfs mount --foreground.* $MNT\$")
lab_dpu kill -TERM "$client"
expect_status "SIGTERM ends a client that has sockets listening" 0 wait_for "! lab_dpu kill -0 $client" 15
expect_eq "and unmounts" "" "$(lab_dpu grep " $MNT " /proc/self/mountinfo)"
finish

#!/usr/bin/env bash
# The engine restarts while a DPU process has a file open for reading and another for writing: both go on
# (the client waits for the engine, reconnects, opens the files again by path) and nothing is lost or
# written twice. A second writer and a maker of directories never pause, so that requests are on their way
# while the engine stops: none may fail (a MKDIR cannot be sent again blindly: it must not be lost).
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
qtfs_whitelist "$EXPORT"
qtfs_engine_start
MNT=$W/dpu/mnt
expect_status "mount" 0 qtfs_mount "$EXPORT" "$MNT"
lab_host sh -c "head -c 24M /dev/urandom > '$EXPORT/in'"

# One chunk per step, read and written through descriptors opened once; a marker says when the engine
# came back, so that the steps after it can be counted.
lab_bg worker dpu bash -c "
    exec 3<'$MNT/in' 4>'$MNT/out'
    for i in \$(seq 0 23); do
        dd bs=1M count=1 iflag=fullblock <&3 2>/dev/null >'$W/chunk' || { echo \"read failed at \$i\" >'$W/worker-error'; exit 1; }
        [ \$(stat -c %s '$W/chunk') = 1048576 ] || { echo \"short read at \$i\" >'$W/worker-error'; exit 1; }
        cat '$W/chunk' >>'$W/copy'
        cat '$W/chunk' >&4 || { echo \"write failed at \$i\" >'$W/worker-error'; exit 1; }
        [ -e '$W/restarted' ] && echo \$i >>'$W/after'
        sleep 0.25
    done
    echo done >'$W/worker-done'"

RESTLESS="python3 $ROOT/Tests/integration/helpers/restless.py"
lab_host mkdir "$EXPORT/dirs"
lab_bg streamer dpu $RESTLESS write "$MNT/stream" "$W/stop" "$W/stream-result"
lab_bg mkdirs dpu $RESTLESS mkdir "$MNT/dirs" "$W/stop" "$W/mkdir-result"

wait_for "[ -s '$W/copy' ] && [ \$(stat -c %s '$W/copy') -ge 4194304 ]" 20
expect_eq "the pause-less writer is writing before the engine stops" "yes" \
    "$(wait_for "lab_host test -s '$EXPORT/stream'" 10 && echo yes)"
qtfs_engine_stop
expect_eq "the engine is gone" "" "$(lab_host ss -Hltn | grep ":$QTFS_PORT ")"
sleep 1.5
qtfs_engine_start
touch "$W/restarted"
# The pause-less writer goes on a while after the restart, then stops.
size=$(lab_host stat -c %s "$EXPORT/stream")
expect_eq "the pause-less writer writes after the restart" "yes" \
    "$(wait_for "[ \$(lab_host stat -c %s '$EXPORT/stream') -gt $((size + 4194304)) ]" 20 && echo yes)"
touch "$W/stop"
wait_for "[ -e '$W/worker-done' ] || [ -e '$W/worker-error' ]" 60
expect_eq "the reader and writer finished without an error" "" "$(cat "$W/worker-error" 2>/dev/null)"
expect_eq "they worked on after the restart" "yes" "$([ "$(wc -l <"$W/after" 2>/dev/null || echo 0)" -ge 5 ] && echo yes)"
expect_eq "what was read is the host's file" "$(lab_host cat "$EXPORT/in" | md5sum)" "$(md5sum <"$W/copy")"
expect_eq "what was written is on the host, once" "$(lab_host cat "$EXPORT/in" | md5sum)" "$(lab_host cat "$EXPORT/out" | md5sum)"
wait_for "[ -s '$W/stream-result' ]" 30
blocks=$(cat "$W/stream-result" 2>/dev/null)
expect_eq "the pause-less writer's writes all succeeded" "yes" "$([[ $blocks =~ ^[0-9]+$ ]] && echo yes || echo "$blocks")"
expect_eq "what it wrote is on the host, in order, once" \
    "$($RESTLESS expect "${blocks%% *}" 2>/dev/null | md5sum)" "$(lab_host cat "$EXPORT/stream" | md5sum)"
wait_for "[ -s '$W/mkdir-result' ]" 30
made=$(cat "$W/mkdir-result" 2>/dev/null)
expect_eq "every mkdir across the restart succeeded" "yes" "$([[ $made =~ ^[0-9]+$ ]] && echo yes || echo "$made")"
expect_eq "the host has as many directories as succeeded" "$(grep -o '[0-9]\+' <<<"$made" | head -1)" \
    "$(lab_host find "$EXPORT/dirs" -mindepth 1 -maxdepth 1 -type d | wc -l)"
expect_eq "new operations work" "dirs in out stream" "$(lab_dpu ls "$MNT" | tr '\n' ' ' | sed 's/ $//')"
finish

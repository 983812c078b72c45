#!/usr/bin/env bash
# rexec_server survives stray signals: SIGHUP (a reload), SIGUSR1, SIGUSR2 and SIGPIPE sent again and
# again while a large transfer runs through it, both ways; the data arrives intact (cmp) and the server
# is still there afterwards. (The original died of SIGHUP: its unit's ExecReload killed it.)
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
rexec_lab_up
head -c $((96 << 20)) /dev/urandom >"$W/big"

lab_bg transfer dpu sh -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/cat <'$W/big' >'$W/big.back'; echo status \$?"
server=$(server_pid)
sent=0
while ! grep -q '^status' "$W/transfer.log" 2>/dev/null; do
    for sig in HUP USR1 PIPE USR2; do kill -s "$sig" "$server" 2>/dev/null && sent=$((sent + 1)); done
    sleep 0.02
done
[ "$sent" -ge 8 ] && pass "stray signals were sent during the transfer ($sent)" || failed "the transfer ended before stray signals could be sent"
expect_eq "the transfer finished normally" "status 0" "$(cat "$W/transfer.log")"
expect_status "96 MiB came back byte for byte" 0 cmp "$W/big" "$W/big.back"
expect_status "the server is still running" 0 kill -0 "$server"
expect_match "and reloaded on SIGHUP" "reloaded configuration" "$(cat "$W/server.log")"
expect_eq "and serves the next client" "still here" "$(rx /bin/echo still here)"
finish

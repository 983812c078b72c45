#!/usr/bin/env bash
# The original's start gate as its users drive it: rexec with REXEC_HANDSHAKE_RD/WR on two FIFOs writes
# `1` to WR once its pid file exists, then waits for the verdict on RD before the program may run.
#   start-gate.sh DIR VERDICT     (runs `rexec --key DIR/key ...`; prints what it saw)
dir=$1 verdict=$2
mkfifo "$dir/rd" "$dir/wr"
exec 5<>"$dir/rd" 6<>"$dir/wr"
REXEC_HANDSHAKE_RD=5 REXEC_HANDSHAKE_WR=6 rexec --key "$dir/key" /bin/sh -c 'touch "$0/ran"' "$dir" &
client=$!
read -r -n 1 ready <&6
echo "ready=$ready pidfile=$(cat /var/run/rexec/pids/$client) ran-before-gate=$(test -e "$dir/ran" && echo yes || echo no)"
printf '%s' "$verdict" >&5
wait $client
echo "status=$? ran=$(test -e "$dir/ran" && echo yes || echo no)"
rm -f "$dir/rd" "$dir/wr" "$dir/ran"

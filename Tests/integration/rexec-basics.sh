#!/usr/bin/env bash
# rexec as a caller meets it: output, input and its end, exit statuses and deaths by signal reproduced,
# argv/environment/cwd/umask carried, the pid file, and one-line errors with a shell's statuses.
# Client on the DPU, server on the host. Includes the original's failures as regressions (stdin EOF never
# forwarded, no env or cwd, exec failure reported as success).
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
rexec_lab_up

expect_eq "output comes back" "hello world" "$(rx /bin/echo hello world)"
expect_eq "stderr stays stderr" "to-stderr" "$(rx /bin/sh -c 'echo to-stderr >&2' 2>&1 >/dev/null)"
expect_eq "argv travels exactly (empty, spaces, UTF-8)" "[] [a b] [ünï]" "$(rx /bin/sh -c 'printf "[%s] " "$@"' sh '' 'a b' 'ünï' | sed 's/ $//')"

# stdin and its end (the original never forwarded EOF: a remote cat hung forever).
expect_eq "stdin arrives and its end too" "x" "$(echo x | rx /bin/cat)"
expect_eq "an empty stdin is an immediate end" "exit 0" "$(rx_status /bin/cat </dev/null)"
head -c 3000000 /dev/urandom >"$W/blob"
rx /bin/cat <"$W/blob" >"$W/blob.back"
expect_status "3 MB through stdin and back, byte for byte" 0 cmp "$W/blob" "$W/blob.back"
expect_eq "stdin from a file" "$(wc -c <"$W/blob")" "$(rx /bin/sh -c 'wc -c' <"$W/blob" | tr -d ' ')"

# Exit statuses and deaths by signal, as the parent sees them.
expect_eq "exit 0" "exit 0" "$(rx_status /bin/true)"
expect_eq "exit 1" "exit 1" "$(rx_status /bin/false)"
expect_eq "exit 3" "exit 3" "$(rx_status /bin/sh -c 'exit 3')"
expect_eq "exit 255" "exit 255" "$(rx_status /bin/sh -c 'exit 255')"
expect_eq "a remote death by SIGTERM is a death by SIGTERM here" "signal SIGTERM" \
    "$(rx_status /bin/sh -c 'kill -TERM $$')"
expect_eq "and SIGKILL" "signal SIGKILL" \
    "$(rx_status /bin/sh -c 'kill -KILL $$')"
expect_eq "and SIGSEGV (no core here)" "signal SIGSEGV" \
    "$(rx_status /bin/sh -c 'ulimit -c 0; kill -SEGV $$')"

# A closed stdout ends both sides: the remote yes dies of SIGPIPE, and so does its stand-in.
out=$(lab_dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /usr/bin/yes | head -1; echo \"\${PIPESTATUS[0]}\"")
expect_eq "rexec yes | head -1 prints y" "y" "$(echo "$out" | head -1)"
expect_eq "and rexec dies of SIGPIPE like yes would (141)" "141" "$(echo "$out" | tail -1)"
wait_for "! lab_host pgrep -x yes" 10
expect_status "no yes is left on the host" 1 lab_host pgrep -x yes

# Environment, working directory, umask.
expect_eq "the environment travels" "FOO=bar" "$(FOO=bar rx /usr/bin/env | grep '^FOO=')"
expect_eq "-u leaves a variable out" "" "$(FOO=bar rx -u FOO /usr/bin/env | grep '^FOO=')"
expect_eq "-e sets one" "X=1" "$(rx -e X=1 /usr/bin/env | grep '^X=')"
expect_eq "--clear-env starts empty" "ONLY=1" "$(rx --clear-env -e ONLY=1 /usr/bin/env)"
expect_eq "CMD_NET_ADDR is rexec's, not the program's" "" "$(rx /usr/bin/env | grep '^CMD_NET_ADDR=')"
mkdir -p "$W/work dir"
expect_eq "the working directory travels" "$W/work dir" "$(cd "$W/work dir" && rx /bin/pwd)"
expect_eq "--cwd overrides it" "/tmp" "$(rx --cwd /tmp /bin/pwd)"
expect_eq "the umask travels" "0027" "$(lab_dpu sh -c "umask 027; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c umask")"
out=$(rx /bin/sh -c 'read -r pid comm state ppid group session rest </proc/$$/stat; echo $pid $group $session')
expect_match "the program leads its own session and process group" "^([0-9]+) \1 \1$" "$out"
lab_dpu mkdir -p /run/rexec/dpu-only
out=$(lab_dpu sh -c "cd /run/rexec/dpu-only && env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/pwd" 2>&1); status=$?
expect_eq "a working directory the host lacks fails" 255 "$status"
expect_match "and says which and what to do" '^rexec: /bin/pwd: the working directory /run/rexec/dpu-only is not usable on the server .*--cwd' "$out"

# The pid file: remote pid, no newline, locked, removed at the end.
lab_bg sleeper dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo $$ >'"$W/remote.pid"'; exec sleep 30'
wait_for "test -s $W/remote.pid"
client=$(lab_dpu pgrep -f 'rexec --key .* /bin/sh -c echo')
wait_for "lab_dpu test -s /var/run/rexec/pids/$client"
expect_eq "pids/<client pid> holds the remote pid" "$(cat "$W/remote.pid")" "$(lab_dpu cat /var/run/rexec/pids/$client)"
expect_eq "without a newline" "$(tr -d '\n' <"$W/remote.pid" | wc -c)" "$(lab_dpu sh -c "wc -c < /var/run/rexec/pids/$client")"
expect_status "and locked while the client lives" 1 lab_dpu flock -n /var/run/rexec/pids/$client true
lab_host kill "$(cat "$W/remote.pid")"
wait_for "! kill -0 $(lab_pid sleeper)"
expect_status "removed when it ends" 1 lab_dpu test -e /var/run/rexec/pids/$client

# The original's start gate: the pid file is ready before the program runs, and the caller can veto it.
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" bash "$ROOT/Tests/integration/helpers/start-gate.sh" "$W" 1)
expect_match "REXEC_HANDSHAKE_WR: the pid file exists before the program runs" "^ready=1 pidfile=[0-9]+ ran-before-gate=no" "$out"
expect_match "REXEC_HANDSHAKE_RD '1': it runs" "status=0 ran=yes$" "$out"
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" bash "$ROOT/Tests/integration/helpers/start-gate.sh" "$W" 0 2>&1)
expect_match "anything else: it never runs and rexec exits 1" "status=1 ran=no$" "$out"

# One-line errors with a shell's statuses.
out=$(rx /nonexistent/program 2>&1); status=$?
expect_eq "a whitelisted but missing program: 127" 127 "$status"
expect_match "with a message" '^rexec: /nonexistent/program: not found on the server' "$out"
expect_eq "(in one line)" 1 "$(echo "$out" | wc -l)"
out=$(rx "$W/not-executable" 2>&1); status=$?
expect_eq "a program that cannot be executed: 126" 126 "$status"
expect_match "with a message" 'cannot be executed on the server' "$out"
expect_eq "(in one line)" 1 "$(echo "$out" | wc -l)"
out=$(rx /bin/ls 2>&1); status=$?
expect_eq "a program the whitelist does not list: 126" 126 "$status"
expect_match "naming the whitelist" "^rexec: /bin/ls: not allowed by the server's whitelist \\($W/whitelist\\)$" "$out"
out=$(lab_dpu env CMD_NET_ADDR=tcp://$HOST_IP:7 rexec --key "$W/key" /bin/true 2>&1); status=$?
expect_eq "no server: 255" 255 "$status"
expect_match "naming the address" "^rexec: cannot connect to tcp://$HOST_IP:7: " "$out"
expect_eq "in one line" 1 "$(echo "$out" | wc -l)"
out=$(lab_dpu env CMD_NET_ADDR=bogus rexec /bin/true 2>&1); status=$?
expect_eq "a malformed CMD_NET_ADDR is a usage error" 64 "$status"
expect_match "saying what is expected" 'CMD_NET_ADDR: invalid address `bogus`: expected tcp://HOST:PORT' "$out"
expect_eq "a bare name is looked up in the server's PATH, not the client's" "from-server-path" \
    "$(lab_dpu env PATH=/nonexistent CMD_NET_ADDR="$REXEC_URL" "$DPUCTL" rexec --key "$W/key" sh -c 'echo from-server-path')"
expect_eq "dpuctl rexec is rexec" "same" "$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" "$DPUCTL" rexec --key "$W/key" /bin/echo same)"
expect_eq "the unix socket serves local clients" "local" "$(rx_unix /bin/echo local)"
# Without CMD_NET_ADDR: `[rexec] connect` in the configuration, else the original's unix socket.
printf '[rexec]\nconnect = %s\n' "$REXEC_URL" >"$W/client.conf"
expect_eq "the address from the configuration" "from-config" \
    "$(lab_dpu env -u CMD_NET_ADDR rexec --config "$W/client.conf" --key "$W/key" /bin/echo from-config)"
expect_eq "CMD_NET_ADDR before the configuration" "from-variable" \
    "$(lab_host env CMD_NET_ADDR=unix:///run/rexec/rexec_uds.sock rexec --config "$W/client.conf" /bin/echo from-variable)"
expect_eq "with neither, /var/run/rexec/rexec_uds.sock" "default" \
    "$(lab_host env -u CMD_NET_ADDR rexec --config "$W/none.conf" /bin/echo default)"
finish

#!/usr/bin/env bash
# rexec against its peers, side by side in one run on loopback: dpuctl rexec over TCP (with the
# pre-shared key, as deployed) and over the unix socket; ssh to an sshd started here, with and without
# ControlMaster; and the local floor. Latency of /bin/true; stdout and stdin throughput of 1 GiB.
#   bench/rexec.sh [DPUCTL]        (root: sshd needs it; installs hyperfine, jq and openssh if missing)
#   LATENCY_ONLY=1: the latency table alone; ROUNDS=N: latency in N interleaved rounds (default 5)
# Prints markdown for bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ "$(id -u)" = 0 ] || { echo "bench/rexec.sh: run as root (it starts an sshd)" >&2; exit 1; }
need hyperfine
need jq
need ssh openssh-client
[ -x /usr/sbin/sshd ] || need sshd openssh-server
bin=$(readlink -f "${1:-.build/release/dpuctl}")
[ -x "$bin" ] || make build

# Only stdin, stdout and stderr from here on: rexec carries every other inherited fd to the remote
# program (a pipe becomes a stream, ~60 µs more per run), ssh none, so an fd the caller leaked (some
# terminals and job runners leave a pipe open above 2) would time a different job for rexec.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    # (255: bash reads this script from it)
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

T=$(mktemp -d /tmp/rexec-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -S "$T/cm" ] && ssh -S "$T/cm" -O exit x 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

# rexec_server on loopback: TCP with a key, and a unix socket.
ln -s "$bin" "$T/rexec"
ln -s "$bin" "$T/rexec_server"
"$bin" key generate "$T/key" >/dev/null
printf '/bin/true\n/usr/bin/head\n/bin/cat\n' >"$T/whitelist"
printf '[rexec-server]\nruntime-dir = %s/run\n' "$T" >"$T/dpuctl.conf"
rport=$(free_port)
"$T/rexec_server" --listen "tcp://127.0.0.1:$rport" --listen "unix://$T/rexec.sock" --key "$T/key" \
    --whitelist "$T/whitelist" --config "$T/dpuctl.conf" >"$T/server.log" 2>&1 &
pids+=($!)

# sshd on loopback with its own host key and one authorized key; nothing of the system's configuration.
sport=$(free_port)
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$T/user_key"
cp "$T/user_key.pub" "$T/authorized_keys"
cat >"$T/sshd_config" <<EOF
Port $sport
ListenAddress 127.0.0.1
HostKey $T/host_key
AuthorizedKeysFile $T/authorized_keys
PidFile $T/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
AcceptEnv none
EOF
# sshd runs commands through the user's shell, and bash reads ~/.bashrc (and Debian's /etc/bash.bashrc)
# when sshd starts it: hide them in sshd's own mount namespace, so the baseline is ssh, not a shell's rc.
: >"$T/empty"
unshare --mount --propagation private sh -c '
    for rc in "$HOME/.bashrc" /etc/bash.bashrc; do [ -e "$rc" ] && mount --bind "$1" "$rc"; done
    exec /usr/sbin/sshd -D -f "$2" -E "$3"' sh "$T/empty" "$T/sshd_config" "$T/sshd.log" &
pids+=($!)
for _ in $(seq 100); do
    ss -Hltn "sport = :$rport" | grep -q . && ss -Hltn "sport = :$sport" | grep -q . && break
    sleep 0.05
done
SSH="ssh -p $sport -i $T/user_key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=error"
SSH_CM="$SSH -S $T/cm"
$SSH -S "$T/cm" -M -N -f -o ControlPersist=600 127.0.0.1
RX_TCP="$T/rexec --connect tcp://127.0.0.1:$rport --key $T/key"
RX_UNIX="$T/rexec --connect unix://$T/rexec.sock"
# Sanity: every path runs the program.
for cmd in "$RX_TCP /bin/true" "$RX_UNIX /bin/true" "$SSH 127.0.0.1 /bin/true" "$SSH_CM 127.0.0.1 /bin/true"; do
    $cmd || { echo "bench/rexec.sh: '$cmd' failed" >&2; cat "$T/server.log" "$T/sshd.log" >&2; exit 1; }
done

# Latency in ROUNDS rounds of 300/ROUNDS runs per command, the commands taken in turn in each round: a
# burst of the machine's other load then falls on all of them alike instead of on whichever command
# hyperfine was running. The table pools each command's runs; the line below it gives the per-round
# ratios.
ROUNDS=${ROUNDS:-5}
rounds=()
for round in $(seq "$ROUNDS"); do
    hyperfine -N --warmup 10 --runs $((300 / ROUNDS)) --export-json "$T/latency-$round.json" \
        -n '/bin/true' '/bin/true' \
        -n 'sh -c true' 'sh -c true' \
        -n 'rexec /bin/true (tcp, key)' "$RX_TCP /bin/true" \
        -n 'rexec /bin/true (unix)' "$RX_UNIX /bin/true" \
        -n 'ssh /bin/true' "$SSH 127.0.0.1 /bin/true" \
        -n 'ssh /bin/true (ControlMaster)' "$SSH_CM 127.0.0.1 /bin/true" >/dev/null
    rounds+=("$T/latency-$round.json")
done
pool_rounds "$T/latency.json" "${rounds[@]}"
latency_table() {
    echo "Latency of \`/bin/true\` (hyperfine -N, $ROUNDS rounds of $((300 / ROUNDS)) runs of each command in turn, pooled):"
    echo
    median_table "$T/latency.json" 'ssh /bin/true (ControlMaster)'
    echo
    echo "Per round, rexec over TCP against ssh with ControlMaster: $(round_ratios "${rounds[@]}" 'rexec /bin/true (tcp, key)' 'ssh /bin/true (ControlMaster)'); over the unix socket: $(round_ratios "${rounds[@]}" 'rexec /bin/true (unix)' 'ssh /bin/true (ControlMaster)')."
}

if [ "${LATENCY_ONLY:-0}" = 1 ]; then
    echo "bench/rexec.sh, $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), release build; hyperfine"
    echo
    latency_table
    exit 0
fi

# 1 GiB each way. Output goes through a pipe to cat (a /dev/null stdout would be reopened on the server
# side and nothing would travel).
G=1073741824
hyperfine --shell=bash --warmup 1 --runs 5 --export-json "$T/stdout.json" \
    -n 'local: head | cat' "head -c $G /dev/zero | cat >/dev/null" \
    -n 'rexec head (tcp, key)' "$RX_TCP /usr/bin/head -c $G /dev/zero | cat >/dev/null" \
    -n 'rexec head (unix)' "$RX_UNIX /usr/bin/head -c $G /dev/zero | cat >/dev/null" \
    -n 'ssh head (ControlMaster)' "$SSH_CM 127.0.0.1 head -c $G /dev/zero | cat >/dev/null" >/dev/null
hyperfine --shell=bash --warmup 1 --runs 5 --export-json "$T/stdin.json" \
    -n 'local: head | cat' "head -c $G /dev/zero | cat >/dev/null" \
    -n 'head | rexec cat (tcp, key)' "head -c $G /dev/zero | $RX_TCP /bin/cat | cat >/dev/null" \
    -n 'head | rexec cat (unix)' "head -c $G /dev/zero | $RX_UNIX /bin/cat | cat >/dev/null" \
    -n 'head | ssh cat (ControlMaster)' "head -c $G /dev/zero | $SSH_CM 127.0.0.1 cat | cat >/dev/null" >/dev/null

# GiB/s from the median, and the ratio to ssh with ControlMaster.
throughput_table() {
    jq -r --arg base "$2" '
        (.results | map(select(.command | startswith($base))) | first | .median) as $b |
        "| command | median | GiB/s | vs ssh (ControlMaster) |",
        "|---|---|---|---|",
        (.results[] | "| `\(.command)` | \(.median * 1000 | round) ms | \(1 / .median * 100 | round / 100) | \($b / .median * 100 | round / 100)× |")
    ' "$1"
}

echo "bench/rexec.sh, $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), release build; hyperfine"
echo
latency_table
echo
echo "stdout, 1 GiB (\`head -c 1G /dev/zero\` remote, piped to a local cat; 5 runs):"
echo
throughput_table "$T/stdout.json" 'ssh head'
echo
echo "stdin, 1 GiB (local \`head -c 1G /dev/zero\` into a remote cat, its output piped to a local cat; 5 runs):"
echo
throughput_table "$T/stdin.json" 'head | ssh cat'

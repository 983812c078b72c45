#!/usr/bin/env bash
# udsproxy against the floor and against a relay of the same shape, in the two-machine lab (root):
#
#   direct    client and server on the host, one unix socket
#   socat     DPU: socat UNIX-LISTEN -> TCP -> host: socat UNIX-CONNECT (a process pair per connection)
#   dpuctl    DPU: LD_PRELOAD=libudsproxy.so client -> udsproxyd -> TCP -> udsproxyd -> unix socket
#
# Connect-to-first-byte, 1 B and 4 KiB round trips (medians of thousands), throughput each way.
#   bench/udsproxy.sh [DPUCTL [LIBUDSPROXY]]     (defaults: the release build from `make build`)
#   ROUNDS=3 CONNECTS=2000 RTTS=20000 BYTES=$((1<<30)) bench/udsproxy.sh
set -uo pipefail  # not -e: the lab helpers test commands that may fail
cd "$(dirname "$0")/.."
. bench/lib.sh
need socat
need cc gcc
DPUCTL=$(readlink -f "${1:-.build/release/dpuctl}")
PRELOAD=$(readlink -f "${2:-$(dirname "$DPUCTL")/libudsproxy.so}")
[ -x "$DPUCTL" ] && [ -f "$PRELOAD" ] || { echo "build first: make build" >&2; exit 1; }
export DPUCTL
CONNECTS=${CONNECTS:-2000}
RTTS=${RTTS:-20000}
BYTES=${BYTES:-$((1 << 30))}
ROUNDS=${ROUNDS:-3}

. Tests/integration/lib/common.sh
. Tests/integration/lib/lab.sh
cc -O2 -pthread -o "$W/udsbench" bench/udsbench.c
lab_up
for machine in host dpu; do lab_tmpfs "$machine" /srv; lab_tmpfs "$machine" /run; done
lab_host mkdir -p /srv/remote
lab_dpu mkdir -p /srv/remote
printf '[udsproxy]\nallow = /srv/remote\n' >"$W/udsproxy.conf"
B="$W/udsbench"

lab_bg server host "$B" server /srv/remote/bench.sock
lab_bg socat-host host socat TCP-LISTEN:7100,bind=$HOST_IP,fork,reuseaddr UNIX-CONNECT:/srv/remote/bench.sock
lab_bg socat-dpu dpu socat UNIX-LISTEN:/srv/remote/relay.sock,fork TCP:$HOST_IP:7100
lab_bg udsproxy-host host "$DPUCTL" udsproxy --listen tcp://$HOST_IP:7200 --insecure --config "$W/udsproxy.conf"
lab_bg udsproxy-dpu dpu "$DPUCTL" udsproxy --peer tcp://$HOST_IP:7200 --insecure --config "$W/udsproxy.conf"
wait_for "lab_host test -S /srv/remote/bench.sock && lab_dpu test -S /srv/remote/relay.sock && lab_dpu test -S /run/qtfs/remote_uds.sock" 10 \
    || { echo "the lab did not come up" >&2; cat "$W"/*.log >&2; exit 1; }
wait_for "grep -q 'connected to the peer' '$W/udsproxy-dpu.log'" 10

direct() { lab_host "$B" "$@"; }
relay() { local mode=$1 path=$2; shift 2; lab_dpu "$B" "$mode" "${path/bench.sock/relay.sock}" "$@"; }
proxied() { lab_dpu env LD_PRELOAD="$PRELOAD" "$B" "$@"; }
value() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

# The machines are shared and noisy: the variants take turns, ROUNDS times, and each cell is the median
# of the rounds (each round's latency is itself the median of thousands).
declare -A samples result
for ((round = 1; round <= ROUNDS; round++)); do
    for variant in direct relay proxied; do
        samples[$variant,connect]+=" $($variant connect /srv/remote/bench.sock "$CONNECTS" | value median_us)"
        samples[$variant,rtt1]+=" $($variant rtt /srv/remote/bench.sock 1 "$RTTS" | value median_us)"
        samples[$variant,rtt4k]+=" $($variant rtt /srv/remote/bench.sock 4096 "$RTTS" | value median_us)"
        samples[$variant,up]+=" $($variant up /srv/remote/bench.sock "$BYTES" | value mib_per_s)"
        samples[$variant,down]+=" $($variant down /srv/remote/bench.sock "$BYTES" | value mib_per_s)"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for key in "${!samples[@]}"; do result[$key]=$(median <<<"${samples[$key]}"); done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
echo "bench/udsproxy.sh, $(date -u +%Y-%m-%d), $(nproc) cores, lab veth; $ROUNDS rounds of: $CONNECTS connects, $RTTS round trips, $((BYTES >> 20)) MiB each way"
echo
echo "| metric | direct unix socket | socat relay | dpuctl udsproxy | dpuctl / socat |"
echo "|---|---|---|---|---|"
for metric in connect rtt1 rtt4k; do
    case $metric in connect) name="connect → first byte";; rtt1) name="round trip 1 B";; rtt4k) name="round trip 4 KiB";; esac
    echo "| $name | ${result[direct,$metric]} µs | ${result[relay,$metric]} µs | ${result[proxied,$metric]} µs | $(ratio "${result[proxied,$metric]}" "${result[relay,$metric]}") |"
done
for metric in up down; do
    case $metric in up) name="throughput client → server";; down) name="throughput server → client";; esac
    echo "| $name | ${result[direct,$metric]} MiB/s | ${result[relay,$metric]} MiB/s | ${result[proxied,$metric]} MiB/s | $(ratio "${result[proxied,$metric]}" "${result[relay,$metric]}") |"
done

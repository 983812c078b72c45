# Common helpers for dpuctl's shell tests. Source it first; see Tests/integration/README.md.
#
# Each test runs in its own work directory ($W), exits 0 (pass), 1 (fail) or 77 (skip, with a reason),
# and must clean up after itself on every exit path (cleanup functions registered with `on_exit`).

set -u
set -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
# The binary under test: $DPUCTL, else the newer of the release and debug builds (a stale release
# build must not be tested in place of the code just built).
if [ -z "${DPUCTL:-}" ]; then
    DPUCTL=$(ls -t "$ROOT/.build/release/dpuctl" "$ROOT/.build/debug/dpuctl" 2>/dev/null | head -1)
fi
[ -n "${DPUCTL:-}" ] && [ -x "$DPUCTL" ] || { echo "no dpuctl binary: run 'make' first" >&2; exit 1; }
DPUCTL=$(readlink -f "$DPUCTL")
export DPUCTL

TEST_NAME=$(basename "$0" .sh)
W=$(mktemp -d "${TMPDIR:-/tmp}/dpuctl-test.$TEST_NAME.XXXXXX")
export W

_exit_hooks=()
# Registers a command to run when the test exits, however it exits. Hooks run in reverse order.
on_exit() { _exit_hooks+=("$*"); }
_run_exit_hooks() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ "$status" != 0 ] && [ "$status" != 77 ]; then _report_failure; fi
    local i
    for ((i = ${#_exit_hooks[@]} - 1; i >= 0; i--)); do eval "${_exit_hooks[$i]}" >/dev/null 2>&1 || true; done
    rm -rf "$W" 2>/dev/null || true
    exit "$status"
}
trap _run_exit_hooks EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# A failed test shows, before $W goes, what its background processes said (lab_bg's NAME.log) and how
# the lab's orphans ended (a detached daemon that died of a signal leaves no other trace).
_report_failure() {
    local file
    for file in "$W"/*.log; do
        [ -s "$file" ] || continue
        echo "--- $(basename "$file"), last 30 lines:"
        tail -n 30 "$file"
    done
    for file in "$W"/lab/*.deaths; do
        [ -s "$file" ] || continue
        echo "--- $(basename "$file" .deaths): orphans reaped by its init that died of a signal or failed:"
        cat "$file"
    done
}

_failures=0
_checks=0
pass() { _checks=$((_checks + 1)); echo "  ok   $*"; }
failed() { _checks=$((_checks + 1)); _failures=$((_failures + 1)); echo "  FAIL $*"; }
skip() { echo "  skip: $*"; exit 77; }

# expect_eq WHAT EXPECTED ACTUAL
expect_eq() {
    if [ "$2" == "$3" ]; then pass "$1"; else failed "$1: expected [$2], got [$3]"; fi
}
# expect_match WHAT REGEX ACTUAL
expect_match() {
    if [[ "$3" =~ $2 ]]; then pass "$1"; else failed "$1: [$3] does not match /$2/"; fi
}
# expect_status WHAT EXPECTED CMD...: runs CMD and checks its exit status.
expect_status() {
    local what=$1 expected=$2
    shift 2
    "$@"
    local actual=$?
    expect_eq "$what (exit status)" "$expected" "$actual"
}
# Ends the test: 0 if every check passed.
finish() {
    if [ "$_failures" -gt 0 ]; then
        echo "$TEST_NAME: $_failures of $_checks checks failed"
        exit 1
    fi
    echo "$TEST_NAME: all $_checks checks passed"
    exit 0
}

require_root() { [ "$(id -u)" = 0 ] || skip "needs root"; }
require_command() { command -v "$1" >/dev/null 2>&1 || skip "needs $1 (make deps installs it)"; }

# Waits up to $2 seconds (default 10) for the command in $1 to succeed.
wait_for() {
    local condition=$1 limit=${2:-10} i
    for ((i = 0; i < limit * 20; i++)); do
        eval "$condition" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    return 1
}

# A bin directory with every applet linked to the binary under test: $W/bin/rexec etc.
make_links() {
    "$DPUCTL" install-links --prefix "$W" >/dev/null || { echo "install-links failed" >&2; exit 1; }
    export PATH="$W/bin:$W/sbin:$PATH"
}

# A free TCP port on loopback (in the current network namespace).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
    done
}

#!/usr/bin/env bash
# Runs dpuctl's shell tests: every Tests/integration/*.sh (or the ones named), each with a time limit,
# then checks that the tests left nothing behind (namespaces, FUSE mounts, processes).
#
#   Tests/integration/run.sh [TEST...]     TEST_TIMEOUT=seconds (default 600)
set -u
# A relative DPUCTL= means the caller's directory, not this one.
if [ -n "${DPUCTL:-}" ]; then DPUCTL=$(readlink -f "$DPUCTL"); export DPUCTL; fi
cd "$(dirname "$0")"
timeout_seconds=${TEST_TIMEOUT:-600}
if [ $# -gt 0 ]; then tests=("$@"); else tests=(*.sh); fi

passed=() failed=() skipped=()
for test in "${tests[@]}"; do
    # A bare name is a test here; a path (../e2e/libvirt.sh) is taken as given.
    case $test in */*) path=$test ;; *) path=./${test%.sh}.sh ;; esac
    test=$(basename "$path")
    [ "$test" = run.sh ] && continue
    echo "== $test"
    start=$(date +%s)
    timeout -k 15 "$timeout_seconds" bash "$path"
    status=$?
    elapsed=$(($(date +%s) - start))
    case $status in
    0) passed+=("$test") ; echo "== PASS $test (${elapsed}s)" ;;
    77) skipped+=("$test") ; echo "== SKIP $test" ;;
    124) failed+=("$test") ; echo "== FAIL $test: timed out after ${timeout_seconds}s" ;;
    *) failed+=("$test") ; echo "== FAIL $test (status $status, ${elapsed}s)" ;;
    esac
done

# Nothing may outlive the tests: a leak here is a leak on an operator's machine.
leftovers=""
ns=$(ip netns list 2>/dev/null | awk '$1 ~ /^dl[0-9]+[hd]$/ {print $1}' | tr '\n' ' ')
[ -n "$ns" ] && leftovers+=" network namespaces: $ns;"
fuse=$(awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) ~ /^fuse/) print $5; break }}' /proc/self/mountinfo | tr '\n' ' ')
[ -n "$fuse" ] && leftovers+=" FUSE mounts: $fuse;"
procs=$(pgrep -a -f 'dpuctl-test\.' | grep -v -e pgrep -e "$$" | head -5 | tr '\n' ' ')
[ -n "$procs" ] && leftovers+=" processes: $procs;"
if [ -n "$leftovers" ]; then
    echo "== FAIL leftovers:$leftovers"
    failed+=("leftovers")
fi

echo
echo "passed: ${#passed[@]}  skipped: ${#skipped[@]}  failed: ${#failed[@]}"
[ ${#skipped[@]} -gt 0 ] && echo "skipped: ${skipped[*]}"
[ ${#failed[@]} -gt 0 ] && { echo "failed: ${failed[*]}"; exit 1; }
exit 0

#!/usr/bin/env bash
# The checked-in completions and man pages are what the argument-parser definitions generate now.
. "$(dirname "$0")/lib/common.sh"
cd "$ROOT"
out=$(make -s check-generated RELEASE_BIN="$DPUCTL" 2>&1)
status=$?
expect_eq "completions/ and man/ are up to date (make completions man)" 0 "$status"
[ "$status" = 0 ] || echo "$out" | head -20
finish

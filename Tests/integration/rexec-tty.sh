#!/usr/bin/env bash
# TTY mode: when stdin is a terminal (or with -t) the remote program gets a pseudo-terminal with our
# terminal's modes and size; our terminal is raw while it runs and restored afterwards; ^C typed here is
# the remote terminal's ^C. The original had no TTY support at all. `script` provides the local terminal.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command script
rexec_lab_up
REXEC="env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key"
# script(1)'s input is a FIFO we hold open: at end of input script would type an end-of-file character.
mkfifo "$W/idle"
exec 6<>"$W/idle"
in_terminal() { lab_dpu script -qec "$1" /dev/null <"$W/idle" 6>&- | tr -d '\r'; }

expect_match "with a terminal on stdin the program gets one" "^/dev/pts/[0-9]+$" "$(in_terminal "$REXEC /usr/bin/tty")"
expect_eq "-T: it does not" "not a tty" "$(in_terminal "$REXEC -T /usr/bin/tty")"
expect_eq "without one, -t gives it one anyway" "yes" "$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" -t /bin/sh -c 'test -t 0 && test -t 1 && echo yes' </dev/null 6>&- | tr -d '\r')"
expect_eq "its size is ours" "33 77" "$(in_terminal "stty rows 33 cols 77; $REXEC /bin/stty size")"
expect_match "its modes are ours" "-echo " "$(in_terminal "stty -echo; $REXEC /bin/stty -a")"
expect_eq "stdout redirected stays a pipe (only the terminal fds get the pty)" "pipe" \
    "$(in_terminal "$REXEC /bin/sh -c 'test -t 1 && echo tty || echo pipe' | cat")"
before=$(in_terminal "stty -g")
expect_eq "our terminal is restored afterwards" "$before" "$(in_terminal "$REXEC /bin/true; stty -g")"

# ^C typed on our terminal reaches the remote program through its terminal.
mkfifo "$W/keys"
exec 4<>"$W/keys"  # read-write: neither open blocks
# (Not lab_bg: a background command of a script gets /dev/null as stdin unless redirected itself.)
lab_dpu script -qec "$REXEC /bin/sh -c 'trap \"echo got-int; exit 5\" INT; echo ready; while :; do sleep 0.05; done'; echo status \$?" /dev/null \
    <"$W/keys" >"$W/typed.log" 2>&1 4>&- &
wait_for "grep -q ready '$W/typed.log'" 10
# Raw while the program runs: without it ^C would still arrive (as our SIGINT, forwarded), but typed
# keys would be edited and echoed here as well as there.
client=$(pgrep -f "rexec --key $W/key /bin/sh -c trap \"echo got-int" | head -1)
modes=$(stty -F "$(readlink "/proc/$client/fd/0")" -a)
for mode in -icanon -isig -echo -icrnl -opost; do
    expect_match "our terminal is raw while the program runs ($mode)" "(^| )$mode( |;|\$)" "$(echo $modes)"
done
printf '\003' >&4
expect_status "^C is delivered as the remote terminal's interrupt" 0 wait_for "grep -q got-int '$W/typed.log'" 10
wait_for "grep -q status '$W/typed.log'" 10
expect_match "and the program's exit status comes back" "status 5" "$(tr -d '\r' <"$W/typed.log")"
exec 4>&-

# Resizing our terminal resizes the remote one (SIGWINCH here, TIOCSWINSZ there, SIGWINCH to its program).
mkfifo "$W/keys2"
exec 4<>"$W/keys2"
lab_dpu script -qec "stty rows 10 cols 20; $REXEC /bin/sh -c 'trap \"stty size; exit 0\" WINCH; echo ready; while :; do sleep 0.05; done'" /dev/null \
    <"$W/keys2" >"$W/resized.log" 2>&1 4>&- &
wait_for "grep -q ready '$W/resized.log'" 10
client=$(pgrep -f "rexec --key $W/key /bin/sh -c trap \"stty size" | head -1)
terminal=$(readlink "/proc/$client/fd/0")
stty -F "$terminal" rows 30 cols 90
expect_status "a new window size reaches the remote program" 0 wait_for "grep -q '30 90' '$W/resized.log'" 10
exec 4>&-
finish

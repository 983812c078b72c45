#!/usr/bin/env bash
# `dpuctl mount apply / status / revert / plan` on the lab's DPU (its own mount namespace): the built-in
# plan applies, is idempotent, reverts to exactly the mount table it started from, never lands on the
# machine's own /run through an absolute var/run link, reports busy mounts with their holders, and rolls
# back every earlier step when step N fails. Plan files: errors with file:line, optional entries skipped,
# stacking refused unless asked for.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/devtmpfs.sh"

require_root
lab_up
devtmpfs_keep_clean

R=$W/rootfs
mkdir -p "$R/var"
ln -s /run "$R/var/run"   # absolute, as Debian has it: the guide's bind would land on the real /run
mounts() { lab_dpu cat /proc/self/mountinfo; }
d() { lab_dpu "$DPUCTL" mount "$@"; }

before=$(mounts)
run_mounts_before=$(awk '$5 == "/run"' <<<"$before" | wc -l)

# --- apply, status, apply again, revert -----------------------------------------------------------------
out=$(d apply --local-only --root "$R" 2>&1); rc=$?
first_apply=$out
expect_eq "apply --local-only succeeds" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"
planned=$(d plan --local-only --root "$R" | grep -c '^ *[0-9]\+ [a-z]' )
mounted=$(grep -c '^mounted ' <<<"$out")
skipped=$(grep -c '^skipped ' <<<"$out")
expect_eq "every step mounted or skipped" "$planned" "$((mounted + skipped))"
expect_match "qtfs entries are left out" "skipped +[0-9]+ qtfs on $R/home/VMs: qtfs, not applied with --local-only" "$out"
after=$(mounts)
expect_eq "the bind of /var/run landed inside the rootfs" "1" "$(awk -v p="$R/run" '$5 == p' <<<"$after" | wc -l)"
expect_eq "and not on this machine's /run" "$run_mounts_before" "$(awk '$5 == "/run"' <<<"$after" | wc -l)"
expect_match "targets were created" "created +$R/local/sys" "$out"
expect_eq "the local sysfs is not hidden by anything" "sysfs" "$(lab_dpu findmnt -rno FSTYPE "$R/local/sys")"
cgroups=$(awk -v p="$R/local/sys/fs/cgroup/" 'index($5, p) == 1' <<<"$after" | wc -l)
host_cgroups=$(awk '$5 ~ "^/sys/fs/cgroup/[^/]+$" && ($9 == "cgroup" || $9 == "cgroup2")' <<<"$before" | wc -l)
expect_eq "the machine's cgroup hierarchies are mirrored" "$host_cgroups" "$cgroups"

out=$(d status --local-only --root "$R"); rc=$?
expect_eq "status after apply: complete" 0 "$rc"
expect_match "with a summary" "planned $mounted, present $mounted, missing 0, different 0, skipped $skipped, extra 0" "$out"
expect_match "showing where var/run landed" "present +[0-9]+ +$R/var/run +bind +/var/run +at $R/run" "$out"
out=$(d status --root "$R"); rc=$?
expect_eq "status against the full plan: incomplete" 3 "$rc"
expect_match "the qtfs mounts are missing" "missing +[0-9]+ +$R/proc +qtfs +/proc" "$out"

out=$(d apply --local-only --root "$R" 2>&1); rc=$?
expect_eq "apply twice succeeds" 0 "$rc"
expect_match "and mounts nothing the second time" "$R: 0 mounted, $mounted already present" "$out"
expect_eq "the mount table did not change" "$after" "$(mounts)"

plan=$(d plan --root "$R" --local-only)
mount_order=$(awk '/^mounted / {print $NF}' <<<"$first_apply")
revert_order=$(sed -n '/^Revert, in this order:/,$p' <<<"$plan" | awk '/umount/ {print $2}')
expect_eq "plan's revert list is the mount order reversed" "$(tac <<<"$mount_order")" "$revert_order"

out=$(d revert --root "$R" 2>&1); rc=$?
expect_eq "revert succeeds" 0 "$rc"
expect_eq "revert unmounted the order plan showed" "$revert_order" "$(awk '/^unmounted/ {print $2}' <<<"$out")"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"
out=$(d revert --root "$R" 2>&1); rc=$?
expect_match "revert again: nothing to do" "0 unmounted \(nothing of the plan was mounted\)" "$out"

# --- busy mounts -----------------------------------------------------------------------------------------
d apply --local-only --root "$R" >/dev/null
lab_bg holder dpu sh -c "cd '$R/dev/shm' && exec sleep 300"
wait_for "lab_dpu sh -c 'ls -l /proc/*/cwd 2>/dev/null' | grep -q '$R/dev/shm'" 5
out=$(d revert --root "$R" 2>&1); rc=$?
expect_eq "revert of a busy mount fails" 1 "$rc"
expect_match "naming the mount and who holds it" "$R/dev/shm is busy \(held by [0-9]+ \(sleep\): cwd\)" "$out"
expect_match "and the mount it blocks" "$R/dev left mounted: $R/dev/shm is still mounted on it" "$out"
expect_match "saying what to do" "run .dpuctl mount revert. again, or add --lazy" "$out"
expect_eq "the rest was unmounted" "2" "$(mounts | awk -v p="$R/" 'index($5, p) == 1' | wc -l)"
out=$(d revert --root "$R" --lazy 2>&1); rc=$?
expect_eq "revert --lazy succeeds" 0 "$rc"
expect_match "detaching the busy one" "detached +$R/dev/shm \(busy: held by [0-9]+ \(sleep\)" "$out"
holder=$(grep -o 'held by [0-9]*' <<<"$out" | head -1 | awk '{print $3}')
lab_dpu kill -KILL "$holder"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"

# --- a failure at step N rolls back steps 1..N-1 ------------------------------------------------------------
cat >"$W/broken.conf" <<'EOF'
# five steps; the fourth cannot mount (proc refuses an unknown hidepid value)
[mount /a]
type = tmpfs

[mount /a/b]
type = proc

[mount /c]
type = bind
source = /etc

[mount /d]
type = proc
options = hidepid=bogus

[mount /e]
type = tmpfs
EOF
out=$(d apply --root "$R" --plan "$W/broken.conf" 2>&1); rc=$?
expect_eq "a failing step fails apply" 1 "$rc"
expect_match "naming the step, its line and the kernel's reason" "step 4 of 5 \(proc on $R/d, $W/broken.conf:12\): cannot mount proc on $R/d: .*the kernel says: .*hidepid" "$out"
expect_match "and what was rolled back" "rolled back: unmounted 3 mounts and removed 4 directories made by this run" "$out"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"
expect_eq "the directories it made are gone" "" "$(cd "$R" && ls -d a c d e 2>/dev/null)"

# The same in the built-in plan: a step late in the list.
printf '[plan]\nbase = default\n\n[mount /dev/mqueue]\ntype = mqueue\noptions = no-such-option\n' >"$W/late.conf"
out=$(d apply --local-only --root "$R" --plan "$W/late.conf" 2>&1); rc=$?
expect_eq "a late failure in the built-in plan fails apply" 1 "$rc"
expect_match "naming it" "step [0-9]+ of [0-9]+ \(mqueue on $R/dev/mqueue, $W/late.conf:4\)" "$out"
expect_eq "everything before it was rolled back" "$before" "$(mounts)"

# Something else mounted where the plan mounts: an error, not an overwrite.
lab_dpu sh -c "mkdir -p '$R/etc' && mount -t tmpfs other '$R/etc'"
out=$(d apply --local-only --root "$R" 2>&1); rc=$?
expect_eq "a different mount in the way fails apply" 1 "$rc"
expect_match "saying what is there" "$R/etc already has tmpfs other mounted, not the planned bind /etc" "$out"
out=$(d status --local-only --root "$R"); rc=$?
expect_match "status calls it different" "different +[0-9]+ +$R/etc +bind +/etc +has tmpfs other instead" "$out"
lab_dpu umount "$R/etc"
lab_dpu sh -c "mkdir -p '$R/mnt' && mount -t tmpfs extra '$R/mnt'"
out=$(d status --local-only --root "$R"); rc=$?
expect_eq "an extra mount makes status incomplete" 3 "$rc"
expect_match "listed as extra" "extra +- +$R/mnt +tmpfs +extra +not in the plan" "$out"
out=$(d revert --root "$R" 2>&1)
expect_eq "revert leaves a mount the plan did not make" "tmpfs" "$(lab_dpu findmnt -rno FSTYPE "$R/mnt")"
expect_match "and says so" "left alone, not in the plan \(--all unmounts them\): $R/mnt" "$out"
out=$(d revert --root "$R" --all 2>&1); rc=$?
expect_eq "revert --all takes it too" 0 "$rc"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"

# --- plan files -----------------------------------------------------------------------------------------
bad() {
    local what=$1 line=$2 pattern=$3 text=$4
    printf '%b' "$text" >"$W/bad.conf"
    out=$(d plan --root "$R" --plan "$W/bad.conf" 2>&1); rc=$?
    expect_eq "$what: exit status" 1 "$rc"
    expect_match "$what: file:line" "^dpuctl mount plan: $W/bad.conf:$line: $pattern" "$out"
}
bad "relative target" 3 "expected \[mount TARGET\] with an absolute path" '# x\n\n[mount var/lib]\ntype = tmpfs\n'
bad "unknown key" 3 "unknown key .typo." '[mount /x]\ntype = tmpfs\ntypo = 1\n'
bad "bind with a file system option" 4 "a bind mount takes only ro, rw" '[mount /x]\ntype = bind\nsource = /etc\noptions = mode=0755\n'
bad "missing source" 1 "\[mount /x\] of type qtfs needs .source = /path." '[mount /x]\ntype = qtfs\n'
bad "bad boolean" 3 "expected yes or no" '[mount /x]\ntype = tmpfs\noptional = perhaps\n'
bad "stacking without hide" 4 "\[mount /x\] is also mounted by .*bad.conf:1; a second mount there would hide the first" '[mount /x]\ntype = tmpfs\n\n[mount /x]\ntype = proc\n'
bad "a type the kernel lacks" 1 "\[mount /x\] cannot be mounted: this kernel has no nosuchfs file system; remove it from the plan or say .optional = yes." '[mount /x]\ntype = nosuchfs\n'
bad "not a config line" 2 "expected .key = value." '[mount /x]\nthis is not valid\n'

printf '[mount /x]\ntype = tmpfs\n\n[mount /x]\ntype = proc\nhide = yes\n\n[mount /y]\ntype = nosuchfs\noptional = yes\n' >"$W/ok.conf"
out=$(d apply --root "$R" --plan "$W/ok.conf" 2>&1); rc=$?
expect_eq "stacking with hide = yes applies" 0 "$rc"
expect_match "the optional entry is skipped with a note" "skipped +3 nosuchfs on $R/y: optional, skipped: this kernel has no nosuchfs file system" "$out"
expect_eq "proc is on top of tmpfs" "proc" "$(lab_dpu findmnt -rno FSTYPE "$R/x" | tail -1)"
out=$(d status --root "$R" --plan "$W/ok.conf"); rc=$?
expect_eq "status sees both layers" 0 "$rc"
d revert --root "$R" --plan "$W/ok.conf" >/dev/null
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"

# --- qtfs entries need the engine: without one, apply fails at the first and rolls everything back ---------
out=$(d apply --root "$R" 2>&1); rc=$?
expect_eq "apply with qtfs and no engine fails" 1 "$rc"
expect_match "at the first qtfs step" "step [0-9]+ of [0-9]+ \(qtfs /home/VMs on $R/home/VMs, built-in plan\)" "$out"
expect_eq "and rolls back" "$before" "$(mounts)"
finish

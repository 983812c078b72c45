#!/usr/bin/env bash
# `dpuctl rootfs prepare --from host` on the DPU: what the guide's `cp -r` lost (owners, setuid bits, file
# capabilities, extended attributes, hard links, symbolic links, FIFOs, times) must all arrive; a second
# run changes nothing; damage is repaired and listed; the refusals hold; the progress bar appears on a
# terminal only.
#
# The "host" that prepare copies is a small machine image built here, and dpuctl runs chrooted into it on
# the lab's DPU: it copies its own `/` exactly as on a real machine, without copying this machine's 5 GB.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"

require_root
for tool in setcap getcap setfattr getfattr chroot script; do require_command "$tool"; done
lab_up

H=$W/host
# --- the host: merged /usr like Debian (bin -> usr/bin; lib64 -> /usr/lib64 absolute, as some have) ----
mkdir -p "$H"/usr/{bin,sbin,lib,lib64,share} "$H"/{proc,tmp,etc,run,var,dev}
ln -s usr/bin "$H/bin"
ln -s usr/sbin "$H/sbin"
ln -s usr/lib "$H/lib"
ln -s /run "$H/var/run"
# dpuctl and what it needs to run: its libraries at the paths the loader looks in.
cp "$DPUCTL" "$H/usr/bin/dpuctl"
cp "$(dirname "$DPUCTL")/libudsproxy.so" "$H/usr/lib/libudsproxy.so" 2>/dev/null || skip "no libudsproxy.so next to $DPUCTL (build everything: swift build / make)"
for lib in $(ldd "$DPUCTL" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    case $lib in /lib/* | /lib64/*) dst=$H/usr$lib ;; *) dst=$H$lib ;; esac
    mkdir -p "$(dirname "$dst")" && cp -L "$lib" "$dst"
done
ln -s /usr/lib64 "$H/lib64"   # absolute: must become relative (usr/lib64) in the rootfs

# --- what cp -r loses -----------------------------------------------------------------------------
u=$H/usr
echo setuid >"$u/bin/suid-tool" && chmod 4755 "$u/bin/suid-tool"
echo setgid >"$u/bin/sgid-tool" && chown 0:5 "$u/bin/sgid-tool" && chmod 2711 "$u/bin/sgid-tool"
echo owned >"$u/share/owned" && chown 1234:5678 "$u/share/owned" && chmod 0640 "$u/share/owned"
cp /bin/true "$u/bin/capped" && setcap cap_net_raw,cap_net_admin+ep "$u/bin/capped"
echo xattr >"$u/share/labelled" && setfattr -n user.dpuctl.test -v hello "$u/share/labelled"
echo linked >"$u/lib/hard1" && ln "$u/lib/hard1" "$u/lib/hard2" && ln "$u/lib/hard1" "$u/share/hard3"
ln -s hard1 "$u/lib/relative-link"
ln -s /usr/lib/hard1 "$u/lib/absolute-link"
mkfifo "$u/share/fifo"
mkdir -m 1777 "$u/share/sticky" && mkdir -m 0700 "$u/share/private" && chown 1234:1234 "$u/share/private"
touch "$u/share/caf$(printf '\351')"   # a name that is not UTF-8
echo "spaced" >"$u/share/with space"
head -c 3000000 /dev/urandom >"$u/share/big"
echo old >"$u/share/old" && touch -d '2001-02-03 04:05:06' "$u/share/old"
mkdir -p "$u/share/mnt"

# On the DPU: /proc for dpuctl, a tmpfs inside /usr that is another mount (not to be copied).
lab_dpu mount -t proc proc "$H/proc"
lab_dpu sh -c "mount -t tmpfs tmpfs '$u/share/mnt' && echo other-mount > '$u/share/mnt/file'"
prepare() { lab_dpu chroot "$H" /usr/bin/dpuctl rootfs prepare "$@"; }
status() { lab_dpu chroot "$H" /usr/bin/dpuctl rootfs status "$@"; }
R=$H/target

out=$(prepare --root /target --host tcp://198.51.100.1:7777 2>&1); rc=$?
expect_eq "prepare from the host succeeds" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"
expect_match "it says where it copied from" "copied from this machine \(usr, bin, sbin, lib, lib64\)" "$out"
expect_match "it did not enter the other mount" "usr/share/mnt is another mount" "$out"
expect_eq "and copied nothing from it" "" "$(ls -A "$R/usr/share/mnt")"
expect_match "no progress bar without a terminal" "^[^$(printf '\r')]*$" "$out"

same() { expect_eq "$1: $2" "$(stat -c "$2" "$H/$1")" "$(stat -c "$2" "$R/$1")"; }
for f in usr/bin/suid-tool usr/bin/sgid-tool usr/share/owned usr/share/sticky usr/share/private usr/bin/capped; do
    same "$f" '%A %u:%g'
done
same usr/share/old '%Y'
same usr/share/big '%s'
expect_status "big file content" 0 cmp -s "$H/usr/share/big" "$R/usr/share/big"
expect_eq "file capabilities" "cap_net_admin,cap_net_raw=ep" "$(getcap "$R/usr/bin/capped" | awk '{print $2}')"
expect_eq "extended attribute" "hello" "$(getfattr --only-values -n user.dpuctl.test "$R/usr/share/labelled" 2>/dev/null)"
inodes=$(stat -c %i "$R/usr/lib/hard1" "$R/usr/lib/hard2" "$R/usr/share/hard3" | sort -u | wc -l)
expect_eq "three hard links are one inode" 1 "$inodes"
expect_eq "with three names" 3 "$(stat -c %h "$R/usr/lib/hard1")"
expect_eq "relative link stays relative" "hard1" "$(readlink "$R/usr/lib/relative-link")"
expect_eq "absolute link inside /usr is kept (it means the same in the chroot)" "/usr/lib/hard1" "$(readlink "$R/usr/lib/absolute-link")"
expect_eq "merged /usr: bin is a link" "usr/bin" "$(readlink "$R/bin")"
expect_eq "an absolute top-level link becomes relative" "usr/lib64" "$(readlink "$R/lib64")"
expect_eq "var/run points into the rootfs" "../run" "$(readlink "$R/var/run")"
expect_eq "FIFO" "fifo" "$(stat -c %F "$R/usr/share/fifo" | sed 's/ .*//')"
expect_status "a name that is not UTF-8" 0 test -e "$R/usr/share/caf$(printf '\351')"
expect_status "a name with a space" 0 test -e "$R/usr/share/with space"
for d in boot dev etc home mnt opt proc root run sys tmp var/lib var/cache local_proc; do
    [ -d "$R/$d" ] || failed "skeleton $d missing"
done
expect_eq "/tmp is sticky" "1777" "$(stat -c %a "$R/tmp")"

# dpuctl's pieces.
expect_status "dpuctl installed" 0 cmp -s "$DPUCTL" "$R/usr/bin/dpuctl"
expect_eq "rexec links to it" "dpuctl" "$(readlink "$R/usr/bin/rexec")"
expect_eq "mount.qtfs links to it" "../bin/dpuctl" "$(readlink "$R/usr/sbin/mount.qtfs")"
expect_status "libudsproxy.so installed" 0 cmp -s "$(dirname "$DPUCTL")/libudsproxy.so" "$R/usr/lib64/libudsproxy.so"
expect_status "both wrappers are the same" 0 cmp -s "$R/usr/bin/qemu-kvm" "$R/usr/libexec/qemu-kvm"
expect_match "the wrapper has the host's address" "CMD_NET_ADDR='tcp://198.51.100.1:7777' exec /usr/bin/rexec \"\\\$@\"" "$(cat "$R/usr/bin/qemu-kvm")"
# The wrapper passes arguments unchanged: run a copy whose rexec prints what it gets.
printf '#!/bin/sh\necho "addr=$CMD_NET_ADDR"\nfor a in "$@"; do echo "[$a]"; done\n' >"$W/fake-rexec" && chmod +x "$W/fake-rexec"
sed "s|/usr/bin/rexec|$W/fake-rexec|" "$R/usr/bin/qemu-kvm" >"$W/wrapper" && chmod +x "$W/wrapper"
expect_eq "the wrapper keeps arguments whole" "addr=tcp://198.51.100.1:7777|[/usr/bin/qemu-kvm]|[-name]|[guest=a b]|[]|[*]" \
    "$(cd "$W" && ./wrapper -name 'guest=a b' '' '*' | paste -sd'|')"
# libvirt's capability probe: -daemonize with -pidfile (either spelling, either order) asks rexec for a
# stand-in; "$@" still reaches QEMU untouched.
expect_eq "a daemonizing QEMU gets --daemon-pidfile" "addr=tcp://198.51.100.1:7777|[--daemon-pidfile]|[/run/q p.pid]|[/usr/bin/qemu-kvm]|[-S]|[-pidfile]|[/run/q p.pid]|[-daemonize]" \
    "$(cd "$W" && ./wrapper -S -pidfile '/run/q p.pid' -daemonize | paste -sd'|')"
expect_eq "--daemonize and --pidfile are the same options" "[--daemon-pidfile]|[/q.pid]|[/usr/bin/qemu-kvm]|[--daemonize]|[--pidfile]|[/q.pid]" \
    "$(cd "$W" && ./wrapper --daemonize --pidfile /q.pid | tail -n +2 | paste -sd'|')"
expect_eq "a pid file without -daemonize changes nothing" "[/usr/bin/qemu-kvm]|[-pidfile]|[/q.pid]" \
    "$(cd "$W" && ./wrapper -pidfile /q.pid | tail -n +2 | paste -sd'|')"
expect_eq "-daemonize without a pid file changes nothing" "[/usr/bin/qemu-kvm]|[-daemonize]|[-pidfile]" \
    "$(cd "$W" && ./wrapper -daemonize -pidfile | tail -n +2 | paste -sd'|')"

out=$(status --root /target); rc=$?
expect_eq "status: nothing missing" 0 "$rc"
expect_match "status shows the address" "qemu-kvm +usr/bin/qemu-kvm +CMD_NET_ADDR=tcp://198.51.100.1:7777" "$out"

# --- idempotent -------------------------------------------------------------------------------------
out=$(prepare --root /target 2>&1); rc=$?
expect_eq "second run succeeds" 0 "$rc"
expect_match "and changes nothing" "/target: nothing to change" "$out"
expect_match "keeping the wrapper's address without --host" "CMD_NET_ADDR='tcp://198.51.100.1:7777'" "$(cat "$R/usr/libexec/qemu-kvm")"

# --- damage is repaired, and listed -------------------------------------------------------------------
chmod 0755 "$R/usr/bin/suid-tool"
chown 0:0 "$R/usr/bin/capped"   # chown clears the capability
setfattr -x user.dpuctl.test "$R/usr/share/labelled"
echo tampered >"$R/usr/share/old"
rm "$R/usr/share/hard3" && echo not-a-link >"$R/usr/share/hard3"
rm "$R/usr/bin/rexec"
ln -sfn /run "$R/var/run"
# The wrapper an older dpuctl wrote (before -daemonize was looked for).
cat >"$R/usr/libexec/qemu-kvm" <<'OLD'
#!/bin/sh
# An emulator for libvirtd in the DPU rootfs, made by `dpuctl rootfs prepare`: it runs on the
# host through rexec, with exactly these arguments.
CMD_NET_ADDR='tcp://198.51.100.1:7777' exec /usr/bin/rexec /usr/bin/qemu-kvm "$@"
OLD
out=$(status --root /target); rc=$?
expect_eq "status sees the damage" 3 "$rc"
expect_match "rexec missing" "missing +rexec +usr/bin/rexec" "$out"
expect_match "var/run different" "different +skeleton +var/run" "$out"
expect_match "an older dpuctl's wrapper is called that" "different +qemu-kvm +usr/libexec/qemu-kvm +an older dpuctl's wrapper" "$out"
out=$(prepare --root /target 2>&1); rc=$?
expect_eq "third run succeeds" 0 "$rc"
expect_status "the older wrapper is brought up to date, its address kept" 0 cmp -s "$R/usr/bin/qemu-kvm" "$R/usr/libexec/qemu-kvm"
expect_match "mode fixed" "mode: usr/bin/suid-tool" "$out"
expect_match "capability restored" "xattrs: usr/bin/capped" "$out"
expect_match "xattr restored" "xattrs: usr/share/labelled" "$out"
expect_match "content restored" "content: usr/share/old" "$out"
expect_match "hard link restored" "hard link: usr/share/hard3" "$out"
expect_match "rexec restored" "new: usr/bin/rexec -> dpuctl" "$out"
expect_match "var/run restored" "link target: var/run -> ../run" "$out"
expect_match "the wrapper rewritten" "content: usr/libexec/qemu-kvm" "$out"
expect_eq "exactly those, and the marker untouched" 8 "$(grep -c '^  [a-z ,]*: ' <<<"$out")"
expect_eq "setuid is back" "-rwsr-xr-x" "$(stat -c %A "$R/usr/bin/suid-tool")"
expect_eq "capability is back" "cap_net_admin,cap_net_raw=ep" "$(getcap "$R/usr/bin/capped" | awk '{print $2}')"
expect_eq "hard link is back" 1 "$(stat -c %i "$R/usr/lib/hard1" "$R/usr/share/hard3" | sort -u | wc -l)"
expect_eq "the original was not touched" "old" "$(cat "$H/usr/share/old")"

# --- refusals -----------------------------------------------------------------------------------------
out=$(prepare --root / 2>&1); rc=$?
expect_eq "refuses /" 1 "$rc"
expect_match "saying why" "/ itself" "$out"
mkdir -p "$H/elsewhere" && echo precious >"$H/elsewhere/file"
out=$(prepare --root /elsewhere 2>&1); rc=$?
expect_eq "refuses a non-empty directory it did not make" 1 "$rc"
expect_match "pointing at --force" "not made by .dpuctl rootfs prepare.*--force" "$out"
expect_eq "and wrote nothing there" "file" "$(ls -A "$H/elsewhere")"
out=$(prepare --root /usr/share/rootfs 2>&1); rc=$?
expect_eq "refuses a rootfs inside what it copies" 1 "$rc"
expect_match "saying so" "inside /usr" "$out"
lab_dpu mount -t tmpfs tmpfs "$R/mnt"
out=$(prepare --root /target 2>&1); rc=$?
expect_eq "refuses a rootfs with mounts under it" 1 "$rc"
expect_match "and says what to run" "has mounts under it \(/target/mnt\).*dpuctl mount revert" "$out"
lab_dpu umount "$R/mnt"
out=$(prepare --root /elsewhere --force 2>&1); rc=$?
expect_eq "--force writes into it" 0 "$rc"
expect_eq "keeping what was there" "precious" "$(cat "$H/elsewhere/file")"
expect_status "and marks it" 0 test -f "$H/elsewhere/.dpuctl-rootfs"

# --- a progress bar on a terminal ----------------------------------------------------------------------
rm -rf "$R/usr/share"
out=$(lab_dpu script -qec "chroot $H /usr/bin/dpuctl rootfs prepare --root /target" /dev/null); rc=$?
expect_eq "prepare on a terminal succeeds" 0 "$rc"
expect_match "and draws a progress bar" "$(printf '\r')\[[#.]+\] [0-9]+%  [0-9]+/[0-9]+ files" "$out"
finish

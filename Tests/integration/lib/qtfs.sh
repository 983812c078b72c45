# Helpers for the qtfs tests: the lab with an engine on the host and mount.qtfs usable on the DPU.
#
#   qtfs_lab_up                 lab, applet links, a key, a host-only tmpfs at $HOSTDIR with $EXPORT in it,
#                               mount(8) able to find mount.qtfs on the DPU
#   qtfs_whitelist PATH...      write $W/whitelist allowing every operation beneath each PATH
#   qtfs_engine_start [ARGS]    start the engine on the host ($ENGINE_URL), wait until it listens
#   qtfs_engine_stop            stop it (SIGTERM) and wait
#   qtfs_mount SRC DST [OPTS]   mount -t qtfs on the DPU, then check mountinfo says fuse.qtfs

QTFS_PORT=12345
ENGINE_URL="tcp://$HOST_IP:$QTFS_PORT"

qtfs_lab_up() {
    [ -e /dev/fuse ] || skip "needs /dev/fuse"
    lab_up
    make_links
    "$DPUCTL" key generate "$W/key" >/dev/null
    HOSTDIR=$W/host
    EXPORT=$HOSTDIR/export
    mkdir -p "$HOSTDIR"
    lab_tmpfs host "$HOSTDIR"
    lab_host mkdir -p "$EXPORT"
    # mount(8) runs helpers from /sbin only: lay our links over /usr/sbin, on the DPU only.
    lab_dpu mount -t overlay overlay -o "lowerdir=$W/sbin:/usr/sbin" /usr/sbin ||
        { echo "cannot put mount.qtfs where mount(8) looks" >&2; exit 1; }
}

qtfs_whitelist() {
    local kind path
    : >"$W/whitelist"
    for kind in Open Write Read Readdir Mkdir Rmdir Create Unlink Rename Setattr Setxattr Mount; do
        printf '[%s]\nPath=%s\n' "$kind" "$(IFS=';'; echo "$*")" >>"$W/whitelist"
    done
}

qtfs_engine_start() {
    lab_bg engine host "$DPUCTL" qtfs-engine --listen "$ENGINE_URL" --whitelist "$W/whitelist" --key "$W/key" "$@"
    wait_for "lab_host ss -Hltn | grep -q '$HOST_IP:$QTFS_PORT'" 10 || { cat "$W/engine.log"; echo "the engine did not start" >&2; exit 1; }
}

qtfs_engine_stop() { lab_stop engine TERM; }

qtfs_mount() {
    local source=$1 target=$2 options=${3:-}
    lab_dpu mkdir -p "$target"
    lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=$W/key${options:+,$options}" "$source" "$target" || return 1
    lab_dpu awk -v t="$target" '$5 == t { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' /proc/self/mountinfo |
        grep -qx fuse.qtfs
}

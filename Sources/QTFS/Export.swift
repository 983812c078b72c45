import DPUSystem
import DPUWire
import Glibc
import SystemPackage

// NIOCore has a FileDescriptor too; in this module the name means swift-system's.
typealias FileDescriptor = SystemPackage.FileDescriptor

/// An attached export: a host directory a connection works beneath. Every path of every request is
/// resolved from `root` with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): no `..`, no symbolic link,
/// no magic link is ever followed on the host, and the kernel itself refuses any resolution that would
/// leave the directory, also when a rename races with it. Symbolic links are followed by the client, in
/// its own path space, exactly like the kernel follows them on a local file system.
final class Export: Sendable {
    /// O_PATH | O_DIRECTORY descriptor of the export root.
    let root: FileDescriptor
    /// The absolute host path the client attached (normalized), the base of whitelist checks.
    let hostPath: [UInt8]
    let readOnly: Bool

    init(root: FileDescriptor, hostPath: [UInt8], readOnly: Bool) {
        self.root = root
        self.hostPath = hostPath
        self.readOnly = readOnly
    }

    deinit { root.closeQuietly() }

    static let confined: ResolveFlags = [.beneath, .noSymlinks]

    /// The absolute host path of `relative` (for whitelist checks and messages).
    func hostPath(of relative: [UInt8]) -> [UInt8] {
        if relative.isEmpty { return hostPath }
        if hostPath == [UInt8(ascii: "/")] { return hostPath + relative }
        return hostPath + [UInt8(ascii: "/")] + relative
    }

    /// An O_PATH descriptor of `relative` itself (a trailing symbolic link is returned, not followed).
    func node(_ relative: [UInt8]) throws(SystemError) -> FileDescriptor {
        try root.open(
            beneath: relative.isEmpty ? [UInt8(ascii: ".")] : relative, flags: O_PATH | O_NOFOLLOW, resolve: Export.confined)
    }

    /// The parent directory of `relative` (O_PATH) and the last component. The root has no parent
    /// within the export: operations on it that need one get EBUSY, as for a mount point.
    func parent(_ relative: [UInt8]) throws(SystemError) -> (directory: FileDescriptor, name: [UInt8]) {
        guard !relative.isEmpty else { throw SystemError(.resourceBusy, "the export root itself", describe(hostPath)) }
        let slash = UInt8(ascii: "/")
        let split = relative.lastIndex(of: slash)
        let directory = split.map { Array(relative[..<$0]) } ?? []
        let name = split.map { Array(relative[relative.index(after: $0)...]) } ?? relative
        let fd = try root.open(
            beneath: directory.isEmpty ? [UInt8(ascii: ".")] : directory, flags: O_PATH | O_DIRECTORY,
            resolve: Export.confined)
        return (fd, name)
    }
}

/// Pseudo file systems: contents made at read time, sizes meaningless (st_size 0 or 4096), some reads
/// block. The client gets their files with the `volatile` flag: no caching, direct I/O.
enum PseudoFileSystems {
    static let magics: Set<UInt64> = [
        0x9fa0,  // proc
        0x6265_6572,  // sysfs
        0x0027_e0eb,  // cgroup
        0x6367_7270,  // cgroup2
        0x6462_6720,  // debugfs
        0x7472_6163,  // tracefs
        0x7363_6673,  // securityfs
        0xcafe_4a11,  // bpf
        0x6265_6570,  // configfs
        0x6165_676c,  // pstore
        0xde5e_81e4,  // efivarfs
        0xf97c_ff8c,  // selinuxfs
        0x1cd1,  // devpts
        0x6573_5543,  // fusectl
        0x4249_4e4d,  // binfmt_misc
        0x6e73_6673,  // nsfs
    ]

    /// Reads on these may wait for an event (kmsg, trace_pipe): they run on the blocking pool.
    static let mayBlock: Set<UInt64> = [0x9fa0, 0x6462_6720, 0x7472_6163]
}

extension QTFSAttributes {
    init(_ info: stat, volatile: Bool) {
        self.init(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), mode: UInt32(info.st_mode),
            linkCount: UInt32(clamping: info.st_nlink), uid: info.st_uid, gid: info.st_gid,
            rdev: UInt64(info.st_rdev), size: UInt64(max(info.st_size, 0)), blocks: UInt64(max(info.st_blocks, 0)),
            blockSize: UInt32(clamping: info.st_blksize),
            accessTime: QTFSTime(seconds: Int64(info.st_atim.tv_sec), nanoseconds: UInt32(info.st_atim.tv_nsec)),
            modificationTime: QTFSTime(seconds: Int64(info.st_mtim.tv_sec), nanoseconds: UInt32(info.st_mtim.tv_nsec)),
            changeTime: QTFSTime(seconds: Int64(info.st_ctim.tv_sec), nanoseconds: UInt32(info.st_ctim.tv_nsec)),
            flags: volatile ? .volatile : [])
    }
}

import CDPUSystem
import Glibc
import SystemPackage

// The new mount API (Linux 5.2; mount_setattr 5.12): mounts as file descriptors. A mount is built detached
// (fsopen + fsmount, or open_tree for a bind) and attached with move_mount onto a directory that was
// opened beforehand, so nothing between the check of a target and the mount re-resolves its path: a
// symbolic link swapped in cannot redirect the mount. The file system context also explains a refusal in
// words (`kernelMessages`), which mount(2) never did.

extension ResolveFlags {
    /// RESOLVE_IN_ROOT: resolve as if the directory were `/` (absolute symbolic links and `..` stay inside
    /// it), the way a chroot would see the path.
    public static let inRoot = ResolveFlags(rawValue: 0x10)
}

/// MOUNT_ATTR_* flags of a mount (per mount, not per file system).
public struct MountAttributes: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let readOnly = MountAttributes(rawValue: 0x01)
    public static let noSetUID = MountAttributes(rawValue: 0x02)
    public static let noDevices = MountAttributes(rawValue: 0x04)
    public static let noExec = MountAttributes(rawValue: 0x08)
    /// MOUNT_ATTR_NOATIME (relatime is the absence of every access-time flag).
    public static let noAccessTime = MountAttributes(rawValue: 0x10)
    public static let strictAccessTime = MountAttributes(rawValue: 0x20)
    public static let noDirectoryAccessTime = MountAttributes(rawValue: 0x80)
    /// MOUNT_ATTR__ATIME: the access-time bits, cleared together when one of them is set.
    public static let accessTimeMask = MountAttributes(rawValue: 0x70)
}

extension FileDescriptor {
    /// `open_tree(2)` with OPEN_TREE_CLONE: a detached copy of the mount tree at `path` (relative to this
    /// directory, or absolute), the source of a bind mount. `recursive` copies the mounts below it too
    /// (AT_RECURSIVE, `mount --rbind`); without it, only the mount itself (`mount --bind`).
    public func cloneMountTree(_ path: String, recursive: Bool, followSymlinks: Bool = true) throws(SystemError)
        -> FileDescriptor
    {
        let openTreeClone: UInt32 = 1
        var flags = openTreeClone | UInt32(O_CLOEXEC)
        if recursive { flags |= 0x8000 }  // AT_RECURSIVE
        if !followSymlinks { flags |= UInt32(AT_SYMLINK_NOFOLLOW) }
        return FileDescriptor(rawValue: try syscall("open_tree", path) { cdpu_open_tree(rawValue, path, flags) })
    }

    /// `move_mount(2)` of this detached mount (from `fsmount` or `cloneMountTree`) onto the directory that
    /// `target` refers to (an O_PATH descriptor): no path is resolved at this point. `subject` names the
    /// target in an error.
    public func attachMount(onto target: FileDescriptor, subject: String) throws(SystemError) {
        let fromEmptyPath: UInt32 = 0x04, toEmptyPath: UInt32 = 0x40
        _ = try syscall("move_mount", subject) {
            cdpu_move_mount(rawValue, "", target.rawValue, "", fromEmptyPath | toEmptyPath)
        }
    }

    /// `mount_setattr(2)` on the mount this descriptor refers to (AT_EMPTY_PATH): sets `set` and clears
    /// `clear`; `recursive` applies it to the mounts below too.
    public func setMountAttributes(
        set: MountAttributes, clear: MountAttributes = [], recursive: Bool = false, subject: String
    ) throws(SystemError) {
        var flags = UInt32(atEmptyPath)
        if recursive { flags |= 0x8000 }
        var clearing = clear
        if !set.intersection(.accessTimeMask).isEmpty { clearing.insert(.accessTimeMask) }
        _ = try syscall("mount_setattr", subject) {
            cdpu_mount_setattr(rawValue, "", flags, set.rawValue, clearing.rawValue, 0)
        }
    }
}

/// A file system being set up with `fsopen(2)`: parameters one by one, then a superblock, then a detached
/// mount. The descriptor is closed when the context goes away.
public final class FileSystemContext {
    public let fd: FileDescriptor
    public let type: String

    /// `fsopen(2)`. ENODEV: the kernel does not know `type`.
    public init(type: String) throws(SystemError) {
        self.type = type
        fd = FileDescriptor(rawValue: try syscall("fsopen", type) { cdpu_fsopen(type, 1 /* FSOPEN_CLOEXEC */) })
    }

    /// `fsconfig(FSCONFIG_SET_STRING)`: `key=value` (`source`, `mode`, `size`...).
    public func set(_ key: String, _ value: String) throws(SystemError) {
        _ = try syscall("fsconfig", "\(type) \(key)=\(value)") { cdpu_fsconfig(fd.rawValue, 1, key, value, 0) }
    }

    /// `fsconfig(FSCONFIG_SET_FLAG)`: a parameter without a value (`ro`, a cgroup controller name).
    public func set(flag key: String) throws(SystemError) {
        _ = try syscall("fsconfig", "\(type) \(key)") { cdpu_fsconfig(fd.rawValue, 0, key, nil, 0) }
    }

    /// `fsconfig(FSCONFIG_CMD_CREATE)`: makes (or finds) the superblock.
    public func create() throws(SystemError) {
        _ = try syscall("fsconfig", "\(type) create") { cdpu_fsconfig(fd.rawValue, 6, nil, nil, 0) }
    }

    /// `fsmount(2)`: a detached mount of the superblock, to attach with `attachMount(onto:)`.
    public func mount(attributes: MountAttributes) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("fsmount", type) {
            cdpu_fsmount(fd.rawValue, 1 /* FSMOUNT_CLOEXEC */, UInt32(truncatingIfNeeded: attributes.rawValue))
        })
    }

    /// What the kernel said about this context ("e cgroup: Unknown subsys name 'files'"), oldest first,
    /// without the severity letter. Reading consumes them.
    public func kernelMessages() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while messages.count < 32 {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            guard count > 0 else { break }  // ENODATA: no more messages
            var text = Substring(String(decoding: buffer[..<count], as: UTF8.self))
            if text.count > 2, text.dropFirst().first == " " { text = text.dropFirst(2) }
            while let last = text.last, last.isWhitespace { text = text.dropLast() }
            messages.append(String(text))
        }
        return messages
    }

    deinit { fd.closeQuietly() }
}

extension FileDescriptor {
    /// `copy_file_range(2)` from this descriptor's position to `output`'s: returns the bytes copied, 0 at
    /// the end of the input. EXDEV, EINVAL, EOPNOTSUPP or ENOSYS mean "copy by reading and writing".
    public func copyRange(to output: FileDescriptor, count: Int) throws(SystemError) -> Int {
        try syscall("copy_file_range") { cdpu_copy_file_range(rawValue, nil, output.rawValue, nil, count) }
    }
}

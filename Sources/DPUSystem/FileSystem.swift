import CDPUSystem
import Glibc
import Synchronization
import SystemPackage

// The *at(2) family on directory descriptors, for a file server that must never leave a directory tree:
// every name is one component relative to a descriptor, symbolic links are never followed, and paths are
// raw bytes (Linux file names need not be UTF-8).

/// openat2(2) RESOLVE_* flags.
public struct ResolveFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// RESOLVE_NO_XDEV: do not cross mount points.
    public static let noCrossingMounts = ResolveFlags(rawValue: 0x01)
    /// RESOLVE_NO_MAGICLINKS: no /proc/PID/fd-style links.
    public static let noMagicLinks = ResolveFlags(rawValue: 0x02)
    /// RESOLVE_NO_SYMLINKS: no symbolic link anywhere in the path (a trailing one is returned with
    /// O_PATH|O_NOFOLLOW).
    public static let noSymlinks = ResolveFlags(rawValue: 0x04)
    /// RESOLVE_BENEATH: fail if resolution would leave the directory, `..` and races included.
    public static let beneath = ResolveFlags(rawValue: 0x08)
}

/// Calls `body` with `bytes` as a NUL-terminated C string.
@inline(__always)
public func withCPath<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws(SystemError) -> R) throws(SystemError) -> R {
    var terminated = bytes
    terminated.append(0)
    return try terminated.withUnsafeBufferPointer { (buffer) throws(SystemError) -> R in
        try buffer.withMemoryRebound(to: CChar.self) { (chars) throws(SystemError) -> R in try body(chars.baseAddress!) }
    }
}

/// O_PATH (declared by glibc only under _GNU_SOURCE): a descriptor that names a file without opening it.
public let O_PATH: Int32 = 0o10000000
/// O_NOATIME (_GNU_SOURCE too).
public let O_NOATIME: Int32 = 0o1000000

/// utimensat's UTIME_NOW and UTIME_OMIT (tv_nsec values), which the Glibc module does not export.
public let utimeNow = (1 << 30) - 1
public let utimeOmit = (1 << 30) - 2

/// AT_EMPTY_PATH (declared by glibc only under _GNU_SOURCE).
public let atEmptyPath: Int32 = 0x1000

/// How a path of raw bytes reads in a message (invalid UTF-8 replaced).
@inline(__always)
public func describe(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

extension FileDescriptor {
    /// `openat2(2)` relative to this directory, always O_CLOEXEC.
    public func open(
        beneath path: [UInt8], flags: Int32, mode: mode_t = 0, resolve: ResolveFlags
    ) throws(SystemError) -> FileDescriptor {
        let fd = try withCPath(path) { (cPath) throws(SystemError) -> Int32 in
            try syscall("openat2", describe(path)) {
                cdpu_openat2(rawValue, cPath, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), UInt64(mode), resolve.rawValue)
            }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// `fstat(2)`.
    public func status() throws(SystemError) -> Glibc.stat {
        var info = Glibc.stat()
        _ = try syscall("fstat") { fstat(rawValue, &info) }
        return info
    }

    /// `fstatat(2)` of `name` in this directory, not following a symbolic link.
    public func status(of name: [UInt8]) throws(SystemError) -> Glibc.stat {
        var info = Glibc.stat()
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("fstatat", describe(name)) { fstatat(rawValue, cName, &info, AT_SYMLINK_NOFOLLOW) }
        }
        return info
    }

    /// `fstatfs(2)`.
    public func fileSystemStatus() throws(SystemError) -> FileSystemStatus {
        var info = CDPUSystem.statfs()
        _ = try syscall("fstatfs") { fstatfs(rawValue, &info) }
        return FileSystemStatus(
            type: UInt64(bitPattern: Int64(info.f_type)), blockSize: UInt64(info.f_bsize),
            fragmentSize: UInt64(info.f_frsize), blocks: UInt64(info.f_blocks), freeBlocks: UInt64(info.f_bfree),
            availableBlocks: UInt64(info.f_bavail), files: UInt64(info.f_files), freeFiles: UInt64(info.f_ffree),
            maximumNameLength: UInt64(info.f_namelen))
    }

    /// `pread(2)`: reads at `offset` without moving the file position.
    public func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try syscall("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, Int(offset)) }
    }

    /// `pwrite(2)`.
    public func write(at offset: Int64, from buffer: UnsafeRawBufferPointer) throws(SystemError) -> Int {
        try syscall("pwrite") { Glibc.pwrite(rawValue, buffer.baseAddress, buffer.count, Int(offset)) }
    }

    /// `read(2)` that reports EAGAIN and EINTR as errors (the caller decides what they mean).
    public func readOnce(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try syscall("read", retryOnInterrupt: false) { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// `write(2)` that reports EAGAIN and EINTR as errors.
    public func writeOnce(_ buffer: UnsafeRawBufferPointer) throws(SystemError) -> Int {
        try syscall("write", retryOnInterrupt: false) { Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// `writev(2)` of all of `buffers`, retrying short writes. For a socket, `sendAll`.
    public func writeAll(_ buffers: [UnsafeRawBufferPointer]) throws(SystemError) {
        try writeVectors(buffers) { (vectors, count) throws(SystemError) in
            try syscall("writev") { writev(rawValue, vectors, count) }
        }
    }

    /// Writes all of `buffers` through `write` (a gathering write of up to 1024 vectors that may be
    /// short), going on after each short write from where it stopped.
    func writeVectors(
        _ buffers: [UnsafeRawBufferPointer], _ write: (UnsafeMutablePointer<iovec>, Int32) throws(SystemError) -> Int
    ) throws(SystemError) {
        var vectors = buffers.filter { $0.count > 0 }.map {
            iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)
        }
        var first = 0
        while first < vectors.count {
            let written = try vectors.withUnsafeMutableBufferPointer { (all) throws(SystemError) -> Int in
                try write(all.baseAddress! + first, Int32(min(all.count - first, 1024)))
            }
            var remaining = written
            while first < vectors.count, remaining >= vectors[first].iov_len {
                remaining -= vectors[first].iov_len
                first += 1
            }
            if remaining > 0 {
                vectors[first].iov_base = vectors[first].iov_base! + remaining
                vectors[first].iov_len -= remaining
            }
        }
    }

    /// `sendfile(2)` of up to `count` bytes of `file` from `offset` (advanced) to this socket. To TCP the
    /// page cache's pages are handed over, not copied. Returns 0 at the file's end.
    public func sendFile(from file: FileDescriptor, offset: inout Int64, count: Int) throws(SystemError) -> Int {
        var position = Int(offset)
        let sent = try syscall("sendfile") { CDPUSystem.sendfile(rawValue, file.rawValue, &position, count) }
        offset = Int64(position)
        return sent
    }

    /// `lseek(2)`.
    @discardableResult
    public func seek(to offset: Int64, whence: Int32 = SEEK_SET) throws(SystemError) -> Int64 {
        Int64(try syscall("lseek") { Glibc.lseek(rawValue, Int(offset), whence) })
    }

    /// `getdents64(2)`: raw `linux_dirent64` records into `buffer`; 0 at the end.
    public func directoryEntries(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try syscall("getdents64") { cdpu_getdents64(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// `mkdirat(2)`.
    public func makeDirectory(_ name: [UInt8], mode: mode_t) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("mkdir", describe(name)) { mkdirat(rawValue, cName, mode) }
        }
    }

    /// `mknodat(2)`.
    public func makeNode(_ name: [UInt8], mode: mode_t, device: dev_t = 0) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("mknod", describe(name)) { mknodat(rawValue, cName, mode, device) }
        }
    }

    /// `symlinkat(2)`: a link named `name` here whose contents are `target` (stored verbatim).
    public func makeSymbolicLink(_ name: [UInt8], target: [UInt8]) throws(SystemError) {
        _ = try withCPath(target) { (cTarget) throws(SystemError) -> Int32 in
            try withCPath(name) { (cName) throws(SystemError) -> Int32 in
                try syscall("symlink", describe(name)) { symlinkat(cTarget, rawValue, cName) }
            }
        }
    }

    /// `unlinkat(2)`; `directory` removes an empty directory (AT_REMOVEDIR).
    public func removeEntry(_ name: [UInt8], directory: Bool) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall(directory ? "rmdir" : "unlink", describe(name)) {
                unlinkat(rawValue, cName, directory ? AT_REMOVEDIR : 0)
            }
        }
    }

    /// `renameat2(2)` of `name` here to `newName` in `directory`.
    public func rename(
        _ name: [UInt8], to directory: FileDescriptor, _ newName: [UInt8], flags: UInt32 = 0
    ) throws(SystemError) {
        _ = try withCPath(name) { (cOld) throws(SystemError) -> Int32 in
            try withCPath(newName) { (cNew) throws(SystemError) -> Int32 in
                try syscall("rename", describe(name)) {
                    cdpu_renameat2(rawValue, cOld, directory.rawValue, cNew, flags)
                }
            }
        }
    }

    /// `linkat(2)` with AT_EMPTY_PATH: a new name `newName` in `directory` for the file this (O_PATH)
    /// descriptor refers to. Needs CAP_DAC_READ_SEARCH.
    public func link(into directory: FileDescriptor, as newName: [UInt8]) throws(SystemError) {
        _ = try withCPath(newName) { (cNew) throws(SystemError) -> Int32 in
            try syscall("link", describe(newName)) { linkat(rawValue, "", directory.rawValue, cNew, atEmptyPath) }
        }
    }

    /// `readlinkat(2)` of `name` ("" with AT_EMPTY_PATH semantics: the link this O_PATH fd refers to).
    public func readLink(_ name: [UInt8] = []) throws(SystemError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = try withCPath(name) { (cName) throws(SystemError) -> Int in
            try syscall("readlink", describe(name)) {
                buffer.withUnsafeMutableBytes { raw in
                    readlinkat(rawValue, cName, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
                }
            }
        }
        return Array(buffer[..<min(count, Int(PATH_MAX))])
    }

    /// `fchownat(2)` of `name`, not following a symbolic link; -1 leaves an id unchanged.
    public func changeOwner(of name: [UInt8], uid: uid_t, gid: gid_t) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("chown", describe(name)) {
                fchownat(rawValue, cName, uid, gid, AT_SYMLINK_NOFOLLOW | (name.isEmpty ? atEmptyPath : 0))
            }
        }
    }

    /// `utimensat(2)` of `name`, not following a symbolic link. UTIME_NOW / UTIME_OMIT in tv_nsec work.
    public func setTimes(of name: [UInt8], access: timespec, modification: timespec) throws(SystemError) {
        var times = [access, modification]
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("utimensat", describe(name)) { utimensat(rawValue, cName, &times, AT_SYMLINK_NOFOLLOW) }
        }
    }

    /// `fchmodat2(2)` of `name` with AT_SYMLINK_NOFOLLOW (a symbolic link itself gives EOPNOTSUPP).
    public func changeMode(of name: [UInt8], mode: mode_t) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("chmod", describe(name)) { cdpu_fchmodat2(rawValue, cName, mode, AT_SYMLINK_NOFOLLOW) }
        }
    }

    /// `ftruncate(2)`.
    public func truncate(to size: Int64) throws(SystemError) {
        _ = try syscall("ftruncate") { ftruncate(rawValue, Int(size)) }
    }

    /// `fsync(2)` or `fdatasync(2)`.
    public func sync(dataOnly: Bool) throws(SystemError) {
        _ = try syscall(dataOnly ? "fdatasync" : "fsync") { dataOnly ? fdatasync(rawValue) : fsync(rawValue) }
    }

    /// The path that names this descriptor's file through procfs: `/proc/self/fd/N`. Path-based calls on
    /// it (truncate, getxattr, chmod) act on exactly this file, even an O_PATH one, without re-resolving.
    public var procfsPath: String { "/proc/self/fd/\(rawValue)" }

    /// `openat(2)` of the single name `name` in this directory (raw bytes), always O_CLOEXEC.
    public func open(at name: [UInt8], flags: Int32, mode: mode_t = 0) throws(SystemError) -> FileDescriptor {
        let fd = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("open", describe(name)) { cdpu_openat(rawValue, cName, flags | O_CLOEXEC, UInt32(mode)) }
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Opens the file this (O_PATH) descriptor refers to again, with `flags`, through /proc/self/fd: the
    /// very inode, no path resolved. EINTR is reported (opening a FIFO waits and must be interruptible).
    public func reopen(flags: Int32) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("open", retryOnInterrupt: false) {
            cdpu_open(procfsPath, flags | O_CLOEXEC | O_NOCTTY, 0)
        })
    }

    /// `chmod(2)` of the file this (possibly O_PATH) descriptor refers to; never a symbolic link.
    public func changeFileMode(_ mode: mode_t) throws(SystemError) {
        _ = try syscall("chmod") { chmod(procfsPath, mode) }
    }

    /// `utimensat(2)` of the file this (possibly O_PATH) descriptor refers to.
    public func setFileTimes(access: timespec, modification: timespec) throws(SystemError) {
        var times = [access, modification]
        _ = try syscall("utimensat") { utimensat(AT_FDCWD, procfsPath, &times, 0) }
    }

    /// `truncate(2)` of the file this (possibly O_PATH) descriptor refers to.
    public func truncateFile(to size: Int64) throws(SystemError) {
        _ = try syscall("truncate") { Glibc.truncate(procfsPath, Int(size)) }
    }

    /// `getxattr(2)` on the file this (possibly O_PATH) descriptor refers to; an empty buffer asks for
    /// the size.
    public func extendedAttribute(_ name: [UInt8], into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try withCPath(name) { (cName) throws(SystemError) -> Int in
            try syscall("getxattr", describe(name)) { getxattr(procfsPath, cName, buffer.baseAddress, buffer.count) }
        }
    }

    /// `listxattr(2)`; an empty buffer asks for the size.
    public func extendedAttributeNames(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try syscall("listxattr") {
            listxattr(procfsPath, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
        }
    }

    /// `llistxattr(2)` size query of `name` in this directory (a symbolic link is not followed): how many
    /// bytes its attribute names take, 0 when it has none.
    public func extendedAttributeNamesSize(of name: [UInt8]) throws(SystemError) -> Int {
        // listxattrat(2) where the kernel has it (6.13), else llistxattr through /proc/self/fd.
        if FileDescriptor.hasListxattrat.load(ordering: .relaxed) {
            do {
                return try withCPath(name) { (cName) throws(SystemError) -> Int in
                    try syscall("listxattrat", describe(name)) {
                        cdpu_listxattrat(rawValue, cName, UInt32(AT_SYMLINK_NOFOLLOW), nil, 0)
                    }
                }
            } catch where error.errno == .noFunction {
                FileDescriptor.hasListxattrat.store(false, ordering: .relaxed)
            }
        }
        return try withCPath(Array(procfsPath.utf8) + [UInt8(ascii: "/")] + name) { (path) throws(SystemError) -> Int in
            try syscall("llistxattr", describe(name)) { llistxattr(path, nil, 0) }
        }
    }

    private static let hasListxattrat = Atomic<Bool>(true)

    /// `setxattr(2)`.
    public func setExtendedAttribute(_ name: [UInt8], value: [UInt8], flags: Int32) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("setxattr", describe(name)) {
                value.withUnsafeBytes { raw in setxattr(procfsPath, cName, raw.baseAddress, raw.count, flags) }
            }
        }
    }

    /// `removexattr(2)`.
    public func removeExtendedAttribute(_ name: [UInt8]) throws(SystemError) {
        _ = try withCPath(name) { (cName) throws(SystemError) -> Int32 in
            try syscall("removexattr", describe(name)) { removexattr(procfsPath, cName) }
        }
    }
}

/// What `fstatfs(2)` says about a file system.
public struct FileSystemStatus: Sendable, Equatable {
    /// f_type: the file system's magic number (PROC_SUPER_MAGIC, ...).
    public var type: UInt64
    public var blockSize: UInt64
    public var fragmentSize: UInt64
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var maximumNameLength: UInt64
}

/// One record of `getdents64(2)` output.
public struct DirectoryEntry: Sendable {
    public var inode: UInt64
    /// The position after this entry (d_off): lseek there to continue.
    public var nextOffset: Int64
    public var type: UInt8
    public var name: [UInt8]
}

extension DirectoryEntry {
    /// Parses the records `getdents64` put in the first `count` bytes of `buffer`.
    public static func parse(_ buffer: UnsafeRawBufferPointer, count: Int) -> [DirectoryEntry] {
        var entries: [DirectoryEntry] = []
        var offset = 0
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while offset + 19 <= count {
            let inode = buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            let next = buffer.loadUnaligned(fromByteOffset: offset + 8, as: Int64.self)
            let length = Int(buffer.loadUnaligned(fromByteOffset: offset + 16, as: UInt16.self))
            let type = buffer[offset + 18]
            guard length >= 19, offset + length <= count else { break }
            let nameBytes = buffer[(offset + 19)..<(offset + length)]
            let name = Array(nameBytes.prefix { $0 != 0 })
            entries.append(DirectoryEntry(inode: inode, nextOffset: next, type: type, name: name))
            offset += length
        }
        return entries
    }
}

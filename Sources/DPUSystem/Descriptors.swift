import CDPUSystem
import Glibc
import SystemPackage

// Looking at file descriptors: what an fd is, where it points, where its offset is. A process that stands
// in for another (the rexec client) needs this to carry its inherited fds faithfully.

/// What kind of object an fd refers to (from `fstat`'s `st_mode`).
public enum DescriptorKind: Sendable, Equatable {
    case regularFile, directory, characterDevice, blockDevice, fifo, socket, symbolicLink
    /// eventfd, signalfd, epoll, pidfd... (anonymous inodes have no file type bits).
    case other

    init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .regularFile
        case S_IFDIR: self = .directory
        case S_IFCHR: self = .characterDevice
        case S_IFBLK: self = .blockDevice
        case S_IFIFO: self = .fifo
        case S_IFSOCK: self = .socket
        case S_IFLNK: self = .symbolicLink
        default: self = .other
        }
    }
}

/// The part of `fstat` a caller needs to tell objects apart.
public struct DescriptorStatus: Sendable, Equatable {
    public var kind: DescriptorKind
    public var device: UInt64
    public var inode: UInt64
    /// For device nodes: the device number (`st_rdev`).
    public var specialDevice: UInt64
    public var mode: mode_t
    public var owner: uid_t
    public var size: Int64

    /// Same object: two fds on one pipe, socket or file.
    public func isSameObject(as other: DescriptorStatus) -> Bool { device == other.device && inode == other.inode }

    /// `/dev/null`: character device 1:3 (`makedev(1, 3)`).
    public var isNullDevice: Bool { kind == .characterDevice && specialDevice == 0x103 }
}

extension FileDescriptor {
    /// What the fd is (`fstat(2)`, classified).
    public func descriptorStatus() throws(SystemError) -> DescriptorStatus {
        let info = try status()
        return DescriptorStatus(
            kind: DescriptorKind(mode: info.st_mode), device: UInt64(info.st_dev), inode: UInt64(info.st_ino),
            specialDevice: UInt64(info.st_rdev), mode: info.st_mode, owner: info.st_uid, size: Int64(info.st_size))
    }

    /// `lseek(fd, 0, SEEK_CUR)`: the current offset; nil for objects without one (pipes, sockets, ttys).
    public func currentOffset() -> Int64? {
        let offset = Glibc.lseek(rawValue, 0, SEEK_CUR)
        return offset < 0 ? nil : Int64(offset)
    }

    /// `lseek(fd, offset, SEEK_SET)`.
    public func seek(to offset: Int64) throws(SystemError) {
        _ = try syscall("lseek", String(rawValue)) { Glibc.lseek(rawValue, off_t(offset), SEEK_SET) }
    }

    /// Whether the fd is a terminal (`isatty(3)`).
    public var isTerminal: Bool { isatty(rawValue) == 1 }

    /// Whether this fd number is open at all.
    public var isOpen: Bool { cdpu_fcntl_int(rawValue, F_GETFD, 0) >= 0 }

    /// The path the kernel shows for the fd (`readlink /proc/self/fd/N`): a path, `pipe:[ino]`,
    /// `socket:[ino]`, or a path ending in ` (deleted)`.
    public func linkTarget() throws(SystemError) -> String {
        try DPUSystem.readLink("/proc/self/fd/\(rawValue)")
    }

    /// `fcntl(F_SETPIPE_SZ)`: asks for a larger pipe buffer (fewer, larger reads and writes). Returns the
    /// capacity the kernel granted; the call is best effort and keeps the old size on failure.
    @discardableResult
    public func setPipeCapacity(_ bytes: Int32) -> Int32 {
        let granted = cdpu_fcntl_int(rawValue, CDPU_F_SETPIPE_SZ, bytes)
        return granted > 0 ? granted : cdpu_fcntl_int(rawValue, CDPU_F_GETPIPE_SZ, 0)
    }

    /// `flock(2)`. Returns false when `nonBlocking` and someone else holds the lock.
    @discardableResult
    public func lock(exclusive: Bool = true, nonBlocking: Bool = false) throws(SystemError) -> Bool {
        let operation = (exclusive ? LOCK_EX : LOCK_SH) | (nonBlocking ? LOCK_NB : 0)
        do throws(SystemError) {
            _ = try syscall("flock", String(rawValue)) { flock(rawValue, operation) }
            return true
        } catch where error.errno == .wouldBlock {
            return false
        }
    }

    /// Writes all of `bytes`, waiting (poll) when a non-blocking fd is full. For small, bounded writes
    /// only (a pid file, a one-line message), never for streams.
    public func writeFully(_ bytes: some Collection<UInt8>) throws(SystemError) {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let result = array.withUnsafeBytes { raw in
                Result { () throws(SystemError) -> Int? in try writeSome(UnsafeRawBufferPointer(rebasing: raw[offset...])) }
            }
            if let written = try result.get() {
                offset += written
            } else {
                var set = [pollfd(fd: rawValue, events: Int16(POLLOUT), revents: 0)]
                _ = try poll(&set, timeoutMilliseconds: -1, retryOnInterrupt: true)
            }
        }
    }
}

/// `readlink(2)`.
public func readLink(_ path: String) throws(SystemError) -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let count = try syscall("readlink", path) { readlink(path, &buffer, buffer.count - 1) }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The numbers of this process's open file descriptors, ascending (from `/proc/self/fd`; the directory
/// fd used to list them is left out).
public func openDescriptorNumbers() throws(SystemError) -> [Int32] {
    guard let directory = opendir("/proc/self/fd") else {
        throw SystemError(currentErrno, "opendir", "/proc/self/fd")
    }
    defer { closedir(directory) }
    let own = dirfd(directory)
    var numbers: [Int32] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if let number = Int32(name), number != own { numbers.append(number) }
    }
    return numbers.sorted()
}

/// The process's file mode creation mask (`umask(2)` read without changing it for longer than a call).
public func currentUmask() -> mode_t {
    let mask = umask(0o022)
    umask(mask)
    return mask
}

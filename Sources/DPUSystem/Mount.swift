import Glibc
import SystemPackage

/// `mount(2)` flags (MS_*), readable names.
public struct MountFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let readOnly = MountFlags(rawValue: UInt(MS_RDONLY))
    public static let noSetUID = MountFlags(rawValue: UInt(MS_NOSUID))
    public static let noDevices = MountFlags(rawValue: UInt(MS_NODEV))
    public static let noExec = MountFlags(rawValue: UInt(MS_NOEXEC))
    public static let remount = MountFlags(rawValue: UInt(MS_REMOUNT))
    public static let bind = MountFlags(rawValue: UInt(MS_BIND))
    public static let move = MountFlags(rawValue: UInt(MS_MOVE))
    public static let recursive = MountFlags(rawValue: UInt(MS_REC))
    public static let `private` = MountFlags(rawValue: UInt(MS_PRIVATE))
    public static let slave = MountFlags(rawValue: UInt(MS_SLAVE))
    public static let shared = MountFlags(rawValue: UInt(MS_SHARED))
    public static let relativeAccessTime = MountFlags(rawValue: UInt(MS_RELATIME))
}

/// `umount2(2)` flags.
public struct UnmountFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// MNT_DETACH: lazy unmount.
    public static let detach = UnmountFlags(rawValue: 2)
    /// MNT_FORCE.
    public static let force = UnmountFlags(rawValue: 1)
    /// UMOUNT_NOFOLLOW: do not follow a symlink at the target.
    public static let noFollow = UnmountFlags(rawValue: 8)
}

public enum Mount {
    /// `mount(2)`.
    public static func mount(
        source: String, target: String, type: String?, flags: MountFlags = [], data: String? = nil
    ) throws(SystemError) {
        _ = try syscall("mount", target) { Glibc.mount(source, target, type, flags.rawValue, data) }
    }

    /// `umount2(2)`.
    public static func unmount(_ target: String, flags: UnmountFlags = []) throws(SystemError) {
        _ = try syscall("umount", target) { umount2(target, flags.rawValue) }
    }
}

/// One line of `/proc/<pid>/mountinfo` (see proc(5)).
public struct MountInfoEntry: Equatable, Sendable {
    public var id: Int
    public var parentID: Int
    public var device: String
    /// The root of the mount within its filesystem ("/" for a whole filesystem, a path for a bind).
    public var root: String
    public var mountPoint: String
    public var options: String
    public var optionalFields: [String]
    public var fileSystemType: String
    public var source: String
    public var superOptions: String
}

public enum MountInfo {
    /// Parses mountinfo text. Octal escapes (`\040` for a space) are decoded. Malformed lines are skipped:
    /// the kernel writes this file, a bad line means a format we do not know, not an attack.
    public static func parse(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator >= 6,
                fields.count >= separator + 4, let id = Int(fields[0]), let parent = Int(fields[1])
            else { return nil }
            return MountInfoEntry(
                id: id, parentID: parent, device: fields[2], root: unescape(fields[3]),
                mountPoint: unescape(fields[4]), options: fields[5],
                optionalFields: Array(fields[6..<separator]), fileSystemType: fields[separator + 1],
                source: unescape(fields[separator + 2]), superOptions: fields[separator + 3])
        }
    }

    /// Reads and parses `/proc/self/mountinfo` (or another process's).
    public static func read(pid: pid_t? = nil) throws(SystemError) -> [MountInfoEntry] {
        let path = pid.map { "/proc/\($0)/mountinfo" } ?? "/proc/self/mountinfo"
        return parse(try readTextFile(path))
    }

    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3,
                let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Reads a whole (small) file, such as one under /proc, as text.
public func readTextFile(_ path: String, limit: Int = 16 << 20) throws(SystemError) -> String {
    let fd = try FileDescriptor.openPath(path, flags: O_RDONLY)
    defer { fd.closeQuietly() }
    return try fd.readText(limit: limit, subject: path)
}

extension FileDescriptor {
    /// Reads from here to the end of the file as text, stopping once `limit` bytes are in. (The buffer is
    /// no larger than the limit needs: a short-lived process pays a page fault per page it touches.)
    public func readText(limit: Int = 16 << 20, subject: String? = nil) throws(SystemError) -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: Swift.min(Swift.max(limit, 1), 65536))
        while bytes.count < limit {
            let count = try syscall("read", subject) {
                chunk.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, $0.count) }
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

import DPUSystem
import Glibc
import SystemPackage

/// `/etc/rexec/whitelist` in the original's format: one program per line, matched exactly against the
/// program the client names (`/usr/bin/qemu-kvm` and `qemu-kvm` are different entries). Blank lines and
/// `#` comments are ignored; surrounding white space is trimmed.
///
/// A missing file allows nothing. The file must belong to root (or the user the server runs as) and must
/// not be writable by group or others: whoever can edit it can run anything as root.
public struct Whitelist: Sendable, Equatable {
    public let path: String
    public let programs: Set<[UInt8]>
    /// False when the file does not exist (nothing is allowed).
    public let exists: Bool

    public init(path: String, programs: Set<[UInt8]>, exists: Bool = true) {
        self.path = path
        self.programs = programs
        self.exists = exists
    }

    public func allows(_ program: [UInt8]) -> Bool { programs.contains(program) }

    /// Parses the text of a whitelist.
    public static func parse(_ text: [UInt8], path: String) -> Whitelist {
        var programs = Set<[UInt8]>()
        for line in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0d }
            guard let first = line.firstIndex(where: { !isSpace($0) }) else { continue }
            let last = line.lastIndex(where: { !isSpace($0) })!
            let entry = Array(line[first...last])
            if entry.first == UInt8(ascii: "#") { continue }
            programs.insert(entry)
        }
        return Whitelist(path: path, programs: programs)
    }

    /// Loads `path`. A missing file is an empty whitelist (`exists == false`); a file with unsafe
    /// ownership or mode is an error, so that a reload keeps the previous list.
    public static func load(_ path: String) throws(WhitelistError) -> Whitelist {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.openPath(path, flags: O_RDONLY | O_NOCTTY)
        } catch where error.errno == .noSuchFileOrDirectory {
            return Whitelist(path: path, programs: [], exists: false)
        } catch {
            throw WhitelistError(path: path, "cannot be opened: \(error.errno)")
        }
        defer { fd.closeQuietly() }
        let status: DescriptorStatus
        do { status = try fd.descriptorStatus() } catch { throw WhitelistError(path: path, "cannot be examined: \(error.errno)") }
        guard status.kind == .regularFile else { throw WhitelistError(path: path, "is not a regular file") }
        let owner = geteuid()
        guard status.owner == 0 || status.owner == owner else {
            throw WhitelistError(path: path, "belongs to uid \(status.owner); it must belong to root (`chown root \(path)`)")
        }
        guard status.mode & 0o022 == 0 else {
            throw WhitelistError(
                path: path,
                "has mode \(String(status.mode & 0o777, radix: 8)): group or others may write it; `chmod go-w \(path)`")
        }
        guard status.size <= 1 << 20 else { throw WhitelistError(path: path, "is larger than 1 MiB") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let result = chunk.withUnsafeMutableBytes { raw in
                Result { () throws(SystemError) -> Int? in try fd.readSome(into: raw) }
            }
            guard case .success(let count?) = result else {
                throw WhitelistError(path: path, "cannot be read")
            }
            if count == 0 { break }
            bytes += chunk[..<count]
            guard bytes.count <= 1 << 20 else { throw WhitelistError(path: path, "is larger than 1 MiB") }
        }
        return parse(bytes, path: path)
    }

    /// One line for the log: what is allowed.
    public var summary: String {
        guard exists else { return "\(path) does not exist: no program is allowed (create it, one program per line)" }
        if programs.isEmpty { return "\(path) lists no program: nothing is allowed" }
        let names = programs.map { String(decoding: $0, as: UTF8.self) }.sorted()
        return "\(path) allows \(names.count) program\(names.count == 1 ? "" : "s"): \(names.prefix(8).joined(separator: ", "))\(names.count > 8 ? ", ..." : "")"
    }
}

public struct WhitelistError: Error, CustomStringConvertible, Sendable, Equatable {
    public var path: String
    public var reason: String
    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "whitelist \(path) \(reason)" }
}

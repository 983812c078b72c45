import DPUConfig
import DPUSystem

/// The paths udsproxyd will reach on behalf of the other machine, and lets local processes ask for:
/// unix sockets it connects to, and regular files it reopens when one is passed inside a connection.
///
/// An entry allows itself and everything beneath it (`/var/lib/libvirt` allows
/// `/var/lib/libvirt/qemu/x.sock`, not `/var/lib/libvirtx`). What the peer asks for is checked after
/// resolving every symbolic link and `..` on this machine, so a link inside an allowed directory cannot
/// lead out of it. Entries are resolved the same way when loaded (`/var/run/rexec` becomes
/// `/run/rexec` where /var/run is a link), as far as they exist.
public struct UDSProxyWhitelist: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        /// As written, normalized.
        public var literal: [UInt8]
        /// With the part that exists resolved (symbolic links followed).
        public var resolved: [UInt8]
    }

    public private(set) var entries: [Entry] = []

    /// What an empty whitelist means: the guide's sockets (the VMs' monitor and agent sockets under
    /// /var/lib/libvirt, the rexec socket) and nothing else.
    public static let defaultPaths = ["/var/lib/libvirt", "/var/run/rexec"]

    public init(paths: [String]) {
        for path in paths { add(path) }
    }

    public var isEmpty: Bool { entries.isEmpty }

    public mutating func add(_ path: String) {
        let literal = lexicallyNormalized(Array(path.utf8))
        guard !entries.contains(where: { $0.literal == literal }) else { return }
        entries.append(Entry(literal: literal, resolved: UDSProxyWhitelist.resolveExisting(literal)))
    }

    /// Whether `path`, fully resolved on this machine, lies within an entry.
    public func allowsResolved(_ path: [UInt8]) -> Bool {
        entries.contains { pathIsWithin(path, $0.resolved) }
    }

    /// Whether a local process may ask the peer for `path` (absolute). The path usually does not exist
    /// here, so it is compared as written and as far as it resolves; the peer checks it again, resolved
    /// on its side, which is what protects the peer.
    public func allowsRequested(_ path: [UInt8]) -> Bool {
        let normalized = lexicallyNormalized(path)
        let resolved = UDSProxyWhitelist.resolveExisting(normalized)
        return entries.contains {
            pathIsWithin(normalized, $0.literal) || pathIsWithin(normalized, $0.resolved)
                || pathIsWithin(resolved, $0.literal) || pathIsWithin(resolved, $0.resolved)
        }
    }

    /// One line for logs.
    public var summary: String {
        entries.map { String(decoding: $0.literal, as: UTF8.self) }.joined(separator: " ")
    }

    /// The `[Udsconnect]` entries of the original's whitelist file (a GLib key file:
    /// `Path=/a;/b`). Other sections belong to qtfs and are ignored here.
    public static func originalEntries(_ file: ConfigFile) throws(ConfigError) -> [String] {
        var paths: [String] = []
        for section in file.sections(named: "Udsconnect") {
            for entry in section.values("Path") {
                for item in entry.value.split(separator: ";") {
                    let path = item.trimmingCharacters(in: " \t")
                    if path.isEmpty { continue }
                    guard path.hasPrefix("/") else {
                        throw section.error(entry, "`\(path)` in [Udsconnect] is not an absolute path")
                    }
                    paths.append(path)
                }
            }
        }
        return paths
    }

    /// `path` with its longest existing prefix resolved by realpath(3) and the rest appended.
    static func resolveExisting(_ path: [UInt8]) -> [UInt8] {
        var head = path
        var tail: [UInt8] = []
        while true {
            if let real = try? realPath(String(decoding: head, as: UTF8.self)) {
                let resolved = Array(real.utf8)
                return tail.isEmpty ? resolved : (resolved == [UInt8(ascii: "/")] ? tail : resolved + tail)
            }
            guard let slash = head.lastIndex(of: UInt8(ascii: "/")), slash > 0 else { return path }
            tail = Array(head[slash...]) + tail
            head = Array(head[..<slash])
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let characters = Set(set)
        guard let first = firstIndex(where: { !characters.contains($0) }) else { return "" }
        let last = lastIndex(where: { !characters.contains($0) })!
        return String(self[first...last])
    }
}

import DPUConfig
import DPUSystem

/// The original's `/etc/qtfs/whitelist`, accepted as is: a GLib key file with one section per operation
/// type and a `Path` key holding `;`-separated absolute paths.
///
/// ```ini
/// [Open]
/// Path=/var/lib/libvirt/qemu;/home/VMs
/// [Mount]
/// Path=/var/lib/libvirt
/// ```
///
/// A path is allowed for a type when one of the type's entries is a prefix of it that ends on a component
/// boundary (`/home/VMs` allows `/home/VMs/a` but not `/home/VMsx`). Unlike the original, the engine
/// checks the *resolved* path: requests are confined beneath the export with no symbolic link or `..`
/// followed, so the path a request names is the path it reaches.
public struct QTFSWhitelist: Sendable, Equatable {
    /// The operation types, spelled as the original's section names.
    public enum Kind: String, CaseIterable, Sendable {
        case open = "Open", write = "Write", read = "Read", readdir = "Readdir", mkdir = "Mkdir"
        case rmdir = "Rmdir", create = "Create", unlink = "Unlink", rename = "Rename", setattr = "Setattr"
        case setxattr = "Setxattr", mount = "Mount", kill = "Kill", udsconnect = "Udsconnect"
    }

    /// Entries per kind, as absolute paths without a trailing slash ("/" stays "/").
    public private(set) var entries: [Kind: [[UInt8]]] = [:]
    /// Roots that only allow reading (dpuctl's `read-only-export`).
    public private(set) var readOnlyRoots: [[UInt8]] = []
    /// Sections this engine does not know, kept for a warning (the original ignored them too).
    public private(set) var ignoredSections: [String] = []

    public init() {}

    /// Parses whitelist text; `path` names the file in errors.
    public init(text: String, path: String) throws(ConfigError) {
        try self.init(file: try ConfigFile(text: text, path: path))
    }

    /// Takes the whitelist from an already parsed file.
    public init(file: ConfigFile) throws(ConfigError) {
        let path = file.path
        for section in file.sections {
            guard let kind = Kind(rawValue: section.name) else {
                if !ignoredSections.contains(section.name) { ignoredSections.append(section.name) }
                continue
            }
            // GLib allows any key; the original only ever read `Path`.
            for entry in section.values("Path") {
                for item in entry.value.split(separator: ";") {
                    let text = String(item).filter { $0 != " " && $0 != "\t" }
                    if text.isEmpty { continue }
                    // [Kill] names programs (the target's comm, matched exactly); every other type paths.
                    let normalized = kind == .kill ? Array(text.utf8) : try QTFSWhitelist.normalize(text, path, entry.line)
                    // The original refused duplicates one by one; its own sample file has some. Keep one.
                    if !(entries[kind] ?? []).contains(normalized) { entries[kind, default: []].append(normalized) }
                }
            }
        }
    }

    /// Loads `path`. A missing file is an empty whitelist when `optional`.
    public static func load(_ path: String, optional: Bool) throws(ConfigError) -> QTFSWhitelist {
        guard let file = try ConfigFile.load(path, optional: optional) else { return QTFSWhitelist() }
        return try QTFSWhitelist(file: file)
    }

    /// Adds a read-only export root: it may be attached, opened for reading and listed, never changed.
    public mutating func addReadOnlyRoot(_ root: String, file: String, line: Int?) throws(ConfigError) {
        let normalized = try QTFSWhitelist.normalize(root, file, line)
        if !readOnlyRoots.contains(normalized) { readOnlyRoots.append(normalized) }
        for kind in [Kind.mount, .open, .read, .readdir] where !(entries[kind] ?? []).contains(normalized) {
            entries[kind, default: []].append(normalized)
        }
    }

    private static func normalize(_ entry: String, _ file: String, _ line: Int?) throws(ConfigError) -> [UInt8] {
        guard entry.hasPrefix("/") else {
            throw ConfigError(path: file, line: line, "`\(entry)` is not an absolute path")
        }
        let components = entry.split(separator: "/")
        guard !components.contains(where: { $0 == ".." || $0 == "." }) else {
            throw ConfigError(path: file, line: line, "`\(entry)` contains `.` or `..`; write the path it means")
        }
        return Array(("/" + components.joined(separator: "/")).utf8)
    }

    /// Whether `kind` allows the absolute path `path` (no `.`/`..` components, no trailing slash).
    public func allows(_ kind: Kind, _ path: [UInt8]) -> Bool {
        guard let list = entries[kind] else { return false }
        return list.contains { QTFSWhitelist.isPrefix($0, of: path) }
    }

    /// Whether `path` lies beneath a read-only root and no writable Mount entry covers it.
    public func isReadOnly(_ path: [UInt8]) -> Bool {
        guard readOnlyRoots.contains(where: { QTFSWhitelist.isPrefix($0, of: path) }) else { return false }
        let writable = (entries[.mount] ?? []).filter { !readOnlyRoots.contains($0) }
        return !writable.contains { QTFSWhitelist.isPrefix($0, of: path) }
    }

    /// `entry` is `path` or a parent directory of it.
    static func isPrefix(_ entry: [UInt8], of path: [UInt8]) -> Bool {
        if entry == [UInt8(ascii: "/")] { return path.first == UInt8(ascii: "/") }
        guard path.count >= entry.count, path.starts(with: entry) else { return false }
        return path.count == entry.count || path[entry.count] == UInt8(ascii: "/")
    }

    /// A one-line summary for logs: how many entries each kind has.
    public var summary: String {
        Kind.allCases.compactMap { kind in entries[kind].map { "\(kind.rawValue) \($0.count)" } }.joined(separator: ", ")
    }
}


import DPUSystem

/// One mount of the plan: what goes where inside the rootfs.
public struct MountEntry: Sendable, Equatable {
    /// What kind of mount it is.
    public enum Kind: Sendable, Equatable, Hashable {
        /// `mount --bind` (`recursive`: `--rbind`) of a path of this machine.
        case bind(recursive: Bool)
        /// A host path served by the qtfs engine, mounted through the qtfs client (`mount.qtfs`).
        case qtfs
        /// A kernel file system: proc, sysfs, tmpfs, devtmpfs, cgroup, cgroup2, hugetlbfs, mqueue...
        case fileSystem(String)
    }

    /// Where the entry comes from, for messages: a plan file's line or the built-in plan.
    public enum Origin: Sendable, Equatable, CustomStringConvertible {
        case builtIn
        case file(String, line: Int)

        public var description: String {
            switch self {
            case .builtIn: "built-in plan"
            case .file(let path, let line): "\(path):\(line)"
            }
        }
    }

    /// The mount point as the rootfs sees it ("/var/run"): always absolute, resolved inside the rootfs so
    /// that a symbolic link there (var/run -> /run) can never lead out of it.
    public var target: String
    public var kind: Kind
    /// bind: the path on this machine; qtfs: the path on the host; a file system: the source name the
    /// mount table shows (defaults to the type).
    public var source: String
    /// The options as written (`nosuid,nodev,mode=0755`).
    public var options: [String]
    /// Skipped with a note, instead of failing, when a prerequisite is missing: the file system type, the
    /// cgroup controller, the bind source, or the target when `create` is off.
    public var optional: Bool
    /// Create the target directory (and its parents) inside the rootfs when it is missing.
    public var create: Bool
    /// Allowed to cover another mount of the plan at the same place (it hides it).
    public var hide: Bool
    /// Why the entry is there, shown by `dpuctl mount plan`.
    public var note: String?
    public var origin: Origin

    public init(
        target: String, kind: Kind, source: String? = nil, options: [String] = [], optional: Bool = false,
        create: Bool = true, hide: Bool = false, note: String? = nil, origin: Origin = .builtIn
    ) {
        self.target = target
        self.kind = kind
        self.source = source ?? kind.defaultSource
        self.options = options
        self.optional = optional
        self.create = create
        self.hide = hide
        self.note = note
        self.origin = origin
    }

    /// The type as a plan file spells it: bind, rbind, qtfs or the file system type.
    public var typeName: String { kind.name }

    /// The mount attributes among the options (ro, nosuid, ...).
    public var attributes: MountAttributes { MountOptions.split(options).attributes }

    /// The file system parameters among the options (mode=0755, a cgroup controller, ...).
    public var parameters: [MountOptions.Parameter] { MountOptions.split(options).parameters }

    /// The cgroup v1 controllers and `name=` this entry asks for.
    public var cgroupControllers: [String] {
        guard kind == .fileSystem("cgroup") else { return [] }
        return parameters.compactMap { parameter in
            if parameter.key == "name", let value = parameter.value { return "name=\(value)" }
            return parameter.value == nil && parameter.key != "none" ? parameter.key : nil
        }
    }
}

extension MountEntry.Kind {
    public var name: String {
        switch self {
        case .bind(let recursive): recursive ? "rbind" : "bind"
        case .qtfs: "qtfs"
        case .fileSystem(let type): type
        }
    }

    /// The source a mount of this kind shows by default.
    var defaultSource: String {
        switch self {
        case .bind, .qtfs: ""
        case .fileSystem(let type): type
        }
    }

    /// Parses a plan file's `type = ...`.
    public init?(name: String) {
        switch name {
        case "bind": self = .bind(recursive: false)
        case "rbind": self = .bind(recursive: true)
        case "qtfs": self = .qtfs
        default:
            guard !name.isEmpty, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || "._-".contains($0)) })
            else { return nil }
            self = .fileSystem(name)
        }
    }
}

/// Mount options split the way the kernel takes them: per-mount attributes, and file system parameters.
public enum MountOptions {
    /// A file system parameter: `key=value`, or a flag (`key` alone).
    public struct Parameter: Sendable, Equatable {
        public var key: String
        public var value: String?
    }

    /// Attribute words and what they set (or, for the positive words, clear).
    static let attributeWords: [String: (set: MountAttributes, clear: MountAttributes)] = [
        "ro": (.readOnly, []), "rw": ([], .readOnly),
        "nosuid": (.noSetUID, []), "suid": ([], .noSetUID),
        "nodev": (.noDevices, []), "dev": ([], .noDevices),
        "noexec": (.noExec, []), "exec": ([], .noExec),
        "noatime": (.noAccessTime, []), "strictatime": (.strictAccessTime, []), "relatime": ([], .accessTimeMask),
        "nodiratime": (.noDirectoryAccessTime, []), "defaults": ([], []),
    ]

    /// Whether `word` is a per-mount attribute rather than a file system parameter.
    public static func isAttribute(_ word: String) -> Bool { attributeWords[word] != nil }

    /// Splits an option list into attributes and parameters, in order.
    public static func split(_ options: [String]) -> (attributes: MountAttributes, parameters: [Parameter]) {
        var attributes: MountAttributes = []
        var parameters: [Parameter] = []
        for option in options {
            if let word = attributeWords[option] {
                attributes.subtract(word.clear)
                if !word.set.intersection(.accessTimeMask).isEmpty { attributes.subtract(.accessTimeMask) }
                attributes.formUnion(word.set)
                continue
            }
            let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
            parameters.append(Parameter(key: parts[0], value: parts.count > 1 ? parts[1] : nil))
        }
        return (attributes, parameters)
    }

    /// Splits `a,b,c` (empty items dropped).
    public static func list(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters() }.filter { !$0.isEmpty }
    }
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        var text = Substring(self)
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return String(text)
    }
}

/// Paths inside the rootfs, handled as text: normalized, joined, compared by component.
public enum RootPath {
    /// `/a//b/./c/` -> `/a/b/c`; nil when it is not absolute or uses `..`.
    public static func normalize(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return nil }
        var components: [Substring] = []
        for component in path.split(separator: "/") where component != "." {
            if component == ".." { return nil }
            components.append(component)
        }
        return "/" + components.joined(separator: "/")
    }

    /// `root` + `path` (`/another_rootfs` + `/proc` = `/another_rootfs/proc`; `/` + `/proc` = `/proc`).
    public static func join(_ root: String, _ path: String) -> String {
        if path == "/" { return root }
        return root == "/" ? path : root + path
    }

    /// Whether `path` is `ancestor` or lies below it, component-wise.
    public static func isWithin(_ path: String, _ ancestor: String) -> Bool {
        if ancestor == "/" { return true }
        return path == ancestor || path.hasPrefix(ancestor + "/")
    }

    /// Whether `path` lies strictly below `ancestor`.
    public static func isStrictlyWithin(_ path: String, _ ancestor: String) -> Bool {
        path != ancestor && isWithin(path, ancestor)
    }
}

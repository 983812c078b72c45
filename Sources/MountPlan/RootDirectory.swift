import DPUSystem
import Glibc
import SystemPackage

/// The rootfs as a directory descriptor: targets are resolved inside it the way a chroot would see them
/// (openat2 RESOLVE_IN_ROOT), so `var/run -> /run` lands on the rootfs's /run, never on this machine's.
final class RootDirectory {
    let fd: FileDescriptor
    /// The rootfs's path with every symbolic link resolved.
    let realPath: String

    init(_ path: String) throws(SystemError) {
        let fd = try FileDescriptor.openPath(path, flags: O_PATH | O_DIRECTORY)
        do {
            realPath = try fd.realPath()
        } catch {
            fd.closeQuietly()
            throw error
        }
        self.fd = fd
    }

    deinit { fd.closeQuietly() }

    /// The target's directory, resolved inside the rootfs (O_PATH); nil when some component is missing.
    func resolve(_ target: String) throws(SystemError) -> FileDescriptor? {
        do {
            return try fd.open(
                beneath: Array(relative(target).utf8), flags: O_PATH | O_DIRECTORY, resolve: [.inRoot, .noMagicLinks])
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// Resolves the target, creating the missing directories on the way (mode 0755, like `mkdir -p`). A
    /// symbolic link to a missing directory (var/run -> /run) is followed inside the rootfs and what it
    /// names is created there. Returns the target's descriptor and the directories created, outermost
    /// first, as real paths.
    func makeDirectories(_ target: String) throws(SystemError) -> (FileDescriptor, created: [String]) {
        var created: [String] = []
        try makeDirectories(target, created: &created, depth: 0)
        guard let result = try resolve(target) else { throw SystemError(.noSuchFileOrDirectory, "resolve", target) }
        return (result, created)
    }

    private func makeDirectories(_ target: String, created: inout [String], depth: Int) throws(SystemError) {
        guard depth < 8 else { throw SystemError(.tooManySymbolicLinkLevels, "resolve", target) }
        var prefix: [Substring] = []
        for component in relative(target).split(separator: "/") {
            let parentPath = prefix.joined(separator: "/")
            prefix.append(component)
            let path = prefix.joined(separator: "/")
            if let existing = try resolve("/" + path) {
                existing.closeQuietly()
                continue
            }
            let parent = try parentPath.isEmpty
                ? fd.duplicateCloseOnExec()
                : fd.open(beneath: Array(parentPath.utf8), flags: O_PATH | O_DIRECTORY, resolve: [.inRoot, .noMagicLinks])
            defer { parent.closeQuietly() }
            // mkdirat on an O_PATH directory descriptor works: it only names the directory.
            do {
                try parent.makeDirectory(Array(component.utf8), mode: 0o755)
                let parentReal = try parent.realPath()
                created.append((parentReal == "/" ? "" : parentReal) + "/" + component)
            } catch where error.errno == .fileExists {
                // A symbolic link to a missing directory: create what it names, inside the rootfs.
                let link = describe(try parent.readLink(Array(component.utf8)))
                let named = link.hasPrefix("/") ? link : "/" + parentPath + "/" + link
                try makeDirectories(Self.lexical(named), created: &created, depth: depth + 1)
            }
        }
    }

    /// `/a/b/../c` -> `/a/c`, with `..` at the top staying at the top (as inside a chroot).
    static func lexical(_ path: String) -> String {
        var components: [Substring] = []
        for component in path.split(separator: "/") where component != "." {
            if component == ".." { _ = components.popLast() } else { components.append(component) }
        }
        return "/" + components.joined(separator: "/")
    }

    private func relative(_ target: String) -> String {
        let trimmed = target.drop { $0 == "/" }
        return trimmed.isEmpty ? "." : String(trimmed)
    }
}

extension FileDescriptor {
    /// The path this descriptor refers to (`readlink /proc/self/fd/N`).
    func realPath() throws(SystemError) -> String {
        describe(try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(procfsPath.utf8)))
    }

    /// The id of the mount this descriptor is on (`mnt_id` in /proc/self/fdinfo/N), as mountinfo's
    /// first column: for a mount point, the topmost mount there.
    func mountID() throws(SystemError) -> Int {
        let info = try readTextFile("/proc/self/fdinfo/\(rawValue)")
        for line in info.split(separator: "\n") where line.hasPrefix("mnt_id:") {
            if let id = Int(line.dropFirst("mnt_id:".count).trimmingCharacters()) { return id }
        }
        throw SystemError(.noSuchFileOrDirectory, "read mnt_id", "/proc/self/fdinfo/\(rawValue)")
    }
}

/// The mount table, indexed.
struct MountTable {
    let mounts: [MountInfoEntry]
    let byID: [Int: MountInfoEntry]

    init(_ mounts: [MountInfoEntry]) {
        self.mounts = mounts
        byID = Dictionary(mounts.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    }

    static func read() throws(SystemError) -> MountTable { MountTable(try MountInfo.read()) }

    /// The mounts visible at the directory `fd` refers to (whose resolved path is `path`), bottom first.
    func stack(at fd: borrowing FileDescriptor, path: String) throws(SystemError) -> [MountInfoEntry] {
        guard var top = byID[try fd.mountID()], top.mountPoint == path else { return [] }
        var stack = [top]
        while let below = byID[top.parentID], below.id != top.id, below.mountPoint == path {
            stack.insert(below, at: 0)
            top = below
        }
        return stack
    }

    /// Whether mount `id` has mounts on it or below it.
    func hasChildren(_ id: Int) -> Bool { mounts.contains { $0.parentID == id && $0.id != id } }
}

/// Where the plan's steps are now: each target resolved inside the rootfs (nothing created) and the
/// mounts there; the bind sources' identities.
struct Survey {
    var placements: [Int: Placement] = [:]
    var bindSources: [Int: BindSource] = [:]
    var table: MountTable
    var realRoot: String

    init(plan: Plan) throws(SystemError) {
        table = try MountTable.read()
        let root: RootDirectory
        do {
            root = try RootDirectory(plan.root)
        } catch where error.errno == .noSuchFileOrDirectory {
            realRoot = plan.root
            return
        }
        realRoot = root.realPath
        for step in plan.steps where step.skip == nil {
            guard let fd = try? root.resolve(step.entry.target) else {
                placements[step.number] = Placement(path: nil, stack: [])
                continue
            }
            defer { fd.closeQuietly() }
            let path = try fd.realPath()
            placements[step.number] = Placement(path: path, stack: try table.stack(at: fd, path: path))
            if case .bind = step.entry.kind { bindSources[step.number] = try? Survey.bindSource(step.entry.source, table: table) }
        }
    }

    func status(of plan: Plan) -> MountStatus {
        MountStatus.compare(
            plan: plan, placements: placements, bindSources: bindSources, mounts: table.mounts, realRoot: realRoot)
    }

    /// The device and file-system path a bind of `source` would show.
    static func bindSource(_ source: String, table: MountTable) throws(SystemError) -> BindSource {
        let fd = try FileDescriptor.openPath(source, flags: O_PATH)
        defer { fd.closeQuietly() }
        let path = try fd.realPath()
        guard let mount = table.byID[try fd.mountID()] else {
            throw SystemError(.noSuchFileOrDirectory, "find the mount of", source)
        }
        var inside = mount.mountPoint == "/" ? path : String(path.dropFirst(mount.mountPoint.count))
        if inside.isEmpty { inside = "/" }
        let root = mount.root == "/" ? inside : (inside == "/" ? mount.root : mount.root + inside)
        return BindSource(device: mount.device, root: root)
    }
}

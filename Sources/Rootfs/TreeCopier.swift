import DPUSystem
import Glibc
import SystemPackage

/// A difference between the source and the rootfs, fixed.
public struct Change: Sendable, Equatable {
    /// Relative to the rootfs (`usr/bin/passwd`).
    public var path: String
    /// What was fixed: new, content, type, owner, mode, xattrs, link target, hard link, device.
    public var what: [String]

    public init(path: String, what: [String]) {
        self.path = path
        self.what = what
    }
}

/// How far a copy is: entries and bytes handled (copied or found already equal).
public struct CopyProgress: Sendable, Equatable {
    public var entries: Int
    public var bytes: UInt64
    public init(entries: Int = 0, bytes: UInt64 = 0) {
        self.entries = entries
        self.bytes = bytes
    }
}

/// What a copy did.
public struct CopyReport: Sendable {
    /// Entries that were made because they were missing: how many, and the first few.
    public var created = 0
    public var createdSample: [String] = []
    /// Everything else that was fixed, each with what was wrong.
    public var changes: [Change] = []
    /// Entries found as they should be.
    public var unchanged = 0
    public var bytesCopied: UInt64 = 0
    /// Things that could not be copied as they are and were handled otherwise.
    public var warnings: [String] = []
    public init() {}
}

/// A failure while copying, naming the path.
public struct CopyError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var error: SystemError
    public var description: String { "\(path): \(error)" }
}

/// Copies trees into the rootfs the way `cp -a` should (and the guide's `cp -r` did not): owners, modes
/// with setuid/setgid/sticky, extended attributes (file capabilities, ACLs), modification times, hard links
/// as hard links, symbolic links verbatim, device nodes, FIFOs and sockets. It compares before writing:
/// what already matches is left alone, so a second run changes only what differs, and says what.
///
/// Every access is relative to directory descriptors with O_NOFOLLOW: a symbolic link inside the rootfs
/// cannot redirect a write out of it. It never crosses into another mount of the source.
final class TreeCopier {
    let destinationRoot: FileDescriptor
    /// Paths (relative to the rootfs) that are not copied: the files dpuctl installs itself.
    let excluded: Set<[UInt8]>
    let progress: ((CopyProgress) -> Void)?
    private(set) var report = CopyReport()
    private var done = CopyProgress()
    private var lastReported = 0
    /// Source inode -> the first copy's path and inode: later names of the inode become hard links.
    private var links: [LinkKey: (path: [UInt8], inode: UInt64)] = [:]
    private var temporaries = 0
    private var warned: Set<String> = []

    struct LinkKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    init(destinationRoot: FileDescriptor, excluded: Set<[UInt8]>, progress: ((CopyProgress) -> Void)?) {
        self.destinationRoot = destinationRoot
        self.excluded = excluded
        self.progress = progress
    }

    /// Copies `name` of `source` (a directory descriptor) to the same name in `destination`; `path` is
    /// its path relative to the rootfs.
    func copy(_ name: [UInt8], from source: FileDescriptor, to destination: FileDescriptor, path: [UInt8]) throws(CopyError) {
        let info: Glibc.stat
        do {
            info = try source.status(of: name)
        } catch {
            throw CopyError(path: describe(path), error: error)
        }
        try copy(name, info: info, from: source, to: destination, path: path, device: UInt64(info.st_dev))
    }

    private func copy(
        _ name: [UInt8], info: Glibc.stat, from source: FileDescriptor, to destination: FileDescriptor,
        path: [UInt8], device: UInt64
    ) throws(CopyError) {
        guard !excluded.contains(path) else { return }
        let kind = info.st_mode & S_IFMT
        var what: [String]
        do {
            switch kind {
            case S_IFDIR: what = try makeDirectory(name, in: destination)
            case S_IFREG: what = try copyFile(name, info: info, from: source, to: destination, path: path)
            case S_IFLNK: what = try copySymbolicLink(name, info: info, from: source, to: destination)
            default: what = try copyNode(name, info: info, to: destination)
            }
        } catch where error.errno == .noSuchFileOrDirectory && (try? source.status(of: name)) == nil {
            warn("\(describe(path)) went away during the copy; not copied")
            return
        } catch {
            throw CopyError(path: describe(path), error: error)
        }
        if kind == S_IFDIR { try copyContents(name, info: info, from: source, to: destination, path: path, device: device) }
        do {
            // A later name of a hard link shares its first name's metadata. A file just written is new or
            // rewritten: its metadata is part of that change, not another one.
            if !what.contains("hard link") {
                let fixed = try fixMetadata(name, info: info, source: source, destination: destination)
                if what.isEmpty { what = fixed }
            }
        } catch {
            throw CopyError(path: describe(path), error: error)
        }
        record(path, what.contains("new") ? ["new"] : what)
        done.entries += 1
        if kind == S_IFREG { done.bytes += UInt64(info.st_size) }
        if let progress, done.entries - lastReported >= 64 {
            lastReported = done.entries
            progress(done)
        }
    }

    /// Records a change made outside the copier (a top-level link), or nil for "already right".
    func note(_ change: Change?) {
        guard let change else { return report.unchanged += 1 }
        if change.what == ["new"] {
            report.created += 1
            if report.createdSample.count < 20 { report.createdSample.append(change.path) }
        } else {
            report.changes.append(change)
        }
    }

    /// The final progress, once everything is done.
    func finish() { progress?(done) }

    private func record(_ path: [UInt8], _ what: [String]) {
        if what.isEmpty {
            report.unchanged += 1
        } else if what == ["new"] {
            // A first copy makes every entry: count them, keep a few (a list of all would be the tree).
            report.created += 1
            if report.createdSample.count < 20 { report.createdSample.append(describe(path)) }
        } else {
            report.changes.append(Change(path: describe(path), what: what))
        }
    }

    // MARK: Kinds

    private func makeDirectory(_ name: [UInt8], in destination: FileDescriptor) throws(SystemError) -> [String] {
        var what: [String] = []
        if let existing = try lookup(name, in: destination), existing.st_mode & S_IFMT != S_IFDIR {
            try destination.removeEntry(name, directory: false)
            what.append("type")
        }
        if try lookup(name, in: destination) == nil {
            try destination.makeDirectory(name, mode: 0o700)
            what = ["new"]
        }
        return what
    }

    /// Copies a directory's entries; a directory on another mount of the source is made but not entered.
    private func copyContents(
        _ name: [UInt8], info: Glibc.stat, from source: FileDescriptor, to destination: FileDescriptor,
        path: [UInt8], device: UInt64
    ) throws(CopyError) {
        guard UInt64(info.st_dev) == device else {
            warn("\(describe(path)) is another mount in the source: its directory is made, its contents are not copied")
            return
        }
        let from: FileDescriptor, target: FileDescriptor, children: [[UInt8]]
        do throws(SystemError) {
            from = try source.open(at: name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            do throws(SystemError) {
                target = try destination.open(at: name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            } catch {
                from.closeQuietly()
                throw error
            }
        } catch {
            throw CopyError(path: describe(path), error: error)
        }
        defer {
            from.closeQuietly()
            target.closeQuietly()
        }
        do { children = try from.directoryNames() } catch { throw CopyError(path: describe(path), error: error) }
        for child in children {
            let childInfo: Glibc.stat
            do {
                childInfo = try from.status(of: child)
            } catch where error.errno == .noSuchFileOrDirectory {
                continue  // gone since the listing
            } catch {
                throw CopyError(path: describe(path + [0x2F] + child), error: error)
            }
            try copy(child, info: childInfo, from: from, to: target, path: path + [0x2F] + child, device: device)
        }
    }

    private func copyFile(
        _ name: [UInt8], info: Glibc.stat, from source: FileDescriptor, to destination: FileDescriptor, path: [UInt8]
    ) throws(SystemError) -> [String] {
        let existing = try lookup(name, in: destination)
        let key = LinkKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        if info.st_nlink > 1, let first = links[key] {
            if let existing, UInt64(existing.st_ino) == first.inode { return [] }
            let original = try destinationRoot.open(
                beneath: first.path, flags: O_PATH | O_NOFOLLOW, resolve: [.beneath, .noSymlinks])
            defer { original.closeQuietly() }
            let temporary = nextTemporary()
            try original.link(into: destination, as: temporary)
            try replace(name, with: temporary, in: destination, existing: existing)
            return ["hard link"]
        }
        var what: [String] = []
        let sameContent = existing.map {
            $0.st_mode & S_IFMT == S_IFREG && $0.st_size == info.st_size
                && $0.st_mtim.tv_sec == info.st_mtim.tv_sec && $0.st_mtim.tv_nsec == info.st_mtim.tv_nsec
        } ?? false
        if !sameContent {
            let temporary = nextTemporary()
            let input = try source.open(at: name, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY)
            defer { input.closeQuietly() }
            let output = try destination.open(at: temporary, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            do {
                try copyData(from: input, to: output)
                output.closeQuietly()
            } catch {
                output.closeQuietly()
                try? destination.removeEntry(temporary, directory: false)
                throw error
            }
            try replace(name, with: temporary, in: destination, existing: existing)
            what.append(existing == nil ? "new" : (existing!.st_mode & S_IFMT == S_IFREG ? "content" : "type"))
        }
        if info.st_nlink > 1, let copied = try lookup(name, in: destination) {
            links[key] = (path, UInt64(copied.st_ino))
        }
        return what
    }

    private func copySymbolicLink(
        _ name: [UInt8], info: Glibc.stat, from source: FileDescriptor, to destination: FileDescriptor
    ) throws(SystemError) -> [String] {
        let target = try source.readLink(name)
        let existing = try lookup(name, in: destination)
        if let existing, existing.st_mode & S_IFMT == S_IFLNK, try destination.readLink(name) == target { return [] }
        let temporary = nextTemporary()
        try destination.makeSymbolicLink(temporary, target: target)
        try replace(name, with: temporary, in: destination, existing: existing)
        guard let existing else { return ["new"] }
        return [existing.st_mode & S_IFMT == S_IFLNK ? "link target" : "type"]
    }

    private func copyNode(_ name: [UInt8], info: Glibc.stat, to destination: FileDescriptor) throws(SystemError) -> [String] {
        let existing = try lookup(name, in: destination)
        if let existing, existing.st_mode & S_IFMT == info.st_mode & S_IFMT, existing.st_rdev == info.st_rdev { return [] }
        let temporary = nextTemporary()
        try destination.makeNode(temporary, mode: (info.st_mode & S_IFMT) | 0o600, device: info.st_rdev)
        try replace(name, with: temporary, in: destination, existing: existing)
        return [existing == nil ? "new" : "device"]
    }

    // MARK: Metadata

    /// Brings owner, mode, extended attributes and modification time of `name` in `destination` to
    /// those of the source, in the order that keeps them: chown clears setuid bits and file capabilities,
    /// so it goes first, then the mode, then the attributes.
    private func fixMetadata(
        _ name: [UInt8], info: Glibc.stat, source: FileDescriptor, destination: FileDescriptor
    ) throws(SystemError) -> [String] {
        var what: [String] = []
        let isLink = info.st_mode & S_IFMT == S_IFLNK
        guard var current = try lookup(name, in: destination) else { return [] }
        let modeBefore = current.st_mode & 0o7777
        if current.st_uid != info.st_uid || current.st_gid != info.st_gid {
            try destination.changeOwner(of: name, uid: info.st_uid, gid: info.st_gid)
            what.append("owner")
            current = try destination.status(of: name)
        }
        if !isLink {
            let target = try destination.open(at: name, flags: O_PATH | O_NOFOLLOW)
            defer { target.closeQuietly() }
            if current.st_mode & 0o7777 != info.st_mode & 0o7777 {
                try target.changeFileMode(info.st_mode & 0o7777)
                // A mode that was right before chown cleared its setuid bit is not news.
                if modeBefore != info.st_mode & 0o7777 { what.append("mode") }
            }
            let origin = try source.open(at: name, flags: O_PATH | O_NOFOLLOW)
            defer { origin.closeQuietly() }
            if try copyAttributes(from: origin, to: target, path: name) { what.append("xattrs") }
        }
        if current.st_mtim.tv_sec != info.st_mtim.tv_sec || current.st_mtim.tv_nsec != info.st_mtim.tv_nsec {
            try destination.setTimes(of: name, access: info.st_atim, modification: info.st_mtim)
        }
        return what
    }

    /// Makes the destination's extended attributes equal to the source's; true if anything changed.
    private func copyAttributes(from source: FileDescriptor, to destination: FileDescriptor, path: [UInt8]) throws(SystemError) -> Bool {
        let wanted = try attributes(of: source)
        let present = try attributes(of: destination)
        guard wanted != present else { return false }
        var changed = false
        for (name, value) in wanted.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) where present[name] != value {
            do {
                try destination.setExtendedAttribute(name, value: value, flags: 0)
                changed = true
            } catch where [.notSupported, .notPermitted, .permissionDenied].contains(error.errno) {
                warn("extended attribute \(describe(name)) cannot be set in the rootfs (\(error.errno)); files keep going without it")
            }
        }
        for name in present.keys where wanted[name] == nil {
            do {
                try destination.removeExtendedAttribute(name)
                changed = true
            } catch where [.notSupported, .notPermitted, .permissionDenied, .noData].contains(error.errno) {}
        }
        return changed
    }

    /// Every extended attribute of the file, by name. A file system without them has none.
    private func attributes(of fd: FileDescriptor) throws(SystemError) -> [[UInt8]: [UInt8]] {
        let names: [UInt8]
        do {
            names = try readSized { (buffer) throws(SystemError) in try fd.extendedAttributeNames(into: buffer) }
        } catch where error.errno == .notSupported {
            return [:]
        }
        var result: [[UInt8]: [UInt8]] = [:]
        for name in names.split(separator: 0) {
            let key = Array(name)
            do {
                result[key] = try readSized { (buffer) throws(SystemError) in try fd.extendedAttribute(key, into: buffer) }
            } catch where error.errno == .noData {
                continue
            }
        }
        return result
    }

    // MARK: Helpers

    /// `lstat` of a name in a directory; nil when it does not exist.
    private func lookup(_ name: [UInt8], in directory: FileDescriptor) throws(SystemError) -> Glibc.stat? {
        do {
            return try directory.status(of: name)
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// Renames `temporary` over `name`, removing a directory in the way first.
    private func replace(_ name: [UInt8], with temporary: [UInt8], in directory: FileDescriptor, existing: Glibc.stat?) throws(SystemError) {
        do {
            if let existing, existing.st_mode & S_IFMT == S_IFDIR { try removeTree(name, in: directory) }
            try directory.rename(temporary, to: directory, name)
        } catch {
            try? directory.removeEntry(temporary, directory: false)
            throw error
        }
    }

    /// Removes a directory tree of the rootfs (where the source has something else), never leaving the
    /// file system it is on.
    private func removeTree(_ name: [UInt8], in directory: FileDescriptor) throws(SystemError) {
        let parent = try directory.status()
        let fd = try directory.open(at: name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        defer { fd.closeQuietly() }
        guard try fd.status().st_dev == parent.st_dev else {
            throw SystemError(.resourceBusy, "remove (a mount point)", describe(name))
        }
        for child in try fd.directoryNames() {
            if try fd.status(of: child).st_mode & S_IFMT == S_IFDIR {
                try removeTree(child, in: fd)
            } else {
                try fd.removeEntry(child, directory: false)
            }
        }
        try directory.removeEntry(name, directory: true)
    }

    private func copyData(from input: FileDescriptor, to output: FileDescriptor) throws(SystemError) {
        var kernelCopy = true
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            var count = 0
            if kernelCopy {
                do {
                    count = try input.copyRange(to: output, count: 8 << 20)
                } catch where [.improperLink, .invalidArgument, .notSupported, .notSupportedOnSocket, .noFunction].contains(error.errno) {
                    kernelCopy = false
                    continue
                }
            } else {
                count = try input.readSome(into: buffer) ?? 0
                if count > 0 { try output.writeAll([UnsafeRawBufferPointer(rebasing: buffer[..<count])]) }
            }
            if count == 0 { return }
            report.bytesCopied += UInt64(count)
        }
    }

    private func nextTemporary() -> [UInt8] {
        temporaries += 1
        return Array(".dpuctl-new.\(getpid()).\(temporaries)".utf8)
    }

    private func warn(_ message: String) {
        if warned.insert(message).inserted { report.warnings.append(message) }
    }
}

/// Calls a size-then-fill function (listxattr, getxattr): first with no buffer for the size, then with a
/// buffer of that size; retries if it grew in between.
func readSized(_ call: (UnsafeMutableRawBufferPointer) throws(SystemError) -> Int) throws(SystemError) -> [UInt8] {
    for _ in 0..<4 {
        let size = try call(UnsafeMutableRawBufferPointer(start: nil, count: 0))
        if size == 0 { return [] }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
        defer { buffer.deallocate() }
        do {
            let got = try call(buffer)
            return Array(buffer[..<got])
        } catch where error.errno == .outOfRange {
            continue  // ERANGE: it grew
        }
    }
    throw SystemError(.outOfRange, "getxattr (keeps growing)")
}

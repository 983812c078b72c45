import DPUSystem
import DPUWire
import Glibc
import NIOCore
import Synchronization
import SystemPackage

/// The engine's file operations: each request, checked against the whitelist on the path it reaches and
/// carried out with *at(2) calls on descriptors confined beneath the export (see `Export`).
///
/// Differences from the original, on purpose: denials are EACCES (EROFS on a read-only export) instead
/// of a mix of ENOENT/EFAULT; LINK, SYMLINK and MKNOD are checked (Create); device nodes are never
/// created, nor opened except pty slaves; RENAME checks both ends and keeps its flags; a hard link or rename may not move a
/// file to where the whitelist allows more than where it was; the terminal side of a pseudo-terminal is the
/// one kind of device node opened (for the client's pty bridge, `isTerminal`).
public final class QTFSFileServer: Sendable {
    private let policy: Mutex<QTFSWhitelist>
    /// Most handles one connection may hold open.
    public let handleLimit: Int
    /// st_dev -> (volatile, may block), learnt with fstatfs once per device.
    private let devices = Mutex<[UInt64: (volatile: Bool, mayBlock: Bool)]>([:])

    public init(whitelist: QTFSWhitelist, handleLimit: Int = 4096) {
        policy = Mutex(whitelist)
        self.handleLimit = handleLimit
    }

    /// Replaces the whitelist (SIGHUP). Requests already running finish under the old one.
    public func update(_ whitelist: QTFSWhitelist) { policy.withLock { $0 = whitelist } }

    public var whitelist: QTFSWhitelist { policy.withLock { $0 } }

    /// Where a request should run: on the connection's reader itself (short calls on regular files and
    /// metadata: one thread hand-off less per request, which is most of a small request's latency), on
    /// the fast pool, or on the blocking pool (what may wait indefinitely).
    enum Pool { case inline, fast, blocking }

    func pool(for request: QTFSRequest, in session: EngineSession) -> Pool {
        switch request {
        case .read(let handle, _, _, _), .write(let handle, _, _, _):
            guard let open = try? session.handle(handle) else { return .inline }
            if open.mayBlock { return .blocking }
            return open.kind == .file ? .inline : .fast
        case .poll(let handle, _, _):
            return ((try? session.handle(handle))?.mayBlock ?? false) ? .blocking : .fast
        case .lookup, .getattr, .readlink, .release, .getxattr, .listxattr:
            return .inline
        default:
            return .fast
        }
    }

    /// How many bytes a READ of a regular file with a trustworthy size gets: what the file has at
    /// `offset`, at most `size`; nil when the reply cannot be sent straight from the file (pseudo files,
    /// streams), which then go through `perform`.
    func directReadLength(_ request: QTFSRequest, in session: EngineSession) -> (OpenHandle, Int64, Int)? {
        // Small reads are cheaper as one pread and one writev than as a write and a sendfile.
        guard case .read(let id, let offset, let size, _) = request, size >= 64 << 10, let handle = try? session.handle(id),
            handle.kind == .file, !handle.volatile, let info = try? handle.fd.status(), info.st_mode & S_IFMT == S_IFREG
        else { return nil }
        let start = Int64(clamping: offset)
        return (handle, start, Int(max(0, min(Int64(size), Int64(info.st_size) - start))))
    }

    /// Entries an OPENDIR answer carries (the client asks for more with READDIR).
    static let firstBatch = 512

    /// Thrown by an operation that found, on the fast pool, that it must wait (opening a FIFO).
    struct MustBlock: Error {}

    /// Carries out `request` for `session`. `blocking` says whether this runs on the blocking pool.
    func perform(
        _ request: QTFSRequest, in session: EngineSession, blocking: Bool, cancellation: Cancellation
    ) throws(OperationError) -> QTFSReply {
        do {
            return try dispatch(request, session, blocking, cancellation)
        } catch let error as SystemError {
            throw .failed(error)
        } catch is MustBlock {
            throw .mustBlock
        } catch {
            throw .failed(SystemError(.ioError, "\(error)"))
        }
    }

    enum OperationError: Error {
        case failed(SystemError)
        case mustBlock
    }

    private func dispatch(
        _ request: QTFSRequest, _ session: EngineSession, _ blocking: Bool, _ cancellation: Cancellation
    ) throws -> QTFSReply {
        switch request {
        case .attach(let hostPath):
            return try attach(hostPath, session)
        case .lookup(let path):
            let export = try session.export(path.export)
            let fd = try export.node(path.path)
            defer { fd.closeQuietly() }
            return .attributes(try attributes(fd))
        case .getattr(let target):
            return .attributes(try withNode(target, session) { fd in try attributes(fd) })
        case .setattr(let target, let changes):
            return .attributes(try setAttributes(target, changes, session))
        case .readlink(let path):
            let fd = try session.export(path.export).node(path.path)
            defer { fd.closeQuietly() }
            return .linkTarget(try fd.readLink())
        case .opendir(let path):
            let id = try openDirectory(path, session)
            guard case .entries(let entries, let end) = try readDirectory(
                session.handle(id), cookie: 0, maximum: QTFSFileServer.firstBatch, withAttributes: true)
            else { return .directory(handle: id, [], end: false) }
            return .directory(handle: id, entries, end: end)
        case .readdir(let handle, let cookie, let maximum, let plus):
            return try readDirectory(session.handle(handle), cookie: cookie, maximum: Int(maximum), withAttributes: plus)
        case .open(let path, let flags):
            return try open(path, flags: Int32(bitPattern: flags), session, blocking, cancellation)
        case .create(let path, let flags, let mode, let owner):
            return try create(path, flags: Int32(bitPattern: flags), mode: mode_t(mode & 0o7777), owner, session)
        case .read(let handle, let offset, let size, let flags):
            return .data(try read(session.handle(handle), offset: offset, size: Int(size), flags: Int32(bitPattern: flags), cancellation))
        case .write(let handle, let offset, let flags, let data):
            return .written(UInt32(try write(session.handle(handle), offset: offset, data: data, flags: Int32(bitPattern: flags), cancellation)))
        case .release(let handle):
            try session.remove(handle)
            return .done
        case .fsync(let handle, let dataOnly):
            try session.handle(handle).fd.sync(dataOnly: dataOnly)
            return .done
        case .mkdir(let path, let mode, let owner):
            let (export, directory, name) = try prepareChange(.mkdir, path, session)
            defer { directory.closeQuietly() }
            try directory.makeDirectory(name, mode: mode_t(mode & 0o7777))
            try own(directory, name, owner)
            _ = export
            return .attributes(try attributes(of: name, in: directory))
        case .mknod(let path, let mode, let owner):
            // FIFOs, regular files and sockets (a DPU process binding a unix socket): never a device node,
            // which would give the DPU the host's devices.
            let type = mode_t(mode) & S_IFMT
            guard type == S_IFIFO || type == S_IFREG || type == S_IFSOCK else {
                throw SystemError(.notPermitted, "mknod (only FIFOs, regular files and sockets)", describe(path.path))
            }
            let (_, directory, name) = try prepareChange(.create, path, session)
            defer { directory.closeQuietly() }
            try directory.makeNode(name, mode: type | mode_t(mode & 0o7777))
            try own(directory, name, owner)
            return .attributes(try attributes(of: name, in: directory))
        case .symlink(let path, let target, let owner):
            let (_, directory, name) = try prepareChange(.create, path, session)
            defer { directory.closeQuietly() }
            try directory.makeSymbolicLink(name, target: target)
            try own(directory, name, owner)
            return .attributes(try attributes(of: name, in: directory))
        case .link(let path, let newPath):
            return .attributes(try link(path, to: newPath, session))
        case .unlink(let path), .rmdir(let path):
            let kind: QTFSWhitelist.Kind = request.operation == .unlink ? .unlink : .rmdir
            let (_, directory, name) = try prepareChange(kind, path, session)
            defer { directory.closeQuietly() }
            try directory.removeEntry(name, directory: kind == .rmdir)
            return .done
        case .rename(let path, let newPath, let flags):
            try rename(path, to: newPath, flags: flags, session)
            return .done
        case .statfs(let path):
            let fd = try session.export(path.export).node(path.path)
            defer { fd.closeQuietly() }
            let info = try fd.fileSystemStatus()
            return .fileSystem(QTFSFileSystemStatistics(
                blockSize: info.blockSize, fragmentSize: info.fragmentSize, blocks: info.blocks,
                freeBlocks: info.freeBlocks, availableBlocks: info.availableBlocks, files: info.files,
                freeFiles: info.freeFiles, maximumNameLength: info.maximumNameLength, type: info.type))
        case .getxattr(let target, let name, let size):
            return try withNode(target, session) { fd in
                var value = [UInt8](repeating: 0, count: Int(size))
                let count = try value.withUnsafeMutableBytes { raw in try fd.extendedAttribute(name, into: raw) }
                return .xattr(size: UInt32(count), value: size == 0 ? [] : Array(value[..<count]))
            }
        case .listxattr(let target, let size):
            return try withNode(target, session) { fd in
                var value = [UInt8](repeating: 0, count: Int(size))
                let count = try value.withUnsafeMutableBytes { raw in try fd.extendedAttributeNames(into: raw) }
                return .xattr(size: UInt32(count), value: size == 0 ? [] : Array(value[..<count]))
            }
        case .setxattr(let target, let name, let value, let flags):
            try withChangedNode(.setxattr, target, session) { fd in
                try fd.setExtendedAttribute(name, value: value, flags: Int32(bitPattern: flags))
            }
            return .done
        case .removexattr(let target, let name):
            try withChangedNode(.setxattr, target, session) { fd in try fd.removeExtendedAttribute(name) }
            return .done
        case .poll(let handle, let events, _):
            var set = [pollfd(fd: try session.handle(handle).fd.rawValue, events: Int16(truncatingIfNeeded: events), revents: 0)]
            _ = try DPUSystem.poll(&set, timeoutMilliseconds: 0, retryOnInterrupt: true)
            return .polled(UInt32(UInt16(bitPattern: set[0].revents)))
        }
    }

    // MARK: - Policy

    private func check(_ kind: QTFSWhitelist.Kind, _ export: Export, _ relative: [UInt8]) throws(SystemError) {
        let path = export.hostPath(of: relative)
        guard policy.withLock({ $0.allows(kind, path) }) else {
            throw SystemError(.permissionDenied, "\(kind.rawValue) is not whitelisted", describe(path))
        }
    }

    private func checkWritable(_ export: Export, _ relative: [UInt8]) throws(SystemError) {
        if export.readOnly { throw SystemError(.readOnlyFileSystem, "read-only export", describe(export.hostPath(of: relative))) }
    }

    /// A change of kind `kind` at `path`: whitelisted, writable export, the parent directory and name.
    private func prepareChange(
        _ kind: QTFSWhitelist.Kind, _ path: QTFSPath, _ session: EngineSession
    ) throws(SystemError) -> (Export, FileDescriptor, [UInt8]) {
        let export = try session.export(path.export)
        try checkWritable(export, path.path)
        try check(kind, export, path.path)
        let (directory, name) = try export.parent(path.path)
        return (export, directory, name)
    }

    /// Moving or linking a file from `source` to `destination` may not give it rights it did not have.
    private func checkNoGain(_ export: Export, from source: [UInt8], to destination: [UInt8]) throws(SystemError) {
        let from = export.hostPath(of: source)
        let to = export.hostPath(of: destination)
        let gains = policy.withLock { list in
            [QTFSWhitelist.Kind.open, .read, .write, .setattr, .setxattr, .unlink, .rename, .readdir].filter {
                list.allows($0, to) && !list.allows($0, from)
            }
        }
        guard gains.isEmpty else {
            throw SystemError(
                .permissionDenied, "it would gain \(gains.map(\.rawValue).joined(separator: ", ")) there", describe(to))
        }
    }

    private func attach(_ hostPath: [UInt8], _ session: EngineSession) throws(SystemError) -> QTFSReply {
        let components = hostPath.split(separator: UInt8(ascii: "/"))
        guard !components.contains(where: { $0.elementsEqual([46]) || $0.elementsEqual([46, 46]) }) else {
            throw SystemError(.invalidArgument, "attach (`.` or `..` in the path)", describe(hostPath))
        }
        let normalized = [UInt8(ascii: "/")] + Array(components.joined(separator: [UInt8(ascii: "/")]))
        let list = policy.withLock { $0 }
        // The longest Mount entry that contains the path: it is opened as the administrator wrote it
        // (it may itself be or contain a symbolic link, /var/run say); the rest is resolved confined.
        guard let entry = (list.entries[.mount] ?? []).filter({ QTFSWhitelist.isPrefix($0, of: normalized) })
            .max(by: { $0.count < $1.count })
        else {
            throw SystemError(.permissionDenied, "attach (not beneath any [Mount] entry of the whitelist)", describe(normalized))
        }
        let base = try FileDescriptor.openPath(describe(entry), flags: O_PATH | O_DIRECTORY)
        var root = base
        let rest = Array(normalized.dropFirst(entry == [47] ? 1 : entry.count + 1))
        if !rest.isEmpty {
            defer { base.closeQuietly() }
            root = try base.open(beneath: rest, flags: O_PATH | O_DIRECTORY, resolve: Export.confined)
        }
        let export = Export(root: root, hostPath: normalized, readOnly: list.isReadOnly(normalized))
        let id = try session.attach(export)
        return .attached(QTFSExportInfo(
            export: id, readOnly: export.readOnly, maximumIO: UInt32(QTFSLimits.maximumIO),
            root: try attributes(root)))
    }

    // MARK: - Attributes

    /// The client's view of the file `fd` refers to (O_PATH or open): its attributes, whether its file
    /// system is a pseudo one, whether it has extended attributes.
    func attributes(_ fd: FileDescriptor) throws(SystemError) -> QTFSAttributes {
        let info = try fd.status()
        var attributes = QTFSAttributes(info, volatile: deviceKind(UInt64(info.st_dev), fd).volatile)
        // listxattr through /proc/self/fd follows to the inode; a symbolic link's own would need lxattr.
        if !attributes.flags.contains(.volatile), info.st_mode & S_IFMT != S_IFLNK,
            (try? fd.extendedAttributeNames(into: UnsafeMutableRawBufferPointer(start: nil, count: 0))) == 0
        {
            attributes.flags.insert(.noExtendedAttributes)
        }
        return attributes
    }

    /// The client's view of `name` in `directory` (not followed if a symbolic link). `presence`: whether
    /// to find out if it has extended attributes (a second path walk: listings leave it out).
    func attributes(of name: [UInt8], in directory: FileDescriptor, presence: Bool = true) throws(SystemError) -> QTFSAttributes {
        let info = try directory.status(of: name)
        var kind = knownDeviceKind(UInt64(info.st_dev))
        if kind == nil {
            // Another file system (a mount point here): learn what it is from the entry itself.
            if let entry = try? directory.open(at: name, flags: O_PATH | O_NOFOLLOW) {
                kind = deviceKind(UInt64(info.st_dev), entry)
                entry.closeQuietly()
            }
        }
        var attributes = QTFSAttributes(info, volatile: kind?.volatile ?? false)
        if presence, !attributes.flags.contains(.volatile), (try? directory.extendedAttributeNamesSize(of: name)) == 0 {
            attributes.flags.insert(.noExtendedAttributes)
        }
        return attributes
    }

    private func knownDeviceKind(_ device: UInt64) -> (volatile: Bool, mayBlock: Bool)? {
        devices.withLock { $0[device] }
    }

    /// Whether files of device `device` are on a pseudo file system; `fd` (any file on it) is used to
    /// learn it the first time.
    private func deviceKind(_ device: UInt64, _ fd: FileDescriptor?) -> (volatile: Bool, mayBlock: Bool) {
        if let known = devices.withLock({ $0[device] }) { return known }
        guard let fd, let status = try? fd.fileSystemStatus() else { return (false, false) }
        let kind = (PseudoFileSystems.magics.contains(status.type), PseudoFileSystems.mayBlock.contains(status.type))
        devices.withLock { $0[device] = kind }
        return kind
    }

    /// Runs `body` with a descriptor of `target`: an O_PATH one for a path, the open one for a handle.
    private func withNode<R>(_ target: QTFSTarget, _ session: EngineSession, _ body: (FileDescriptor) throws -> R) throws -> R {
        switch target {
        case .handle(let id):
            return try body(session.handle(id).fd)
        case .path(let path):
            let export = try session.export(path.export)
            let fd = try export.node(path.path)
            defer { fd.closeQuietly() }
            _ = deviceKind(UInt64(try fd.status().st_dev), fd)
            return try body(fd)
        }
    }

    private func withChangedNode(
        _ kind: QTFSWhitelist.Kind, _ target: QTFSTarget, _ session: EngineSession, _ body: (FileDescriptor) throws -> Void
    ) throws {
        try checkChange(kind, target, session)
        try withNode(target, session, body)
    }

    /// A change of metadata: by path or through a handle, the export must be writable and the change
    /// whitelisted where the node is (a handle's node: where it was opened). A handle's open mode is no
    /// limit here: fchmod, fchown and fsetxattr work on any open file, read-only ones too.
    private func checkChange(_ kind: QTFSWhitelist.Kind, _ target: QTFSTarget, _ session: EngineSession) throws {
        let (export, path): (Export, [UInt8])
        switch target {
        case .path(let target): (export, path) = (try session.export(target.export), target.path)
        case .handle(let id): (export, path) = try session.handle(id).origin
        }
        try checkWritable(export, path)
        try check(kind, export, path)
    }

    private func setAttributes(_ target: QTFSTarget, _ changes: QTFSSetAttributes, _ session: EngineSession) throws -> QTFSAttributes {
        let fields = changes.fields
        var parent: (FileDescriptor, [UInt8])?
        defer { parent?.0.closeQuietly() }
        let fd: FileDescriptor
        var owned = false
        try checkChange(.setattr, target, session)
        switch target {
        case .handle(let id):
            fd = try session.handle(id).fd
        case .path(let path):
            let export = try session.export(path.export)
            fd = try export.node(path.path)
            owned = true
            if !path.path.isEmpty { parent = try export.parent(path.path) }
        }
        defer { if owned { fd.closeQuietly() } }
        let info = try fd.status()
        let isLink = info.st_mode & S_IFMT == S_IFLNK
        if fields.contains(.size) {
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw SystemError(info.st_mode & S_IFMT == S_IFDIR ? .isDirectory : .invalidArgument, "truncate")
            }
            try owned ? fd.truncateFile(to: Int64(changes.size)) : fd.truncate(to: Int64(changes.size))
        }
        if fields.contains(.mode) {
            guard !isLink else { throw SystemError(.notSupported, "chmod of a symbolic link") }
            try fd.changeFileMode(mode_t(changes.mode & 0o7777))
        }
        if fields.contains(.uid) || fields.contains(.gid) {
            try fd.changeOwner(
                of: [], uid: fields.contains(.uid) ? changes.uid : UInt32.max, gid: fields.contains(.gid) ? changes.gid : UInt32.max)
        }
        if !fields.isDisjoint(with: [.accessTime, .accessTimeNow, .modificationTime, .modificationTimeNow]) {
            func time(_ set: QTFSSetAttributes.Fields, _ now: QTFSSetAttributes.Fields, _ value: QTFSTime) -> timespec {
                if fields.contains(now) { return timespec(tv_sec: 0, tv_nsec: Int(utimeNow)) }
                if fields.contains(set) { return timespec(tv_sec: Int(value.seconds), tv_nsec: Int(value.nanoseconds)) }
                return timespec(tv_sec: 0, tv_nsec: Int(utimeOmit))
            }
            let access = time(.accessTime, .accessTimeNow, changes.accessTime)
            let modification = time(.modificationTime, .modificationTimeNow, changes.modificationTime)
            if let (directory, name) = parent, isLink {
                try directory.setTimes(of: name, access: access, modification: modification)
            } else {
                // Through /proc/self/fd the call reaches exactly this inode (no symbolic link is involved).
                try fd.setFileTimes(access: access, modification: modification)
            }
        }
        return try attributes(fd)
    }

    /// Makes a new entry belong to the DPU caller that created it. In a set-group-ID directory the group
    /// stays the directory's, as the kernel would have made it.
    private func own(_ directory: FileDescriptor, _ name: [UInt8], _ owner: QTFSOwner) throws(SystemError) {
        guard owner != .root else { return }
        let setgid = try directory.status().st_mode & S_ISGID != 0
        try directory.changeOwner(of: name, uid: owner.uid, gid: setgid ? UInt32.max : owner.gid)
    }

    // MARK: - Directories

    private func openDirectory(_ path: QTFSPath, _ session: EngineSession) throws -> UInt64 {
        let export = try session.export(path.export)
        try check(.readdir, export, path.path)
        let fd = try export.root.open(
            beneath: path.path.isEmpty ? [46] : path.path, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW,
            resolve: Export.confined)
        return try session.add(OpenHandle(fd: fd, kind: .directory, mayBlock: false, export: export, path: path.path))
    }

    private func readDirectory(_ handle: OpenHandle, cookie: UInt64, maximum: Int, withAttributes: Bool) throws -> QTFSReply {
        guard handle.kind == .directory else { throw SystemError(.notDirectory, "readdir") }
        return try handle.cursor.withLock { (cursor) throws -> QTFSReply in
            if cursor.position != cookie {
                try handle.fd.seek(to: Int64(bitPattern: cookie))
                cursor = DirectoryCursor(position: cookie)
            }
            var raw = [UInt8](repeating: 0, count: 32 << 10)
            while cursor.pending.count < maximum && !cursor.atEnd {
                let count = try raw.withUnsafeMutableBytes { try handle.fd.directoryEntries(into: $0) }
                if count == 0 {
                    cursor.atEnd = true
                } else {
                    cursor.pending += raw.withUnsafeBytes { DirectoryEntry.parse($0, count: count) }
                }
            }
            let taken = cursor.pending.prefix(maximum)
            cursor.pending.removeFirst(taken.count)
            if let last = taken.last { cursor.position = UInt64(bitPattern: last.nextOffset) }
            let entries = taken.map { entry -> QTFSDirectoryEntry in
                var attributes: QTFSAttributes?
                let dot = entry.name == [46] || entry.name == [46, 46]
                if withAttributes && !dot { attributes = try? self.attributes(of: entry.name, in: handle.fd, presence: false) }
                return QTFSDirectoryEntry(
                    name: entry.name, type: entry.type, inode: entry.inode,
                    cookie: UInt64(bitPattern: entry.nextOffset), attributes: attributes)
            }
            return .entries(entries, end: cursor.pending.isEmpty && cursor.atEnd)
        }
    }

    // MARK: - Files

    /// The open(2) flags a client may pass: access mode and status flags. O_CREAT/O_EXCL are CREATE's;
    /// O_DIRECTORY, O_PATH, O_TMPFILE, O_NOCTTY and friends are the engine's business.
    static let clientOpenFlags = O_ACCMODE | O_APPEND | O_TRUNC | O_NONBLOCK | O_SYNC | O_DSYNC | O_NOATIME

    private func checkOpen(_ export: Export, _ relative: [UInt8], _ flags: Int32) throws(SystemError) {
        let access = flags & O_ACCMODE
        let writes = access != O_RDONLY || flags & O_TRUNC != 0
        if writes { try checkWritable(export, relative) }
        try check(.open, export, relative)
        if access != O_WRONLY { try check(.read, export, relative) }
        if writes { try check(.write, export, relative) }
    }

    private func open(
        _ path: QTFSPath, flags: Int32, _ session: EngineSession, _ blocking: Bool, _ cancellation: Cancellation
    ) throws -> QTFSReply {
        let flags = flags & QTFSFileServer.clientOpenFlags
        let export = try session.export(path.export)
        try checkOpen(export, path.path, flags)
        let node = try export.node(path.path)
        defer { node.closeQuietly() }
        let info = try node.status()
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: if flags & O_ACCMODE != O_RDONLY { throw SystemError(.isDirectory, "open") }
        case S_IFIFO: if !blocking { throw MustBlock() }
        case S_IFLNK: throw SystemError(.tooManySymbolicLinkLevels, "open (a symbolic link is followed by the client)")
        case S_IFSOCK: throw SystemError(.noSuchAddressOrDevice, "open of a socket")
        case S_IFCHR where QTFSFileServer.isTerminal(info, node): break
        default: throw SystemError(.permissionDenied, "open of a device node (devices stay on the host)")
        }
        // Reopen the very inode that was checked: /proc/self/fd/N jumps to it without resolving a path.
        let fd = try cancellation.run { () throws(SystemError) -> FileDescriptor in
            while true {
                do throws(SystemError) {
                    return try node.reopen(flags: flags)
                } catch where error.errno == .interrupted && !cancellation.isCancelled {
                    continue
                }
            }
        }
        return try opened(fd, info, flags, session, at: export, path.path)
    }

    private func create(
        _ path: QTFSPath, flags: Int32, mode: mode_t, _ owner: QTFSOwner, _ session: EngineSession
    ) throws -> QTFSReply {
        let flags = flags & (QTFSFileServer.clientOpenFlags | O_EXCL)
        let (export, directory, name) = try prepareChange(.create, path, session)
        defer { directory.closeQuietly() }
        try checkOpen(export, path.path, flags | O_TRUNC)
        let base = (flags & ~O_EXCL) | O_CREAT | O_NOFOLLOW | O_NOCTTY
        let (fd, created) = try openCreating(directory, name, base, mode, exclusive: flags & O_EXCL != 0)
        let info: stat
        do {
            info = try fd.status()
            guard info.st_mode & S_IFMT == S_IFREG else { throw SystemError(.invalidArgument, "create of a non-regular file") }
            if created { try own(directory, name, owner) }
        } catch {
            fd.closeQuietly()
            throw error
        }
        return try opened(fd, try fd.status(), flags, session, at: export, path.path)
    }

    /// Opens `name` creating it; exclusively first, to know whether this call made the file (and should
    /// give it to the caller). What already exists is opened without waiting: a FIFO there would block the
    /// open until a peer came (on a fast worker, which nothing could then interrupt); it is refused as
    /// not a regular file after the open instead.
    private func openCreating(
        _ directory: FileDescriptor, _ name: [UInt8], _ flags: Int32, _ mode: mode_t, exclusive: Bool
    ) throws(SystemError) -> (FileDescriptor, Bool) {
        do {
            return (try directory.open(at: name, flags: flags | O_EXCL, mode: mode), true)
        } catch {
            guard error.errno == .fileExists, !exclusive else { throw error }
            let fd = try directory.open(at: name, flags: flags | O_NONBLOCK, mode: mode)
            if flags & O_NONBLOCK == 0 {
                do { try fd.setNonBlocking(false) } catch {
                    fd.closeQuietly()
                    throw error
                }
            }
            return (fd, false)
        }
    }

    /// Whether `node` (stat `info`) is the terminal side of a host pseudo-terminal: a character device of
    /// a pty major on a devpts file system. The only device nodes the engine opens: the client's pty
    /// bridge (`-o ptybridge`) relays a terminal of its own to it, for `virsh console`.
    static func isTerminal(_ info: stat, _ node: FileDescriptor) -> Bool {
        info.st_mode & S_IFMT == S_IFCHR && PseudoTerminal.isTerminalDevice(UInt64(info.st_rdev))
            && (try? node.fileSystemStatus().type) == 0x1cd1  // DEVPTS_SUPER_MAGIC
    }

    /// Makes `fd` a handle of `session` (it owns `fd` from here on, also when it fails).
    private func opened(
        _ fd: FileDescriptor, _ info: stat, _ flags: Int32, _ session: EngineSession, at export: Export, _ path: [UInt8]
    ) throws -> QTFSReply {
        let type = info.st_mode & S_IFMT
        let device = deviceKind(UInt64(info.st_dev), fd)
        var openFlags: QTFSOpenFlags = []
        var kind = OpenHandle.Kind.file
        var mayBlock = device.mayBlock
        // A terminal (only pty slaves get here) is a byte stream: raw mode, so that what the program at
        // its other end writes arrives unchanged (QEMU makes its ptys raw anyway); the client's own
        // terminal does whatever line discipline the DPU side asks for. Its modes are put back at release.
        var saved: termios?
        if type == S_IFCHR {
            do {
                saved = try Terminal.makeRaw(fd)
            } catch {
                fd.closeQuietly()
                throw error
            }
        }
        if type == S_IFIFO || type == S_IFCHR {
            kind = .stream
            mayBlock = true
        } else if (try? fd.seek(to: 0, whence: SEEK_CUR)) == nil {
            kind = .stream
        }
        let handle = OpenHandle(
            fd: fd, kind: kind, mayBlock: mayBlock, volatile: device.volatile, terminalModes: saved, export: export, path: path)
        // Waiting on a FIFO or terminal is emulated with poll, which the cancel signal interrupts; see `read`.
        if type == S_IFIFO || type == S_IFCHR { try fd.setNonBlocking() }
        if kind == .stream { openFlags.insert([.stream, .directIO]) }
        if device.volatile || (type == S_IFREG && info.st_size == 0 && flags & O_ACCMODE == O_RDONLY) {
            openFlags.insert(.directIO)
        }
        // A small file opened for reading comes with its contents: its first read needs no round trip.
        var prefetch = ByteBuffer()
        if kind == .file, !device.volatile, type == S_IFREG, flags & O_ACCMODE != O_WRONLY, flags & O_TRUNC == 0,
            info.st_size > 0, info.st_size <= QTFSLimits.maximumPrefetch
        {
            let size = Int(info.st_size)
            _ = try? prefetch.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
                try fd.read(at: 0, into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(size)))
            }
        }
        return .opened(handle: try session.add(handle), openFlags, QTFSAttributes(info, volatile: device.volatile), prefetch: prefetch)
    }

    private func read(_ handle: OpenHandle, offset: UInt64, size: Int, flags: Int32, _ cancellation: Cancellation) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(size)
        guard size > 0 else { return buffer }
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            let target = UnsafeMutableRawBufferPointer(rebasing: raw.prefix(size))
            switch handle.kind {
            case .file:
                var done = 0
                // Fill the request unless the file ends: a short read means end of file to the kernel.
                while done < size {
                    let count = try handle.fd.read(at: Int64(offset) + Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: target[done...]))
                    if count == 0 { break }
                    done += count
                }
                return done
            case .stream:
                return try streamTransfer(handle, flags, POLLIN, cancellation) { () throws(SystemError) -> Int in try handle.fd.readOnce(into: target) }
            case .directory:
                throw SystemError(.isDirectory, "read")
            }
        }
        return buffer
    }

    private func write(_ handle: OpenHandle, offset: UInt64, data: ByteBuffer, flags: Int32, _ cancellation: Cancellation) throws -> Int {
        try data.withUnsafeReadableBytes { raw in
            switch handle.kind {
            case .file:
                var done = 0
                while done < raw.count {
                    done += try handle.fd.write(at: Int64(offset) + Int64(done), from: UnsafeRawBufferPointer(rebasing: raw[done...]))
                }
                return done
            case .stream:
                var done = 0
                while done < raw.count {
                    let count = try streamTransfer(handle, flags, POLLOUT, cancellation) { () throws(SystemError) -> Int in
                        try handle.fd.writeOnce(UnsafeRawBufferPointer(rebasing: raw[done...]))
                    }
                    done += count
                    if flags & O_NONBLOCK != 0 { break }
                }
                return done
            case .directory:
                throw SystemError(.isDirectory, "write")
            }
        }
    }

    /// One read or write on a stream whose descriptor is non-blocking: a caller that did not ask for
    /// O_NONBLOCK waits for readiness with poll, which a cancel interrupts.
    private func streamTransfer(
        _ handle: OpenHandle, _ flags: Int32, _ event: Int32, _ cancellation: Cancellation, _ attempt: () throws(SystemError) -> Int
    ) throws(SystemError) -> Int {
        try cancellation.run { () throws(SystemError) -> Int in
            while true {
                do throws(SystemError) {
                    return try attempt()
                } catch where error.errno == .resourceTemporarilyUnavailable && flags & O_NONBLOCK == 0 {
                    var set = [pollfd(fd: handle.fd.rawValue, events: Int16(event), revents: 0)]
                    do throws(SystemError) {
                        _ = try DPUSystem.poll(&set, timeoutMilliseconds: -1)
                    } catch where error.errno == .interrupted {}
                } catch where error.errno == .interrupted {}
                if cancellation.isCancelled { throw SystemError(.interrupted, "interrupted by the client") }
            }
        }
    }

    private func link(_ path: QTFSPath, to newPath: [UInt8], _ session: EngineSession) throws -> QTFSAttributes {
        let destination = QTFSPath(export: path.export, path: newPath)
        let (export, directory, name) = try prepareChange(.create, destination, session)
        defer { directory.closeQuietly() }
        try checkNoGain(export, from: path.path, to: newPath)
        let source = try export.node(path.path)
        defer { source.closeQuietly() }
        try source.link(into: directory, as: name)
        return try attributes(of: name, in: directory)
    }

    private func rename(_ path: QTFSPath, to newPath: [UInt8], flags: UInt32, _ session: EngineSession) throws {
        // RENAME_NOREPLACE and RENAME_EXCHANGE; RENAME_WHITEOUT would create a character device.
        guard flags & ~UInt32(3) == 0 else { throw SystemError(.invalidArgument, "rename flags \(flags)") }
        let (export, from, fromName) = try prepareChange(.rename, path, session)
        defer { from.closeQuietly() }
        try check(.rename, export, newPath)
        try checkNoGain(export, from: path.path, to: newPath)
        if flags & 2 != 0 { try checkNoGain(export, from: newPath, to: path.path) }
        let (to, toName) = try export.parent(newPath)
        defer { to.closeQuietly() }
        try from.rename(fromName, to: to, toName, flags: flags)
    }
}


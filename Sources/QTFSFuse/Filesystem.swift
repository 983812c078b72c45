import CFuse3
import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import QTFS
import Rexec
import SystemPackage
import Synchronization

/// A file or directory the kernel opened: the engine's handle for it, on the connection it lives on.
/// When that connection is gone (the engine restarted), the file is opened again by path, so that a
/// reader or writer in the middle of its work goes on.
final class OpenFile: @unchecked Sendable {
    let node: UInt64
    /// open(2) flags to open it again with: no O_CREAT, O_EXCL or O_TRUNC any more.
    let flags: Int32
    let isDirectory: Bool
    let pollID: UInt64
    /// A cgroup's list of processes or threads: a rexec client's pid written to it is translated.
    let listsProcesses: Bool
    private let state: ConditionLock<(link: Link, handle: UInt64, waiters: [(Errno?) -> Void]?)>
    /// Directories: entries fetched ahead of the kernel's small readdir calls.
    let listing = Mutex(Listing())
    /// The kernel's poll handle to notify (fuse_pollhandle *), if it asked to be told.
    let pollHandle = Mutex<UInt?>(nil)
    /// The file's first bytes as the engine read them at open (the whole file when `complete`), for the
    /// first read; kept a moment only (what a read right after the open would have seen), dropped by a
    /// write through this file.
    let prefetch = Mutex<(data: ByteBuffer, complete: Bool, until: UInt64)?>(nil)

    init(node: UInt64, flags: Int32, isDirectory: Bool, link: Link, handle: UInt64, pollID: UInt64, listsProcesses: Bool = false) {
        self.node = node
        self.flags = flags & ~(O_CREAT | O_EXCL | O_TRUNC)
        self.isDirectory = isDirectory
        self.pollID = pollID
        self.listsProcesses = listsProcesses
        state = ConditionLock((link, handle, nil))
    }

    var current: (link: Link, handle: UInt64) { state.withLock { ($0.link, $0.handle) } }

    /// Starts a reopen unless one is running; false if `body` was queued behind a running one (or the
    /// file was already reopened since `stale`, in which case `body` is called at once).
    func joinReopen(stale: Link, _ body: @escaping (Errno?) -> Void) -> Bool {
        let action = state.withLock { state -> Int in
            if state.link != stale { return 0 }
            if state.waiters != nil {
                state.waiters!.append(body)
                return 1
            }
            state.waiters = [body]
            return 2
        }
        if action == 0 { body(nil) }
        return action == 2
    }

    func reopened(_ result: Result<(Link, UInt64), Errno>) {
        let waiters = state.withLock { state -> [(Errno?) -> Void] in
            if case .success(let (link, handle)) = result {
                state.link = link
                state.handle = handle
            }
            defer { state.waiters = nil }
            return state.waiters ?? []
        }
        let error: Errno? = if case .failure(let error) = result { error } else { nil }
        for waiter in waiters { waiter(error) }
    }
}

/// Directory entries of one batch and where they continue.
struct Listing: Sendable {
    /// The cookie the batch was asked from.
    var start: UInt64 = 0
    var entries: [QTFSDirectoryEntry] = []
    var end = false
    var loaded = false
    /// Where the last answer stopped: the index of the next entry, and the cookie the kernel will ask
    /// for it with.
    var resume: (index: Int, cookie: UInt64)?
    /// The change count when the batch was asked for (see `QTFSFilesystem.changes`).
    var version: UInt64 = 0
    /// When it was asked for (monotonic ns): what it says is trusted for the timeouts from then.
    var asked: UInt64 = 0
}

/// The FUSE file system: every kernel request becomes an engine request, answered from the connection's
/// reader thread when the engine replies (FUSE workers never wait for the network).
final class QTFSFilesystem: @unchecked Sendable {
    let client: EngineClient
    let options: QTFSMountOptions
    let nodes = NodeTable()
    let local: LocalProcesses?
    /// The DPU's processes (for every mount: who wrote a pid into a cgroup).
    let processes: LocalProcesses
    /// Cgroup placements waiting for a DPU process to become a rexec client.
    private(set) var placements: DeferredPlacements!
    let logger: Logger
    /// The device of the export root on the host: its files keep their host inode numbers.
    let rootDevice: UInt64
    private let interrupts = Mutex((next: UInt64(1), requests: [UInt64: Outgoing]()))
    private let polls = Mutex([UInt64: OpenFile]())
    /// Open files by node: a file unlinked while open has no path any more, but fstat(2) still asks
    /// for its attributes by node (the kernel sends no handle with GETATTR); its handle answers.
    private let openFiles = Mutex([UInt64: [ObjectIdentifier: OpenFile]]())
    /// Host unix sockets made connectable here (nil with `nosockets`).
    let sockets: SocketNodes?
    /// Host ptys shown as links to local terminals relayed to them (nil without `ptybridge`).
    private(set) var terminals: TerminalBridges?
    /// Attributes of socket nodes, for the MKNOD that binds them.
    private let socketAttributes = Mutex([UInt64: QTFSAttributes]())
    private let nextPollID = Atomic<UInt64>(1)
    /// Listings of subdirectories fetched ahead of a walk.
    let prefetch: ListingPrefetch
    /// Which extended attributes travel (`acl`, `seclabel`).
    let xattrPolicy: ExtendedAttributePolicy

    init(client: EngineClient, options: QTFSMountOptions, local: LocalProcesses?, processes: LocalProcesses, logger: Logger) throws {
        self.client = client
        self.options = options
        self.local = local
        self.processes = processes
        self.logger = logger
        prefetch = ListingPrefetch(capacity: options.prefetch)
        xattrPolicy = ExtendedAttributePolicy(acl: options.carryACLs, securityLabels: options.carrySecurityLabels)
        rootDevice = client.export?.root.device ?? 0
        sockets = options.sockets && !options.proc
            ? try SocketNodes(
                mountpoint: options.mountpoint, hostPath: Array(options.hostPath.utf8), control: options.udsproxyControl,
                logger: logger)
            : nil
        if options.ptyBridge {
            terminals = try TerminalBridges(
                mountpoint: options.mountpoint, hostPath: options.hostPath, client: client, logger: logger,
                isHiddenDirectory: { [nodes] info in
                    let inode = UInt64(info.st_ino)
                    return inode >> 48 == 0xffff && nodes.node(inode & 0xffff_ffff_ffff)?.kind == .synthetic(.terminalDirectory)
                })
        }
        client.pollReady.withLock { $0 = { [weak self] id in self?.pollReady(id) } }
        sockets?.pathOf = { [nodes] node in nodes.path(node) }
        let directory = options.rexecPidDirectory
        placements = DeferredPlacements(
            logger: logger, remote: { RexecPidMap.remotePID(of: $0, directory: directory) },
            identity: { [processes] in processes.identity($0) },
            place: { [weak self] pid, remote, paths, done in
                guard let self else { return done() }
                place(pid, remote: remote, in: paths, done: done)
            })
    }

    /// Attributes of entries a directory listing brought, for the lookups that follow (`ls -l`, `tar`):
    /// answered here for the entry timeout, as the kernel would have from a READDIRPLUS it keeps. The
    /// kernel asks READDIRPLUS only for a directory's first batch, so without this every other entry
    /// would cost a round trip. Anything this client changes is dropped from it.
    private let recent = Mutex([NodeTable.Dentry: (attributes: QTFSAttributes, until: UInt64)]())
    private var cachesListings: Bool { !options.proc && options.entryTimeout > 0 }
    /// Bumped by every change made here. An answer is cached only if no change happened since its request
    /// went out: a reply that raced with a change (a GETATTR answered just before a MKDIR in the same
    /// directory) must not be remembered as current.
    private let changes = Atomic<UInt64>(0)
    private var version: UInt64 { changes.load(ordering: .acquiring) }

    /// How attributes asked for at `since` (version) and `asked` (monotonic ns, default now) are kept
    /// with their node, for the GETATTRs within the attribute timeout that the kernel sends anyway (after
    /// every read it forgets the access time): nil if they are not.
    private func keep(_ a: QTFSAttributes? = nil, since: UInt64, asked: UInt64? = nil) -> NodeTable.Keep? {
        guard !options.proc, !(a?.flags.contains(.volatile) ?? false), options.attributeTimeout > 0 else { return nil }
        let until = (asked ?? monotonicNanoseconds()) + UInt64(options.attributeTimeout * 1_000_000_000)
        return NodeTable.Keep(until: until, current: { [self] in version == since })
    }

    /// What an OPEN or CREATE said of the file's extended attributes: none means the writes that follow
    /// need not ask the host for a capability.
    private func noteExtendedAttributes(_ a: QTFSAttributes, of node: UInt64, since: UInt64) {
        guard a.flags.contains(.noExtendedAttributes), let keep = keep(a, since: since) else { return }
        nodes.noteNoCapability(node, keep)
    }

    /// The attributes of `node` if known and how much longer (seconds) they may be trusted.
    private func recentAttributes(of node: UInt64) -> (QTFSAttributes, remaining: Double)? {
        let now = monotonicNanoseconds()
        guard let (a, until) = nodes.recentAttributes(of: node, now: now) else { return nil }
        return (a, Double(until - now) / 1e9)
    }

    private func remember(listing entries: [QTFSDirectoryEntry], in directory: UInt64, since: UInt64, asked: UInt64) {
        guard cachesListings else { return }
        let until = asked + UInt64(options.entryTimeout * 1_000_000_000)
        recent.withLock { cache in
            guard version == since else { return }
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            for entry in entries where entry.name != [46] && entry.name != [46, 46] {
                guard let a = entry.attributes, !a.flags.contains(.volatile) else { continue }
                cache[NodeTable.Dentry(parent: directory, name: entry.name)] = (a, until)
            }
        }
    }

    /// What a listing said of `name` in `parent`, and when it was asked for.
    private func recentEntry(_ parent: UInt64, _ name: [UInt8]) -> (QTFSAttributes, asked: UInt64)? {
        guard cachesListings else { return nil }
        let now = monotonicNanoseconds()
        return recent.withLock { cache -> (QTFSAttributes, asked: UInt64)? in
            let key = NodeTable.Dentry(parent: parent, name: name)
            guard let (a, until) = cache[key] else { return nil }
            guard now < until else {
                cache[key] = nil
                return nil
            }
            return (a, until &- UInt64(options.entryTimeout * 1_000_000_000))
        }
    }

    /// `name` in `parent` changed here: a listing's word about it no longer holds.
    private func forgetRecent(_ parent: UInt64, _ name: [UInt8]) {
        changes.add(1, ordering: .releasing)
        guard cachesListings else { return }
        recent.withLock { _ = $0.removeValue(forKey: NodeTable.Dentry(parent: parent, name: name)) }
    }

    /// The file `node` changed here (attributes, size, extended attributes): forget what was said of it.
    private func forgetRecent(node: UInt64, keepingCapability: Bool = false) {
        changes.add(1, ordering: .releasing)
        let names = nodes.forgetAttributes(of: node, keepingCapability: keepingCapability)
        guard cachesListings, !names.isEmpty else { return }
        recent.withLock { cache in for name in names { cache[name] = nil } }
    }

    /// Set by the session once mounted: the connection's number (its device's minor).
    let connection = Mutex<String?>(nil)

    /// Sets the mount's readahead (`readahead=KB`) in sysfs, a moment after INIT was answered.
    func raiseReadAhead() {
        guard let connection = connection.withLock({ $0 }), !options.proc else { return }
        let kilobytes = options.readAheadKB
        try? OSThread.start(name: "qtfs-readahead") { [logger] in
            usleep(100_000)
            let path = "/sys/class/bdi/0:\(connection)/read_ahead_kb"
            do {
                let fd = try FileDescriptor.openPath(path, flags: O_WRONLY)
                defer { fd.closeQuietly() }
                _ = try Array("\(kilobytes)\n".utf8).withUnsafeBytes { try fd.writeOnce($0) }
            } catch {
                logger.debug("cannot set the readahead: \(error)")
            }
        }
    }

    // MARK: Plumbing

    /// The one file system of this process, for the interrupt callback (which gets no user data of ours).
    nonisolated(unsafe) static var current: QTFSFilesystem?

    /// Sends a request for kernel request `req`, which may interrupt it (the engine is then told to give
    /// up, and a request still waiting for a connection fails with EINTR).
    private func send(
        _ req: fuse_req_t, _ operation: QTFSOperation, pinned: Link? = nil, retry: Retry? = nil,
        _ encode: @escaping (Link) -> QTFSRequest?, _ done: @escaping (Result<QTFSReply, Errno>, Link?) -> Void
    ) {
        let token = interrupts.withLock { state -> UInt64 in
            state.next += 1
            return state.next
        }
        let request = Outgoing(operation, pinned: pinned, retry: retry, encode: encode) { [self] result, link in
            interrupts.withLock { _ = $0.requests.removeValue(forKey: token) }
            done(result, link)
        }
        interrupts.withLock { $0.requests[token] = request }
        fuse_req_interrupt_func(req, { _, data in
            guard let filesystem = QTFSFilesystem.current, let data else { return }
            let token = UInt64(UInt(bitPattern: data))
            if let request = filesystem.interrupts.withLock({ $0.requests[token] }) { filesystem.client.cancel(request) }
        }, UnsafeMutableRawPointer(bitPattern: UInt(token)))
        client.send(request)
    }

    /// A request about paths (no handle).
    private func call(
        _ req: fuse_req_t, _ operation: QTFSOperation, retry: Retry? = nil, _ encode: @escaping (Link) -> QTFSRequest?,
        _ done: @escaping (Result<QTFSReply, Errno>) -> Void
    ) {
        send(req, operation, retry: retry, encode) { result, _ in done(result) }
    }

    /// A request on an open file's handle; if the handle died with its connection, the file is opened
    /// again by path and the request repeated.
    private func withHandle(
        _ req: fuse_req_t, _ file: OpenFile, _ operation: QTFSOperation, retry: Retry = .resend, attempt: Int = 0,
        _ encode: @escaping (UInt64) -> QTFSRequest, _ done: @escaping (Result<QTFSReply, Errno>) -> Void
    ) {
        let (link, handle) = file.current
        if handle == 0 {
            // A directory opened from a listing fetched ahead: it has no handle on the host yet.
            guard attempt < 3 else { return done(.failure(.ioError)) }
            return reopen(file, stale: link) { [self] error in
                if let error { return done(.failure(error == .staleNFSFileHandle ? .ioError : error)) }
                withHandle(req, file, operation, retry: retry, attempt: attempt + 1, encode, done)
            }
        }
        send(req, operation, pinned: link, retry: retry, { _ in encode(handle) }) { [self] result, _ in
            guard case .failure(.staleNFSFileHandle) = result, attempt < 3 else { return done(result) }
            reopen(file, stale: link) { [self] error in
                if let error { return done(.failure(error == .staleNFSFileHandle ? .ioError : error)) }
                withHandle(req, file, operation, retry: retry, attempt: attempt + 1, encode, done)
            }
        }
    }

    private func reopen(_ file: OpenFile, stale: Link, _ then: @escaping (Errno?) -> Void) {
        guard file.joinReopen(stale: stale, then) else { return }
        guard let path = nodes.path(file.node) else { return file.reopened(.failure(.staleNFSFileHandle)) }
        let flags = UInt32(bitPattern: file.flags)
        let isDirectory = file.isDirectory
        client.send(Outgoing(isDirectory ? .opendir : .open, retry: .resend, encode: { link in
            let target = QTFSPath(export: link.export, path: path)
            return isDirectory ? .opendir(target) : .open(target, flags: flags)
        }) { result, link in
            switch (result, link) {
            case (.success(.opened(let handle, _, _, _)), let link?), (.success(.directory(let handle, _, _)), let link?):
                file.reopened(.success((link, handle)))
            case (.failure(let error), _):
                file.reopened(.failure(error))
            default:
                file.reopened(.failure(.ioError))
            }
        })
    }

    // MARK: Attributes

    func stat(_ a: QTFSAttributes, node: UInt64) -> Glibc.stat {
        var s = Glibc.stat()
        // One st_dev for the whole mount: files of other host file systems (mounts below the export) get
        // their inode number mixed with their device so that two of them never look like one file.
        s.st_ino = UInt(a.device == rootDevice ? a.inode : a.inode ^ (a.device &* 0x9E37_79B9_7F4A_7C15))
        // A host FIFO is shown as a regular file: an S_IFIFO inode would be a pipe of the DPU's kernel,
        // and nothing would reach the host. As a file with direct I/O its reads, writes and polls are
        // carried (`test -p` is the visible difference; `-o localfifo` keeps the type).
        s.st_mode = a.mode & 0o170000 == 0o010000 && !options.localFIFOs ? (a.mode & 0o7777) | 0o100000 : a.mode
        if terminals != nil && TerminalBridges.presents(a) {
            // A host pty with `-o ptybridge`: a link to a local terminal relayed to it (`TerminalBridges`).
            s.st_mode = S_IFLNK | 0o777
            s.st_rdev = 0
        }
        s.st_nlink = UInt(a.linkCount)
        s.st_uid = a.uid
        s.st_gid = a.gid
        s.st_rdev = UInt(a.rdev)
        s.st_size = Int(clamping: a.size)
        s.st_blocks = Int(clamping: a.blocks)
        s.st_blksize = Int(a.blockSize)
        s.st_atim = timespec(tv_sec: Int(a.accessTime.seconds), tv_nsec: Int(a.accessTime.nanoseconds))
        s.st_mtim = timespec(tv_sec: Int(a.modificationTime.seconds), tv_nsec: Int(a.modificationTime.nanoseconds))
        s.st_ctim = timespec(tv_sec: Int(a.changeTime.seconds), tv_nsec: Int(a.changeTime.nanoseconds))
        return s
    }

    /// How long the kernel may trust an answer about `a`: never for proc mode and pseudo files.
    func timeouts(_ a: QTFSAttributes?) -> (entry: Double, attributes: Double) {
        if options.proc || a?.flags.contains(.volatile) == true { return (0, 0) }
        return (options.entryTimeout, options.attributeTimeout)
    }

    private func entry(_ id: UInt64, _ a: QTFSAttributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = id
        e.generation = 0
        e.attr = stat(a, node: id)
        (e.entry_timeout, e.attr_timeout) = timeouts(a)
        return e
    }

    private func replyEntry(
        _ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ a: QTFSAttributes, since: UInt64,
        alias: (pid: Int32, hostName: [UInt8])? = nil, asked: UInt64? = nil
    ) {
        let id = nodes.remember(parent, name, a, alias: alias, keep: keep(a, since: since, asked: asked))
        let reply = { [self] in
            var e = entry(id, a)
            if let asked {
                let age = Double(monotonicNanoseconds() &- asked) / 1e9
                e.entry_timeout = max(0, e.entry_timeout - age)
                e.attr_timeout = max(0, e.attr_timeout - age)
            }
            // If the kernel no longer wants the answer (interrupted), it holds no reference: drop ours.
            if fuse_reply_entry(req, &e) != 0 { nodes.forget(id, 1) }
        }
        guard a.mode & 0o170000 == 0o140000, let sockets, let path = nodes.path(id) else { return reply() }
        socketAttributes.withLock { $0[id] = a }
        // A host socket: listen for it, before the caller (about to connect, likely) gets the entry.
        sockets.ensureListener(id, path: path, reply)
    }

    private func replyAttributes(_ req: fuse_req_t, _ node: UInt64, _ a: QTFSAttributes, since: UInt64) {
        if let keep = keep(a, since: since) { nodes.keep(a, of: node, keep) }
        var s = stat(a, node: node)
        fuse_reply_attr(req, &s, timeouts(a).attributes)
    }

    /// Attributes of a node the client made up: a link (proc mode), the hidden socket directory or the
    /// hidden terminal directory.
    private func synthetic(_ id: UInt64, _ kind: NodeTable.Synthetic) -> QTFSAttributes {
        let mode: UInt32 = switch kind {
        case .socketDirectory: 0o040700
        case .terminalDirectory: 0o040755
        default: 0o120777
        }
        return QTFSAttributes(
            device: rootDevice, inode: 0xffff_0000_0000_0000 | id, mode: mode, linkCount: kind.isDirectory ? 2 : 1,
            size: 16)
    }

    private func path(_ req: fuse_req_t, _ node: UInt64) -> [UInt8]? {
        if let path = nodes.path(node) { return path }
        fuse_reply_err(req, ESTALE)
        return nil
    }

    private func path(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8]) -> [UInt8]? {
        if let problem = QTFSPath.nameProblem(name) {
            _ = problem
            fuse_reply_err(req, name.count > QTFSLimits.maximumName ? ENAMETOOLONG : EINVAL)
            return nil
        }
        if let path = nodes.path(parent, name) { return path }
        fuse_reply_err(req, ESTALE)
        return nil
    }

    private func fail(_ req: fuse_req_t, _ result: Result<QTFSReply, Errno>) {
        if case .failure(let error) = result {
            fuse_reply_err(req, error.rawValue)
        } else {
            fuse_reply_err(req, EIO)
        }
    }

    private func owner(_ req: fuse_req_t) -> QTFSOwner {
        guard let context = fuse_req_ctx(req) else { return .root }
        return QTFSOwner(uid: context.pointee.uid, gid: context.pointee.gid)
    }

    // MARK: Names

    func lookup(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8]) {
        let since = version
        if let local, parent == NodeTable.rootID {
            if let fixed = LocalProcesses.fixedName(name) { return replySynthetic(req, parent, name, fixed) }
            if let pid = LocalProcesses.pid(name), let caller = fuse_req_ctx(req)?.pointee.pid {
                switch local.decide(pid, caller: caller) {
                case .local: return replySynthetic(req, parent, name, .localProcess(pid))
                case .standIn(let remote):
                    let hostName = Array("\(remote)".utf8)
                    return call(req, .lookup, { .lookup(QTFSPath(export: $0.export, path: hostName)) }) { [self] result in
                        guard case .success(.attributes(let a)) = result else { return fail(req, result) }
                        replyEntry(req, parent, name, a, since: since, alias: (pid, hostName))
                    }
                case .host: break
                case .hostThenLocal:
                    guard let path = path(req, parent, name) else { return }
                    return call(req, .lookup, { .lookup(QTFSPath(export: $0.export, path: path)) }) { [self] result in
                        switch result {
                        case .success(.attributes(let a)): replyEntry(req, parent, name, a, since: since)
                        case .failure(.noSuchFileOrDirectory): replySynthetic(req, parent, name, .localProcess(pid))
                        default: fail(req, result)
                        }
                    }
                }
            }
        }
        if let sockets {
            if parent == NodeTable.rootID && name == sockets.directoryName {
                return replySynthetic(req, parent, name, .socketDirectory)
            }
            // Nothing is ever found in the hidden directory: binding there must not find an entry.
            if case .synthetic(.socketDirectory) = nodes.node(parent)?.kind { return _ = fuse_reply_err(req, ENOENT) }
        }
        if terminals != nil {
            // Where the local terminals' devpts is mounted (the kernel looks no further once it is).
            if parent == NodeTable.rootID && name == TerminalBridges.directoryName {
                return replySynthetic(req, parent, name, .terminalDirectory)
            }
            if case .synthetic(.terminalDirectory) = nodes.node(parent)?.kind { return _ = fuse_reply_err(req, ENOENT) }
        }
        // The kernel may keep it for what is left of the timeout, not for a whole one more.
        if let (a, asked) = recentEntry(parent, name) { return replyEntry(req, parent, name, a, since: since, asked: asked) }
        guard let path = path(req, parent, name) else { return }
        call(req, .lookup, { .lookup(QTFSPath(export: $0.export, path: path)) }) { [self] result in
            if case .failure(.noSuchFileOrDirectory) = result, let sockets, let gone = nodes.child(parent, name) {
                sockets.close(gone)
            }
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyEntry(req, parent, name, a, since: since)
        }
    }

    private func replySynthetic(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ kind: NodeTable.Synthetic) {
        let id = nodes.rememberSynthetic(parent, name, kind)
        var e = fuse_entry_param()
        e.ino = id
        e.attr = stat(synthetic(id, kind), node: id)
        if fuse_reply_entry(req, &e) != 0 { nodes.forget(id, 1) }
    }

    func forget(_ node: UInt64, _ count: UInt64) { nodes.forget(node, count) }

    func getattr(_ req: fuse_req_t, _ node: UInt64, _ file: OpenFile?) {
        let since = version
        if case .synthetic(let kind) = nodes.node(node)?.kind {
            var s = stat(synthetic(node, kind), node: node)
            return _ = fuse_reply_attr(req, &s, 0)
        }
        if let file = file ?? (nodes.path(node) == nil ? openFiles.withLock({ $0[node]?.values.first }) : nil) {
            return withHandle(req, file, .getattr, { .getattr(.handle($0)) }) { [self] result in
                guard case .success(.attributes(let a)) = result else { return fail(req, result) }
                replyAttributes(req, node, a, since: since)
            }
        }
        if let (a, remaining) = recentAttributes(of: node) {
            var s = stat(a, node: node)
            return _ = fuse_reply_attr(req, &s, min(timeouts(a).attributes, remaining))
        }
        guard let path = path(req, node) else { return }
        call(req, .getattr, { .getattr(.path(QTFSPath(export: $0.export, path: path))) }) { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyAttributes(req, node, a, since: since)
        }
    }

    func setattr(_ req: fuse_req_t, _ node: UInt64, _ attr: Glibc.stat, _ set: Int32, _ file: OpenFile?) {
        forgetRecent(node: node)
        file?.prefetch.withLock { $0 = nil }
        let since = version
        var fields: QTFSSetAttributes.Fields = []
        var changes = QTFSSetAttributes(fields: [])
        if set & FUSE_SET_ATTR_MODE != 0 { fields.insert(.mode); changes.mode = attr.st_mode }
        if set & FUSE_SET_ATTR_UID != 0 { fields.insert(.uid); changes.uid = attr.st_uid }
        if set & FUSE_SET_ATTR_GID != 0 { fields.insert(.gid); changes.gid = attr.st_gid }
        if set & FUSE_SET_ATTR_SIZE != 0 { fields.insert(.size); changes.size = UInt64(max(attr.st_size, 0)) }
        if set & FUSE_SET_ATTR_ATIME_NOW != 0 {
            fields.insert(.accessTimeNow)
        } else if set & FUSE_SET_ATTR_ATIME != 0 {
            fields.insert(.accessTime)
            changes.accessTime = QTFSTime(seconds: Int64(attr.st_atim.tv_sec), nanoseconds: UInt32(attr.st_atim.tv_nsec))
        }
        if set & FUSE_SET_ATTR_MTIME_NOW != 0 {
            fields.insert(.modificationTimeNow)
        } else if set & FUSE_SET_ATTR_MTIME != 0 {
            fields.insert(.modificationTime)
            changes.modificationTime = QTFSTime(seconds: Int64(attr.st_mtim.tv_sec), nanoseconds: UInt32(attr.st_mtim.tv_nsec))
        }
        changes.fields = fields
        let reply: (Result<QTFSReply, Errno>) -> Void = { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyAttributes(req, node, a, since: since)
        }
        if let file, !file.isDirectory {
            return withHandle(req, file, .setattr, retry: .fail, { .setattr(.handle($0), changes) }, reply)
        }
        guard let path = path(req, node) else { return }
        call(req, .setattr, { .setattr(.path(QTFSPath(export: $0.export, path: path)), changes) }, reply)
    }

    func readlink(_ req: fuse_req_t, _ node: UInt64) {
        if case .synthetic(let kind) = nodes.node(node)?.kind, let local {
            let caller = fuse_req_ctx(req)?.pointee.pid ?? getpid()
            var target = local.target(of: kind, caller: caller)
            target.append(0)
            return _ = target.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { fuse_reply_readlink(req, $0.baseAddress) } }
        }
        if let terminals, nodes.node(node)?.type == 0o020000 {
            // A host pty (`-o ptybridge`): still one now? Then the link to its local terminal.
            guard let path = path(req, node) else { return }
            return call(req, .getattr, { .getattr(.path(QTFSPath(export: $0.export, path: path))) }) { [self] result in
                guard case .success(.attributes(let a)) = result else { return fail(req, result) }
                guard TerminalBridges.presents(a) else { return _ = fuse_reply_err(req, EINVAL) }
                terminals.target(for: path, host: a) { result in
                    guard case .success(var target) = result else {
                        if case .failure(let error) = result { fuse_reply_err(req, error.rawValue) }
                        return
                    }
                    target.append(0)
                    _ = target.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { fuse_reply_readlink(req, $0.baseAddress) } }
                }
            }
        }
        guard let path = path(req, node) else { return }
        call(req, .readlink, { .readlink(QTFSPath(export: $0.export, path: path)) }) { [self] result in
            guard case .success(.linkTarget(var target)) = result else { return fail(req, result) }
            target.append(0)
            _ = target.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { fuse_reply_readlink(req, $0.baseAddress) } }
        }
    }

    func mknod(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ mode: mode_t, _ device: dev_t) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        let since = version
        if case .synthetic(.socketDirectory) = nodes.node(parent)?.kind {
            // Only our binder may bind here, and only the node it is binding: answer with that node.
            guard mode & S_IFMT == S_IFSOCK, let sockets, let caller = fuse_req_ctx(req)?.pointee.pid,
                let node = sockets.claim(name, caller: caller), let a = socketAttributes.withLock({ $0[node] })
            else { return _ = fuse_reply_err(req, EACCES) }
            nodes.addReference(node)
            var e = entry(node, a)
            if fuse_reply_entry(req, &e) != 0 { nodes.forget(node, 1) }
            return
        }
        guard let path = path(req, parent, name) else { return }
        let owner = owner(req)
        call(req, .mknod, { .mknod(QTFSPath(export: $0.export, path: path), mode: UInt32(mode), owner: owner) }) { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            if a.mode & 0o170000 == 0o140000 {
                // A DPU process is binding a socket here: it is the DPU's, not one to relay to the host.
                let id = nodes.remember(parent, name, a)
                sockets?.boundLocally(id)
                var e = entry(id, a)
                if fuse_reply_entry(req, &e) != 0 { nodes.forget(id, 1) }
                return
            }
            guard a.mode & 0o170000 == 0o010000, !options.localFIFOs else { return replyEntry(req, parent, name, a, since: since) }
            // The kernel insists that mkfifo makes a FIFO: answer with one, valid for no time, so that the
            // next lookup finds the carried (regular-looking) file.
            let id = nodes.remember(parent, name, a)
            var e = entry(id, a)
            e.attr.st_mode = mode_t(a.mode)
            e.entry_timeout = 0
            e.attr_timeout = 0
            if fuse_reply_entry(req, &e) != 0 { nodes.forget(id, 1) }
        }
    }

    func mkdir(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ mode: mode_t) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        let since = version
        guard let path = path(req, parent, name) else { return }
        let owner = owner(req)
        call(req, .mkdir, { .mkdir(QTFSPath(export: $0.export, path: path), mode: UInt32(mode), owner: owner) }) { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyEntry(req, parent, name, a, since: since)
        }
    }

    func symlink(_ req: fuse_req_t, _ target: [UInt8], _ parent: UInt64, _ name: [UInt8]) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        let since = version
        guard let path = path(req, parent, name) else { return }
        let owner = owner(req)
        call(req, .symlink, { .symlink(QTFSPath(export: $0.export, path: path), target: target, owner: owner) }) { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyEntry(req, parent, name, a, since: since)
        }
    }

    func link(_ req: fuse_req_t, _ node: UInt64, _ parent: UInt64, _ name: [UInt8]) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        forgetRecent(node: node)
        let since = version
        guard let source = path(req, node), let path = path(req, parent, name) else { return }
        call(req, .link, { .link(QTFSPath(export: $0.export, path: source), newPath: path) }) { [self] result in
            guard case .success(.attributes(let a)) = result else { return fail(req, result) }
            replyEntry(req, parent, name, a, since: since)
        }
    }

    func remove(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], directory: Bool) {
        if let node = nodes.child(parent, name) { forgetRecent(node: node) }
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        guard let path = path(req, parent, name) else { return }
        call(req, directory ? .rmdir : .unlink, { link in
            let target = QTFSPath(export: link.export, path: path)
            return directory ? .rmdir(target) : .unlink(target)
        }) { [self] result in
            guard case .success = result else { return fail(req, result) }
            nodes.removed(parent, name)
            fuse_reply_err(req, 0)
        }
    }

    func rename(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ newParent: UInt64, _ newName: [UInt8], _ flags: UInt32) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        forgetRecent(newParent, newName)
        forgetRecent(node: newParent)
        guard let from = path(req, parent, name), let to = path(req, newParent, newName) else { return }
        call(req, .rename, { .rename(QTFSPath(export: $0.export, path: from), newPath: to, flags: flags) }) { [self] result in
            guard case .success = result else { return fail(req, result) }
            nodes.renamed(parent, name, to: newParent, newName, exchange: flags & 2 != 0)
            fuse_reply_err(req, 0)
        }
    }

    // MARK: Files

    private func install(_ fi: inout fuse_file_info, _ file: OpenFile, _ flags: QTFSOpenFlags, _ a: QTFSAttributes) {
        openFiles.withLock { $0[file.node, default: [:]][ObjectIdentifier(file)] = file }
        fi.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(file).toOpaque()))
        let direct = flags.contains(.directIO) || a.flags.contains(.volatile) || options.proc
        fi.direct_io = direct ? 1 : 0
        fi.keep_cache = direct ? 0 : 1
        fi.nonseekable = flags.contains(.stream) ? 1 : 0
        // Every write reached the host when it returned: close need not send FLUSH.
        fi.noflush = 1
    }

    /// The libfuse session, for notifications (set once mounted).
    nonisolated(unsafe) var session: OpaquePointer?

    /// Puts a small file's contents, read by the engine at open, into the kernel's page cache: its reads
    /// then cost nothing at all.
    private func store(_ data: ByteBuffer, in node: UInt64) {
        guard let session, data.readableBytes > 0 else { return }
        data.withUnsafeReadableBytes { raw in
            var vector = fuse_bufvec()
            vector.count = 1
            vector.buf.size = raw.count
            vector.buf.mem = UnsafeMutableRawPointer(mutating: raw.baseAddress)
            vector.buf.fd = -1
            _ = fuse_lowlevel_notify_store(session, node, 0, &vector, fuse_buf_copy_flags(rawValue: 0))
        }
    }

    static func file(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> OpenFile? {
        guard let fi, fi.pointee.fh != 0, let pointer = UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh)) else { return nil }
        return Unmanaged<OpenFile>.fromOpaque(pointer).takeUnretainedValue()
    }

    func open(_ req: fuse_req_t, _ node: UInt64, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        guard let path = path(req, node) else { return }
        let flags = fi.pointee.flags
        // libfuse's fuse_file_info is on the calling thread's stack, gone once this returns: the answer,
        // which comes later from another thread, fills in a copy.
        let request = fi.pointee
        let since = version
        send(req, .open, { .open(QTFSPath(export: $0.export, path: path), flags: UInt32(bitPattern: flags)) }) {
            [self] result, link in
            guard case .success(.opened(let handle, let openFlags, let a, let prefetch)) = result, let link else {
                return fail(req, result)
            }
            noteExtendedAttributes(a, of: node, since: since)
            let file = OpenFile(
                node: node, flags: flags, isDirectory: false, link: link, handle: handle,
                pollID: nextPollID.add(1, ordering: .relaxed).oldValue,
                listsProcesses: a.flags.contains(.volatile) && nodes.node(node)?.names.contains {
                    QTFSFilesystem.processLists.contains($0.name)
                } == true)
            var info = request
            install(&info, file, openFlags, a)
            if prefetch.readableBytes > 0 {
                file.prefetch.withLock {
                    $0 = (prefetch, UInt64(prefetch.readableBytes) == a.size, monotonicNanoseconds() + 1_000_000_000)
                }
                if info.keep_cache == 1 { store(prefetch, in: node) }
            }
            if fuse_reply_open(req, &info) != 0 { release(Unmanaged<OpenFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(info.fh))!).takeRetainedValue()) }
        }
    }

    func create(_ req: fuse_req_t, _ parent: UInt64, _ name: [UInt8], _ mode: mode_t, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        forgetRecent(parent, name)
        forgetRecent(node: parent)
        guard let path = path(req, parent, name) else { return }
        let flags = fi.pointee.flags
        let owner = owner(req)
        // libfuse's fuse_file_info is on the calling thread's stack, gone once this returns: the answer,
        // which comes later from another thread, fills in a copy.
        let request = fi.pointee
        let since = version
        send(req, .create, {
            .create(QTFSPath(export: $0.export, path: path), flags: UInt32(bitPattern: flags), mode: UInt32(mode), owner: owner)
        }) { [self] result, link in
            guard case .success(.opened(let handle, let openFlags, let a, _)) = result, let link else { return fail(req, result) }
            let id = nodes.remember(parent, name, a)
            noteExtendedAttributes(a, of: id, since: since)
            let file = OpenFile(
                node: id, flags: flags, isDirectory: false, link: link, handle: handle,
                pollID: nextPollID.add(1, ordering: .relaxed).oldValue)
            var info = request
            install(&info, file, openFlags, a)
            var e = entry(id, a)
            if fuse_reply_create(req, &e, &info) != 0 {
                nodes.forget(id, 1)
                release(Unmanaged<OpenFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(info.fh))!).takeRetainedValue())
            }
        }
    }

    func read(_ req: fuse_req_t, _ file: OpenFile, _ size: Int, _ offset: Int, _ flags: Int32) {
        if let (data, complete, until) = file.prefetch.withLock({ $0 }), monotonicNanoseconds() < until,
            offset >= 0, offset <= data.readableBytes, offset + size <= data.readableBytes || complete
        {
            let count = min(size, data.readableBytes - offset)
            return data.withUnsafeReadableBytes { raw in
                _ = fuse_reply_buf(req, raw.baseAddress.map { ($0 + offset).assumingMemoryBound(to: CChar.self) }, count)
            }
        }
        let size = UInt32(min(size, QTFSLimits.maximumIO))
        withHandle(req, file, .read, { .read(handle: $0, offset: UInt64(max(offset, 0)), size: size, flags: UInt32(bitPattern: flags)) }) {
            [self] result in
            guard case .success(.data(let data)) = result else { return fail(req, result) }
            data.withUnsafeReadableBytes { raw in
                _ = fuse_reply_buf(req, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
            }
        }
    }

    func write(_ req: fuse_req_t, _ file: OpenFile, _ data: ByteBuffer, _ offset: Int, _ flags: Int32) {
        file.prefetch.withLock { $0 = nil }
        // A write changes size and times, not extended attributes (removing a capability is a REMOVEXATTR).
        forgetRecent(node: file.node, keepingCapability: true)
        let written = data.readableBytes
        let send = { [self] (data: ByteBuffer) in
            let sent = data.readableBytes
            withHandle(req, file, .write, { .write(handle: $0, offset: UInt64(max(offset, 0)), flags: UInt32(bitPattern: flags), data: data) }) {
                [self] result in
                guard case .success(.written(let count)) = result else { return fail(req, result) }
                // The caller wrote its own number: all of it went when the translated one did.
                fuse_reply_write(req, sent != written && Int(count) == sent ? written : Int(count))
            }
        }
        guard file.listsProcesses else { return send(data) }
        let caller = fuse_req_ctx(req)?.pointee.pid ?? 0
        let directory = options.rexecPidDirectory
        switch ProcessListWrite.decide(
            data, remote: { RexecPidMap.remotePID(of: $0, directory: directory) },
            own: { [processes] in caller > 0 && processes.isOwn($0, caller: caller) })
        {
        case .asIs:
            send(data)
        case .translated(let pid, let translated):
            // After the placements recorded while it was not a stand-in yet, or this one could be undone.
            placements.afterPlacing(pid) { send(translated) }
        case .deferred(let pid):
            guard let path = nodes.path(file.node) else { return send(data) }
            if placements.add(pid, path: path) {
                fuse_reply_write(req, written)
                return
            }
            logger.warning("cgroups: too many placements pending; DPU process \(pid) written to the host as it is")
            send(data)
        }
    }

    /// Writes the remote pid of DPU process `pid`, now a rexec client, into the process lists it was
    /// written to before (`DeferredPlacements`): open by path, write, release, each through the engine;
    /// `done` when all are answered.
    private func place(_ pid: pid_t, remote: pid_t, in paths: [[UInt8]], done: @escaping @Sendable () -> Void) {
        let left = Atomic<Int>(paths.count)
        let finished = { if left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done() } }
        for path in paths {
            let name = String(decoding: path, as: UTF8.self)
            let failed = { [logger] (error: String) in
                logger.warning("cgroups: cannot place host process \(remote) (DPU process \(pid)) in \(name): \(error)")
                finished()
            }
            client.send(Outgoing(.open, retry: .resend, encode: { .open(QTFSPath(export: $0.export, path: path), flags: UInt32(O_WRONLY)) }) {
                [self] result, link in
                guard case .success(.opened(let handle, _, _, _)) = result, let link else {
                    return failed(Self.describe(result))
                }
                client.send(Outgoing(.write, pinned: link, retry: .fail, encode: { _ in
                    .write(handle: handle, offset: 0, flags: 0, data: ByteBuffer(string: "\(remote)"))
                }) { [self] result, _ in
                    client.send(Outgoing(.release, pinned: link, retry: .fail, encode: { _ in .release(handle: handle) }) { _, _ in })
                    guard case .success(.written) = result else { return failed(Self.describe(result)) }
                    logger.info("cgroups: host process \(remote) (DPU process \(pid)) placed in \(name)")
                    finished()
                })
            })
        }
    }

    static func describe(_ result: Result<QTFSReply, Errno>) -> String {
        if case .failure(let error) = result { return "\(error)" }
        return "unexpected reply"
    }

    /// What the kernel asks a file for before every write(2) on a FUSE file system.
    static let capabilityName = Array("security.capability".utf8)
    /// The files of a cgroup that take pids (v1 `tasks`, v2 `cgroup.procs` and `cgroup.threads`).
    static let processLists: Set<[UInt8]> = [Array("cgroup.procs".utf8), Array("tasks".utf8), Array("cgroup.threads".utf8)]

    func fsync(_ req: fuse_req_t, _ file: OpenFile, dataOnly: Bool) {
        withHandle(req, file, .fsync, { .fsync(handle: $0, dataOnly: dataOnly) }) { [self] result in
            guard case .success = result else { return fail(req, result) }
            fuse_reply_err(req, 0)
        }
    }

    /// The kernel closed its last reference: answer at once, tell the engine in the background.
    func release(_ file: OpenFile) {
        let (link, handle) = file.current
        openFiles.withLock { files in
            files[file.node]?[ObjectIdentifier(file)] = nil
            if files[file.node]?.isEmpty == true { files[file.node] = nil }
        }
        polls.withLock { _ = $0.removeValue(forKey: file.pollID) }
        if let pending = file.pollHandle.withLock({ state -> UInt? in defer { state = nil }; return state }) {
            fuse_pollhandle_destroy(OpaquePointer(bitPattern: pending))
        }
        guard handle != 0 else { return }
        client.send(Outgoing(.release, pinned: link, retry: .fail, encode: { _ in .release(handle: handle) }) { _, _ in })
    }

    // MARK: Directories

    func opendir(_ req: fuse_req_t, _ node: UInt64, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let since = version
        guard let path = path(req, node) else { return }
        // libfuse's fuse_file_info is on the calling thread's stack, gone once this returns: the answer,
        // which comes later from another thread, fills in a copy.
        let request = fi.pointee
        let ask = { [self] in
            let asked = monotonicNanoseconds()
            send(req, .opendir, { .opendir(QTFSPath(export: $0.export, path: path)) }) { [self] result, link in
                guard case .success(.directory(let handle, let entries, let end)) = result, let link else {
                    return fail(req, result)
                }
                opened(req, node, request, link: link, handle: handle, entries, end: end, since: since, asked: asked)
            }
        }
        guard cachesListings, options.prefetch > 0, let names = nodes.node(node)?.names else { return ask() }
        let timeout = UInt64(options.entryTimeout * 1_000_000_000)
        let next = prefetch.take(names) { [self] listing in
            guard let listing, listing.version == version, listing.asked + timeout > monotonicNanoseconds() else { return ask() }
            opened(req, node, request, link: listing.link, handle: 0, listing.entries, end: listing.end, since: listing.version, asked: listing.asked)
        }
        fetchAhead(next)
    }

    /// Answers an OPENDIR with its first entries (`handle` 0: none on the host yet; `asked`: when they
    /// were asked for).
    private func opened(
        _ req: fuse_req_t, _ node: UInt64, _ request: fuse_file_info, link: Link, handle: UInt64,
        _ entries: [QTFSDirectoryEntry], end: Bool, since: UInt64, asked: UInt64
    ) {
        let file = OpenFile(node: node, flags: O_RDONLY, isDirectory: true, link: link, handle: handle, pollID: 0)
        file.listing.withLock { $0 = Listing(start: 0, entries: entries, end: end, loaded: true, version: since, asked: asked) }
        remember(listing: entries, in: node, since: since, asked: asked)
        let fetchedAhead = handle == 0
        var info = request
        info.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(file).toOpaque()))
        // The kernel may keep what it listed while the directory's mtime says nothing changed; not a
        // listing fetched ahead, which is already up to an entry timeout old.
        let cache = !fetchedAhead && !options.proc && !(client.export?.root.flags.contains(.volatile) ?? false)
        info.cache_readdir = cache ? 1 : 0
        info.keep_cache = cache ? 1 : 0
        if fuse_reply_open(req, &info) != 0 {
            release(Unmanaged<OpenFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(info.fh))!).takeRetainedValue())
            return
        }
        queueFetchAhead(of: node, entries)
    }

    /// Queues the listings of the subdirectories in `entries` (a listing of `directory`) to be fetched
    /// ahead (see `ListingPrefetch`).
    private func queueFetchAhead(of directory: UInt64, _ entries: [QTFSDirectoryEntry]) {
        guard cachesListings, options.prefetch > 0 else { return }
        var directories: ListingPrefetch.Start = []
        for entry in entries where entry.name != [46] && entry.name != [46, 46] {
            guard let a = entry.attributes, a.mode & 0o170000 == 0o040000, !a.flags.contains(.volatile),
                let path = nodes.path(directory, entry.name)
            else { continue }
            directories.append((NodeTable.Dentry(parent: directory, name: entry.name), path))
            if directories.count == options.prefetch { break }
        }
        guard !directories.isEmpty else { return }
        fetchAhead(prefetch.enqueue(directories, now: monotonicNanoseconds(), timeout: UInt64(options.entryTimeout * 1_000_000_000)))
    }

    /// Asks for listings to keep; the handle is let go at once (a reader that goes past the first
    /// entries opens the directory again: see `withHandle`).
    private func fetchAhead(_ directories: ListingPrefetch.Start) {
        for (dentry, path) in directories {
            let since = version
            let asked = monotonicNanoseconds()
            client.send(Outgoing(.opendir, retry: .resend, encode: { .opendir(QTFSPath(export: $0.export, path: path)) }) {
                [self] result, link in
                var listing: ListingPrefetch.Listing?
                if case .success(.directory(let handle, let entries, let end)) = result, let link {
                    client.send(Outgoing(.release, pinned: link, retry: .fail, encode: { _ in .release(handle: handle) }) { _, _ in })
                    listing = ListingPrefetch.Listing(entries: entries, end: end, link: link, version: since, asked: asked)
                }
                fetchAhead(prefetch.finish(dentry, listing))
            })
        }
    }

    /// Entries fetched per READDIR: enough to fill several of the kernel's 4 KiB requests.
    static let batch: UInt32 = 512

    func readdir(_ req: fuse_req_t, _ directory: UInt64, _ file: OpenFile, _ size: Int, _ offset: Int, plus: Bool) {
        let since = version
        let cookie = UInt64(bitPattern: Int64(offset))
        // Serve from the batch in hand when the kernel continues where it left off.
        let start: Int? = file.listing.withLock { listing in
            guard listing.loaded else { return nil }
            if cookie == listing.start { return 0 }
            if let resume = listing.resume, resume.cookie == cookie {
                return resume.index < listing.entries.count || listing.end ? resume.index : nil
            }
            guard let index = listing.entries.firstIndex(where: { $0.cookie == cookie }) else { return nil }
            if index + 1 == listing.entries.count && !listing.end { return nil }
            return index + 1
        }
        if let start { return emit(req, directory, file, size, start, plus) }
        let attributes = plus || cachesListings
        let asked = monotonicNanoseconds()
        withHandle(req, file, .readdir, {
            .readdir(handle: $0, cookie: cookie, maximumEntries: QTFSFilesystem.batch, withAttributes: attributes)
        }) { [self] result in
            guard case .success(.entries(let entries, let end)) = result else { return fail(req, result) }
            file.listing.withLock {
                $0 = Listing(start: cookie, entries: entries, end: end, loaded: true, version: since, asked: asked)
            }
            remember(listing: entries, in: directory, since: since, asked: asked)
            emit(req, directory, file, size, 0, plus)
        }
    }

    private func emit(_ req: fuse_req_t, _ directory: UInt64, _ file: OpenFile, _ size: Int, _ start: Int, _ plus: Bool) {
        // The array is shared with the listing, not copied (it is replaced, never mutated in place).
        let (all, since, asked) = file.listing.withLock { ($0.entries, $0.version, $0.asked) }
        // What the entries say holds for the timeouts from when they were asked for.
        let age = Double(monotonicNanoseconds() &- asked) / 1e9
        let entries = all[start...]
        var buffer = [CChar](repeating: 0, count: size)
        var used = 0
        var emitted = 0
        // Each name NUL-terminated in one scratch buffer (names are at most 255 bytes; grown if not).
        var scratch = [CChar](repeating: 0, count: 256)
        func withName<R>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
            if scratch.count <= name.count { scratch = [CChar](repeating: 0, count: name.count + 1) }
            return scratch.withUnsafeMutableBufferPointer { c in
                name.withUnsafeBytes { n in UnsafeMutableRawBufferPointer(c).copyMemory(from: n) }
                c[name.count] = 0
                return body(c.baseAddress!)
            }
        }
        buffer.withUnsafeMutableBufferPointer { raw in
            if plus {
                // What fits, then their nodes in one go, then the entries.
                var fits = 0
                for entry in entries {
                    let needed = withName(entry.name) { fuse_add_direntry_plus(req, nil, 0, $0, nil, 0) }
                    guard needed <= size - used else { break }
                    used += needed
                    fits += 1
                }
                used = 0
                let listed = entries.prefix(fits)
                let ids = nodes.remember(listed: listed, in: directory, keep: keep(since: since, asked: asked))
                for (entry, id) in zip(listed, ids) {
                    var e = fuse_entry_param()
                    if id != 0, let a = entry.attributes {
                        e = self.entry(id, a)
                        e.entry_timeout = max(0, e.entry_timeout - age)
                        e.attr_timeout = max(0, e.attr_timeout - age)
                        if a.mode & 0o170000 == 0o140000, let sockets, !sockets.hasListener(id), let path = nodes.path(id) {
                            socketAttributes.withLock { $0[id] = a }
                            sockets.ensureListener(id, path: path) {}
                        }
                    } else {
                        e.attr.st_ino = UInt(entry.inode)
                        e.attr.st_mode = mode_t(entry.type) << 12
                    }
                    let offset = Int(Int64(bitPattern: entry.cookie))
                    used += withName(entry.name) { fuse_add_direntry_plus(req, raw.baseAddress! + used, size - used, $0, &e, offset) }
                }
                emitted = fits
                return
            }
            for entry in entries {
                var s = Glibc.stat()
                s.st_ino = UInt(entry.inode)
                s.st_mode = mode_t(entry.type) << 12
                if terminals != nil, let a = entry.attributes, TerminalBridges.presents(a) { s.st_mode = S_IFLNK }
                let offset = Int(Int64(bitPattern: entry.cookie))
                let needed = withName(entry.name) { fuse_add_direntry(req, raw.baseAddress! + used, size - used, $0, &s, offset) }
                guard needed <= size - used else { break }
                used += needed
                emitted += 1
            }
        }
        // Before the answer: the kernel may ask for the rest from another thread at once.
        if emitted > 0 {
            let last = entries[entries.startIndex + emitted - 1].cookie
            file.listing.withLock { $0.resume = (entries.startIndex + emitted, last) }
        }
        fuse_reply_buf(req, buffer, used)
    }

    // MARK: File system, attributes, poll

    func statfs(_ req: fuse_req_t, _ node: UInt64) {
        let path = nodes.path(node) ?? []
        call(req, .statfs, { .statfs(QTFSPath(export: $0.export, path: path)) }) { [self] result in
            guard case .success(.fileSystem(let info)) = result else { return fail(req, result) }
            var s = statvfs()
            s.f_bsize = UInt(info.blockSize)
            s.f_frsize = UInt(info.fragmentSize)
            s.f_blocks = UInt(info.blocks)
            s.f_bfree = UInt(info.freeBlocks)
            s.f_bavail = UInt(info.availableBlocks)
            s.f_files = UInt(info.files)
            s.f_ffree = UInt(info.freeFiles)
            s.f_favail = UInt(info.freeFiles)
            s.f_namemax = UInt(info.maximumNameLength)
            fuse_reply_statfs(req, &s)
        }
    }

    private func target(_ req: fuse_req_t, _ node: UInt64) -> ((Link) -> QTFSTarget)? {
        guard let path = path(req, node) else { return nil }
        return { .path(QTFSPath(export: $0.export, path: path)) }
    }

    func getxattr(_ req: fuse_req_t, _ node: UInt64, _ name: [UInt8], _ size: Int, list: Bool) {
        if !list && !xattrPolicy.carries(name) { return _ = fuse_reply_err(req, EOPNOTSUPP) }
        // A file known to have none, or no capability (what the kernel asks before every write).
        let capability = !list && name == QTFSFilesystem.capabilityName
        if let (a, _) = recentAttributes(of: node), a.flags.contains(.noExtendedAttributes) {
            if list && size == 0 {
                fuse_reply_xattr(req, 0)
            } else if list {
                fuse_reply_buf(req, nil, 0)
            } else {
                fuse_reply_err(req, ENODATA)
            }
            return
        }
        if capability, nodes.hasNoCapability(node, now: monotonicNanoseconds()) { return _ = fuse_reply_err(req, ENODATA) }
        guard let target = target(req, node) else { return }
        let size = UInt32(min(size, QTFSLimits.maximumXattr))
        let since = version
        let asked = monotonicNanoseconds()
        call(req, list ? .listxattr : .getxattr, { link in
            list ? .listxattr(target(link), size: size) : .getxattr(target(link), name: name, size: size)
        }) { [self] result in
            if capability, case .failure(let error) = result, error.rawValue == ENODATA, let keep = keep(since: since, asked: asked) {
                nodes.noteNoCapability(node, keep)
            }
            guard case .success(.xattr(let count, var value)) = result else { return fail(req, result) }
            if size == 0 {
                // For a list, the size of the host's: a little more than what is shown is fine.
                fuse_reply_xattr(req, Int(count))
            } else {
                if list { value = xattrPolicy.filter(list: value) }
                value.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            }
        }
    }

    func setxattr(_ req: fuse_req_t, _ node: UInt64, _ name: [UInt8], _ value: [UInt8]?, _ flags: Int32) {
        guard xattrPolicy.carries(name) else { return _ = fuse_reply_err(req, EOPNOTSUPP) }
        forgetRecent(node: node)
        guard let target = target(req, node) else { return }
        call(req, value == nil ? .removexattr : .setxattr, { link in
            if let value { return .setxattr(target(link), name: name, value: value, flags: UInt32(bitPattern: flags)) }
            return .removexattr(target(link), name: name)
        }) { [self] result in
            guard case .success = result else { return fail(req, result) }
            fuse_reply_err(req, 0)
        }
    }

    func poll(_ req: fuse_req_t, _ file: OpenFile, _ handle: OpaquePointer?, _ events: UInt32) {
        var notify: UInt64 = 0
        if let handle {
            notify = file.pollID
            polls.withLock { $0[file.pollID] = file }
            let previous = file.pollHandle.withLock { state -> UInt? in
                defer { state = UInt(bitPattern: handle) }
                return state
            }
            if let previous { fuse_pollhandle_destroy(OpaquePointer(bitPattern: previous)) }
        }
        withHandle(req, file, .poll, { .poll(handle: $0, events: events, notify: notify) }) { [self] result in
            guard case .success(.polled(let ready)) = result else { return fail(req, result) }
            fuse_reply_poll(req, ready)
        }
    }

    private func pollReady(_ id: UInt64) {
        guard let file = polls.withLock({ $0[id] }) else { return }
        guard let handle = file.pollHandle.withLock({ state -> UInt? in defer { state = nil }; return state }) else { return }
        fuse_lowlevel_notify_poll(OpaquePointer(bitPattern: handle))
        fuse_pollhandle_destroy(OpaquePointer(bitPattern: handle))
    }
}

import DPUSystem
import Glibc
import Logging
import QTFS
import Synchronization
import SystemPackage
import UDSProxy

/// Unix socket nodes of the host made connectable on the DPU, without any preload library.
///
/// A host socket found on the mount gets a listening socket of ours bound to the same inode: the kernel
/// finds a path-bound unix socket by its inode, so binding on any name whose node id is the host socket's
/// makes a `connect()` to the public name land in our listener (see notes/fuse-socket-nodes.md). The bind
/// goes to a hidden directory of the mount that exists only on this side (so that it never waits for a
/// lock the lookup of the public name holds), its MKNOD is answered with the socket's node id, and only
/// when it comes from our binding thread (anyone else is refused). Each accepted connection is carried to
/// the host socket through udsproxyd (`UDSProxyClient`), file descriptors passed included.
final class SocketNodes: @unchecked Sendable {
    let mountpoint: String
    let hostPath: [UInt8]
    let control: String
    let logger: Logger
    /// The hidden directory's name in the mount root: unguessable, never listed.
    let directoryName: [UInt8]
    private let state = ConditionLock(State())
    private let epoll: Epoll
    private let wakeup: EventCounter

    private struct State {
        var listeners: [UInt64: FileDescriptor] = [:]
        /// Binds waiting for the binder thread: node, host-relative path, then what to do.
        var queue: [(node: UInt64, path: [UInt8], done: () -> Void)] = []
        /// The bind in progress: its node, and the binder's thread id (MKNOD must come from it).
        var binding: (node: UInt64, thread: pid_t)?
        var stopped = false
        /// Sockets a DPU process bound on the mount: they serve the DPU, nothing is relayed for them.
        var local: Set<UInt64> = []
        /// The hidden directory, open while any listener is: binding through it needs no lookup in a
        /// directory of the mount (FUSE serializes the lookups of one directory, and the lookup of the
        /// public name may be the one waiting for this bind). Closed with the last listener, so that a
        /// plain `umount` works when no socket is in use.
        var directory: FileDescriptor?
    }

    init(mountpoint: String, hostPath: [UInt8], control: String, logger: Logger) throws(SystemError) {
        self.mountpoint = mountpoint
        self.hostPath = hostPath
        self.control = control
        self.logger = logger
        var random = SystemRandomNumberGenerator()
        directoryName = Array(".qtfs-sockets-\(String(random.next(), radix: 36))".utf8)
        epoll = try Epoll()
        wakeup = try EventCounter()
        try epoll.add(wakeup.fd, events: UInt32(POLLIN), data: 0)
        try OSThread.start(name: "qtfs-binder") { [self] in bindLoop() }
        try OSThread.start(name: "qtfs-accept") { [self] in acceptLoop() }
    }

    func hasListener(_ node: UInt64) -> Bool { state.withLock { $0.listeners[node] != nil || $0.local.contains(node) } }

    /// A DPU process bound `node` itself (its MKNOD went to the host): leave it alone.
    func boundLocally(_ node: UInt64) { state.withLock { _ = $0.local.insert(node) } }

    /// Makes `node` (a host socket at `path` beneath the export) connectable, and calls `reply` (the answer
    /// to the lookup that found it): after the bind, so that the caller's connect finds the listener, when
    /// the bind needs no lookup in the mount's directories (FUSE serializes the lookups of a directory,
    /// and this lookup holds its directory); otherwise at once, and the bind follows.
    func ensureListener(_ node: UInt64, path: [UInt8], _ reply: @escaping () -> Void) {
        let (now, queued) = state.withLock { state -> (Bool, Bool) in
            guard !state.stopped, state.listeners[node] == nil, !state.local.contains(node) else { return (true, false) }
            let deferred = state.directory != nil
            state.queue.append((node, path, deferred ? reply : {}))
            return (!deferred, true)
        }
        if now { reply() }
        if queued { state.broadcast() }
    }

    /// Whether a MKNOD of `name` in the hidden directory is our binder's, for `node`.
    func claim(_ name: [UInt8], caller: pid_t) -> UInt64? {
        state.withLock { state in
            guard let binding = state.binding, binding.thread == caller, name == Array("\(binding.node)".utf8) else { return nil }
            return binding.node
        }
    }

    /// The host socket went away (or the mount is ending): stop listening for it.
    func close(_ node: UInt64) {
        let (listener, directory) = state.withLock { state -> (FileDescriptor?, FileDescriptor?) in
            let listener = state.listeners.removeValue(forKey: node)
            guard listener != nil, state.listeners.isEmpty, state.queue.isEmpty, state.binding == nil else { return (listener, nil) }
            defer { state.directory = nil }
            return (listener, state.directory)
        }
        if let listener {
            epoll.remove(listener)
            listener.closeQuietly()
        }
        directory?.closeQuietly()
    }

    /// Closes every listener: bound sockets hold the mount busy, so this comes before unmounting.
    func stop() {
        let all = state.withLock { state -> [FileDescriptor] in
            state.stopped = true
            defer {
                state.listeners = [:]
                state.directory = nil
            }
            return Array(state.listeners.values) + (state.directory.map { [$0] } ?? [])
        }
        state.broadcast()
        for fd in all {
            epoll.remove(fd)
            fd.closeQuietly()
        }
        wakeup.signal()
    }

    // MARK: Binding

    private func bindLoop() {
        while true {
            guard let job = state.wait(until: { state -> (UInt64, [UInt8], () -> Void)?? in
                if state.stopped { return .some(nil) }
                guard !state.queue.isEmpty else { return nil }
                let job = state.queue.removeFirst()
                if state.listeners[job.node] != nil { return .some((job.node, job.path, job.done)) }
                state.binding = (job.node, OSThread.currentID)
                return .some((job.node, job.path, job.done))
            }), let (node, path, done) = job else { return }
            if state.withLock({ $0.binding?.node == node }) {
                do {
                    let fd = try bind(node)
                    state.withLock { state in
                        state.binding = nil
                        state.listeners[node] = fd
                    }
                    try? epoll.add(fd, events: UInt32(POLLIN), data: node)
                    logger.debug("listening for \(describe(path))")
                } catch {
                    state.withLock { $0.binding = nil }
                    logger.warning("cannot make \(describe(path)) connectable: \(error)")
                }
            }
            done()
        }
    }

    /// Binds a listening socket on `<mount>/<hidden>/<node>`, through the directory's descriptor (so that
    /// a deep mount point does not overflow sun_path, and no lookup happens outside the hidden directory).
    private func bind(_ node: UInt64) throws(SystemError) -> FileDescriptor {
        var directory = state.withLock { $0.directory }
        if directory == nil {
            let opened = try FileDescriptor.openPath(mountpoint + "/" + describe(directoryName), flags: O_PATH | O_DIRECTORY)
            state.withLock { $0.directory = opened }
            directory = opened
        }
        let socket = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue))
        do {
            try socket.bind(try SocketAddress(unixPath: "\(directory!.procfsPath)/\(node)"))
            try socket.listen(backlog: 128)
            try socket.setNonBlocking()
        } catch {
            socket.closeQuietly()
            throw error
        }
        return socket
    }

    // MARK: Connections

    private func acceptLoop() {
        while true {
            guard let ready = try? epoll.wait(timeoutMilliseconds: -1) else { continue }
            if state.withLock({ $0.stopped }) { return }
            for (_, node) in ready where node != 0 {
                guard let listener = state.withLock({ $0.listeners[node] }) else { continue }
                while let client = try? listener.accept() {
                    let path = pathOf(node)
                    try? OSThread.start(name: "qtfs-relay") { [self] in relay(client, to: path) }
                }
            }
            wakeup.drain()
        }
    }

    /// Set by the file system: the host path of a socket node now.
    var pathOf: (UInt64) -> [UInt8]? = { _ in nil }

    private func relay(_ client: FileDescriptor, to relative: [UInt8]?) {
        defer { client.closeQuietly() }
        guard let relative else { return }
        let host = describe(hostPath == [UInt8(ascii: "/")] ? hostPath + relative : hostPath + [UInt8(ascii: "/")] + relative)
        let remote: FileDescriptor
        do {
            remote = try UDSProxyClient.connect(toPeerPath: host, control: control)
        } catch {
            logger.warning("\(error)")
            return
        }
        defer { remote.closeQuietly() }
        Relay.run(client, remote)
    }
}

/// Copies bytes and passed descriptors both ways between two connected unix sockets until both sides
/// have finished (half-close is passed on).
enum Relay {
    static func run(_ a: FileDescriptor, _ b: FileDescriptor) {
        var open = [true, true]
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        let ends = [a, b]
        while open[0] || open[1] {
            var set = (0..<2).filter { open[$0] }.map { pollfd(fd: ends[$0].rawValue, events: Int16(POLLIN), revents: 0) }
            guard (try? DPUSystem.poll(&set, timeoutMilliseconds: -1, retryOnInterrupt: true)) != nil else { return }
            for entry in set where entry.revents != 0 {
                let from = entry.fd == a.rawValue ? 0 : 1
                let source = ends[from]
                let target = ends[1 - from]
                let received = buffer.withUnsafeMutableBytes { raw in try? source.receive(into: raw, maxFDs: 16) }
                guard let (count, fds, _) = received ?? nil, count > 0 || !fds.isEmpty else {
                    // End of stream from this side: pass the half-close on.
                    open[from] = false
                    try? target.shutdown(.write)
                    continue
                }
                defer { for fd in fds { fd.closeQuietly() } }
                var sent = 0
                var pending = fds
                while sent < count || !pending.isEmpty {
                    let chunk = buffer.withUnsafeBytes { raw in
                        try? target.send(UnsafeRawBufferPointer(rebasing: raw[sent..<count]), fds: pending)
                    }
                    guard let written = chunk ?? nil else { return }
                    sent += written
                    pending = []
                    if count == 0 { break }
                }
            }
        }
    }
}

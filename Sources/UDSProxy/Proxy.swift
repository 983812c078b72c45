import DPUConfig
import DPUSystem
import DPUSystemd
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage

/// The proxy itself, on the reactor thread: the control socket, the peer listeners, the dialer with its
/// reconnect backoff, the links, and the decisions — who may ask, which path may be reached, which link
/// carries a new connection.
final class Proxy {
    let reactor: Reactor
    let logger: Logger
    private(set) var settings: UDSProxySettings
    private let board: StatusBoard

    private var control: Listener?
    /// The control socket path we created (and remove on exit); nil when systemd owns the socket.
    private var controlPathCreated: String?
    private var peerListeners: [Listener] = []
    private var links: [PeerLink] = []
    private var dialed: PeerLink?
    private var retryDelay = Limits.firstRetry
    private var retryTimer: TimerID?
    private var dialFailures = 0
    private var lastDialError: String?
    private var nextRetryAt: UInt64 = 0
    private var controlClients: [ObjectIdentifier: ControlConnection] = [:]
    private var rendezvousQueues: [[UInt8]: [Rendezvous]] = [:]
    private var pendingLegacyReplies: [ObjectIdentifier: ControlConnection] = [:]
    private(set) var shuttingDown = false
    private var stopped = false
    private var statusTimer: TimerID?
    private var lastStatus = ""

    init(reactor: Reactor, settings: UDSProxySettings, logger: Logger, board: StatusBoard) {
        self.reactor = reactor
        self.settings = settings
        self.logger = logger
        self.board = board
    }

    // MARK: Start

    /// Binds the control socket and the peer listeners (or adopts systemd's). Runs before the reactor
    /// thread starts.
    func bind(activated: [Systemd.ListenedSocket]) throws {
        var activatedControl: FileDescriptor?
        var activatedPeers: [FileDescriptor] = []
        for socket in activated {
            let endpoint = try UDSProxySettings.endpointOf(socket.fd)
            switch endpoint {
            case .unix?:
                guard activatedControl == nil else {
                    throw UDSProxyError("systemd passed more than one unix socket; udsproxyd has one control socket")
                }
                activatedControl = socket.fd
            case .tcp?, .vsock?:
                activatedPeers.append(socket.fd)
            case nil:
                throw UDSProxyError("systemd passed a socket of an unknown family (fd \(socket.fd.rawValue), \(socket.name))")
            }
        }

        let controlFD: FileDescriptor
        if let activatedControl {
            controlFD = activatedControl
            try controlFD.setNonBlocking()
        } else {
            let path = settings.control
            let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
            // The original created /var/run/qtfs; its clients only need to reach the socket inside.
            if !directory.isEmpty && access(directory, F_OK) != 0 { mkdir(directory, 0o755) }
            // Anyone may connect; SO_PEERCRED decides who is served (allow-users, which a reload may
            // change), and a refused user is named in the log instead of failing silently on the mode.
            controlFD = try Socket.listen(on: .unix(path: path), backlog: 256, unixMode: 0o666, nonBlocking: true)
            controlPathCreated = path
        }
        control = Listener(fd: controlFD, name: "control socket", reactor: reactor, logger: logger) { [unowned self] fd in
            acceptControl(fd)
        }

        var peerFDs = activatedPeers
        do {
            for endpoint in settings.listen { peerFDs.append(try Socket.listen(on: endpoint, backlog: 64, nonBlocking: true)) }
        } catch {
            for fd in peerFDs where !activatedPeers.contains(fd) { fd.closeQuietly() }
            control?.close()
            if let path = controlPathCreated { unlink(path) }
            throw error
        }
        for fd in peerFDs {
            try fd.setNonBlocking()
            let name = (try? fd.localAddress().description) ?? "peer listener"
            peerListeners.append(Listener(fd: fd, name: "peer listener \(name)", reactor: reactor, logger: logger) { [unowned self] client in
                acceptPeer(client)
            })
        }
        try control?.start()
        for listener in peerListeners { try listener.start() }
    }

    /// Publishes the first status line (before the reactor thread starts).
    func publishStatus() { board.setStatus(statusLine()) }

    /// Starts dialing the peer, if one is configured (reactor thread).
    func begin() {
        updateStatus(now: true)
        dial()
    }

    /// Where the peer listeners listen, for logs.
    var listenerNames: [String] { peerListeners.map { $0.name.replacingPrefix("peer listener ") } }

    // MARK: Links

    /// The link a new connection from here goes over: the one we dialed, else the newest the peer dialed.
    var outgoingLink: PeerLink? {
        if let dialed, dialed.isUp, !dialed.peerGoingAway { return dialed }
        return links.last { $0.role == .acceptor && $0.isUp && !$0.peerGoingAway }
    }

    private func dial() {
        guard let peer = settings.peer, !shuttingDown, dialed == nil else { return }
        retryTimer = nil
        do {
            let (fd, inProgress) = try Proxy.connectNonBlocking(peer)
            let link = PeerLink(proxy: self, fd: fd, role: .dialer, remote: peer.description, key: settings.peerKey)
            dialed = link
            links.append(link)
            do {
                try link.start(connecting: inProgress)
            } catch {
                link.fail("cannot watch the connection: \(error)")
            }
        } catch {
            dialFailed("\(error)")
        }
        updateStatus(now: true)
    }

    private func dialFailed(_ reason: String) {
        dialFailures += 1
        lastDialError = reason
        // Say it once, then quietly at debug level: a peer that is down for hours must not flood the log.
        if dialFailures == 1 {
            logger.warning("cannot reach the peer \(settings.peer?.description ?? ""): \(reason); retrying with backoff")
        } else {
            logger.debug("peer still unreachable (attempt \(dialFailures)): \(reason)")
        }
        let delay = retryDelay
        retryDelay = min(retryDelay * 2, Limits.lastRetry)
        nextRetryAt = Reactor.now() + delay.nanoseconds
        retryTimer = reactor.schedule(after: delay) { [weak self] in self?.dial() }
        updateStatus(now: true)
    }

    static func connectNonBlocking(_ endpoint: Endpoint) throws(SystemError) -> (FileDescriptor, inProgress: Bool) {
        let address: SocketAddress
        switch endpoint {
        case .tcp(let host, let port):
            guard let first = try SocketAddress.resolveTCP(host: host, port: port).first else {
                throw SystemError(.noSuchAddressOrDevice, "resolve", host)
            }
            address = first
        case .unix(let path):
            address = try SocketAddress(unixPath: path)
        case .vsock(let cid, let port):
            address = SocketAddress(vsockCID: cid, port: port)
        }
        let fd = try FileDescriptor.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue), nonBlocking: true)
        do throws(SystemError) {
            if case .tcp = endpoint { try tuneTCP(fd) }
            let done = try fd.connect(address)
            return (fd, !done)
        } catch {
            fd.closeQuietly()
            throw error
        }
    }

    /// The address a peer connects from, without its port (`198.51.100.2:40000` -> `198.51.100.2`,
    /// `[::1]:40000` -> `[::1]`, `vsock://3:1024` -> `vsock://3`).
    static func source(of remote: String) -> String {
        guard let colon = remote.lastIndex(of: ":"), !remote.hasSuffix("]") else { return remote }
        return String(remote[..<colon])
    }

    /// Latency first: no Nagle (a 1-byte request must not wait for an ACK); keep-alive so a vanished
    /// peer is noticed even when the link is idle.
    static func tuneTCP(_ fd: FileDescriptor) throws(SystemError) {
        try fd.setSocketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        try fd.enableKeepAlive(idleSeconds: 10, intervalSeconds: 5, probes: 3)
    }

    private func acceptPeer(_ fd: FileDescriptor) {
        let remote = (try? fd.peerAddress().description) ?? "unknown"
        guard !shuttingDown else { return fd.closeQuietly() }
        let handshaking = links.filter { !$0.isUp }.count
        let accepted = links.filter { $0.role == .acceptor && $0.isUp }.count
        guard handshaking < Limits.handshakes, accepted < Limits.acceptedLinks else {
            logger.warning("refusing a connection from \(remote): \(handshaking) handshakes and \(accepted) links already")
            return fd.closeQuietly()
        }
        let source = Proxy.source(of: remote)
        let fromThere = links.filter { $0.role == .acceptor && !$0.isUp && Proxy.source(of: $0.remote) == source }.count
        guard fromThere < Limits.handshakesPerSource else {
            logger.warning("refusing a connection from \(remote): \(fromThere) handshakes from \(source) already")
            return fd.closeQuietly()
        }
        if let address = try? fd.localAddress(), address.family == AF_INET || address.family == AF_INET6 {
            try? Proxy.tuneTCP(fd)
        }
        let link = PeerLink(proxy: self, fd: fd, role: .acceptor, remote: remote, key: settings.listenerKey)
        links.append(link)
        do {
            try link.start(connecting: false)
        } catch {
            link.fail("cannot watch the connection: \(error)")
        }
    }

    func linkUp(_ link: PeerLink) {
        if link.role == .dialer {
            logger.info("connected to the peer \(link.remote)")
            retryDelay = Limits.firstRetry
            dialFailures = 0
            lastDialError = nil
        } else {
            logger.info("the peer connected from \(link.remote)")
        }
        updateStatus(now: true)
        board.linkUp()
    }

    func linkGoingAway(_ link: PeerLink, reason: String) {
        logger.info("the peer \(link.remote) is going away: \(reason)")
        updateStatus(now: true)
    }

    func linkClosed(_ link: PeerLink, reason: String, wasUp: Bool, refused: Bool) {
        links.removeAll { $0 === link }
        if refused && link.role == .acceptor {
            logger.warning("refused the peer connection \(link.remote): \(reason)")
        } else if !wasUp && link.role == .acceptor {
            // A dialer with another key checks our proof first and leaves: this is all we see of it.
            logger.warning("the peer connection \(link.remote) ended in the handshake (\(reason)); a peer with another key does that")
        } else if wasUp {
            logger.warning("link to the peer \(link.remote) closed: \(reason)")
        }
        if link === dialed {
            dialed = nil
            if !shuttingDown {
                if wasUp {
                    // A link that worked is retried at once (then with backoff).
                    retryDelay = Limits.firstRetry
                    dial()
                } else {
                    dialFailed(reason)
                }
            }
        }
        updateStatus(now: true)
        if shuttingDown { finishShutdownIfIdle() }
    }

    // MARK: Serving the peer

    /// The peer asks for a connection to `path` here.
    func serveOpen(on link: PeerLink, stream id: UInt32, path: [UInt8]) {
        let label = String(decoding: path, as: UTF8.self)
        guard !shuttingDown, link.canTakeStream else {
            link.send(UDSProxyMessage.openResult(stream: id, errno: (shuttingDown ? Errno.connectionRefused : .tooManyOpenFiles).rawValue).frame)
            return
        }
        let stream = Stream(id: id, link: link, kind: .socket, label: label, leg: nil, opening: .serving)
        link.add(stream)
        connectServing(stream, path: path, deadline: Reactor.now() + Limits.openTimeout.nanoseconds, delay: Limits.backlogRetry)
    }

    private enum LocalConnect {
        case connected(FileDescriptor)
        case busy
        case failed(Errno, String)
    }

    private func connectServing(_ stream: Stream, path: [UInt8], deadline: UInt64, delay: Duration) {
        guard stream.isOpening else { return }  // reset meanwhile
        switch connectLocal(path) {
        case .connected(let fd):
            stream.served(fd)
        case .busy where Reactor.now() < deadline:
            // The server's backlog is full: it accepts soon, or the open times out.
            reactor.schedule(after: delay) { [weak self, weak stream] in
                guard let self, let stream else { return }
                self.connectServing(stream, path: path, deadline: deadline, delay: min(delay * 2, .milliseconds(50)))
            }
        case .busy:
            refuseServing(stream, .timedOut, "its listen backlog stayed full")
        case .failed(let errno, let why):
            refuseServing(stream, errno, why)
        }
    }

    private func refuseServing(_ stream: Stream, _ errno: Errno, _ why: String) {
        if errno == .permissionDenied {
            logger.warning("the peer asked for \(stream.label), which is \(why); refused")
        } else {
            logger.info("the peer asked for \(stream.label): \(why)")
        }
        stream.link.send(UDSProxyMessage.openResult(stream: stream.id, errno: errno.rawValue).frame)
        stream.failOpen(errno)
    }

    /// Connects to the socket at `path` after checking the whitelist on the resolved path. The check and
    /// the connect use the same inode (an O_PATH descriptor, connected to through /proc/self/fd), so a
    /// link swapped in between cannot redirect the connect.
    private func connectLocal(_ path: [UInt8]) -> LocalConnect {
        let handle: FileDescriptor
        do {
            handle = try FileDescriptor(rawValue: AT_FDCWD).open(beneath: path, flags: O_PATH, resolve: [.noMagicLinks])
        } catch {
            return .failed(error.errno, "\(error.errno)")
        }
        defer { handle.closeQuietly() }
        do {
            let resolved = try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(handle.procfsPath.utf8))
            guard settings.whitelist.allowsResolved(resolved) else {
                return .failed(.permissionDenied, "outside the whitelist (it resolves to `\(String(decoding: resolved, as: UTF8.self))`)")
            }
            guard try handle.status().st_mode & S_IFMT == S_IFSOCK else { return .failed(.connectionRefused, "not a socket") }
            let socket = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue), nonBlocking: true)
            do {
                _ = try socket.connect(try SocketAddress(unixPath: handle.procfsPath))
                Proxy.enlargeSendBuffer(socket)
                return .connected(socket)
            } catch {
                socket.closeQuietly()
                if error.errno == .wouldBlock { return .busy }
                return .failed(error.errno, "connect: \(error.errno)")
            }
        } catch {
            return .failed(error.errno, "\(error)")
        }
    }

    // MARK: Control socket

    private func acceptControl(_ fd: FileDescriptor) {
        guard !shuttingDown else { return fd.closeQuietly() }
        guard controlClients.count < Limits.controlClients else {
            logger.warning("\(controlClients.count) control clients at once; leaving new ones in the backlog")
            fd.closeQuietly()
            control?.pause()
            return
        }
        let credentials: PeerCredentials
        do { credentials = try fd.peerCredentials() } catch {
            return fd.closeQuietly()
        }
        let connection = ControlConnection(fd: fd, credentials: credentials, proxy: self)
        controlClients[ObjectIdentifier(connection)] = connection
        do {
            try connection.start()
        } catch {
            controlClients[ObjectIdentifier(connection)] = nil
            fd.closeQuietly()
        }
    }

    func controlFinished(_ connection: ControlConnection) {
        controlClients[ObjectIdentifier(connection)] = nil
        if controlClients.count < Limits.controlClients / 2 { control?.resume() }
    }

    /// Whether this client may use the proxy at all (SO_PEERCRED against allow-users).
    private func mayUse(_ connection: ControlConnection, _ path: String) -> Bool {
        guard settings.allowedUsers.contains(connection.credentials.uid) else {
            logger.warning("refusing \(connection.client) a connection to \(path): uid \(connection.credentials.uid) is not in allow-users")
            return false
        }
        guard settings.whitelist.allowsRequested(Array(path.utf8)) else {
            logger.notice("refusing \(connection.client) a connection to \(path): outside the whitelist")
            return false
        }
        return true
    }

    /// libudsproxy.so or `UDSProxyClient` asks for a connection.
    func controlRequest(_ request: UDSProxyControlRequest, from connection: ControlConnection) {
        let label = String(decoding: request.path, as: UTF8.self)
        guard mayUse(connection, label) else { return connection.reply(errno: Errno.permissionDenied.rawValue, socket: nil) }
        guard let link = outgoingLink, let id = link.allocateStreamID() else {
            logger.debug("no link to the peer for \(connection.client)'s connection to \(label)")
            return connection.reply(errno: Errno.noRouteToHost.rawValue, socket: nil)
        }
        let appEnd: FileDescriptor
        let ours: FileDescriptor
        do {
            (appEnd, ours) = try FileDescriptor.socketPair(nonBlocking: true)
        } catch {
            logger.error("cannot make a socket pair for \(connection.client): \(error)")
            return connection.reply(errno: error.errno.rawValue, socket: nil)
        }
        // Larger send buffers than the default 208 KiB: a bulk transfer then needs a quarter of the
        // wakeups. Ours always; the client's only when it is not kept unwritable by filler bytes.
        Proxy.enlargeSendBuffer(ours)
        if !request.nonBlocking { Proxy.enlargeSendBuffer(appEnd) }
        let stream: Stream
        if request.nonBlocking {
            let filler = Proxy.fill(appEnd)
            connection.reply(errno: 0, socket: appEnd)
            appEnd.closeQuietly()
            stream = Stream(id: id, link: link, kind: .socket, label: label, leg: ours, opening: .filler(filler))
        } else {
            stream = Stream(id: id, link: link, kind: .socket, label: label, leg: ours, opening: .control(connection, appEnd: appEnd))
            connection.waitFor(stream)
        }
        link.add(stream)
        stream.requestOpen(path: request.path)
        updateStatus(now: false)
    }

    /// Sets a unix socket's send buffer to `Limits.socketBuffer` (SO_SNDBUFFORCE: root may exceed
    /// net.core.wmem_max; otherwise as far as that allows).
    static func enlargeSendBuffer(_ fd: FileDescriptor) {
        let size = Int32(Limits.socketBuffer)
        if (try? fd.setSocketOption(level: SOL_SOCKET, SO_SNDBUFFORCE, size)) == nil {
            try? fd.setSocketOption(level: SOL_SOCKET, SO_SNDBUF, size)
        }
    }

    /// Queues bytes from `appEnd` to our end until its send buffer is full, so that it polls unwritable
    /// until we read them back (see `UDSProxyControlRequest.nonBlocking`). Returns how many.
    static func fill(_ appEnd: FileDescriptor) -> Int {
        let zeros = [UInt8](repeating: 0, count: 64 << 10)
        var total = 0
        while let written = (try? zeros.withUnsafeBytes { try appEnd.writeSome($0) }) ?? nil, written > 0 {
            total += written
        }
        return total
    }

    /// The original's preload library or kernel hook asks for a connection.
    func legacyRequest(_ request: LegacyUDSProxyRequest, from connection: ControlConnection) {
        var path = request.path
        if path.first != UInt8(ascii: "/") {
            // Relative to the client's working directory, which the original never got right.
            guard let cwd = try? FileDescriptor(rawValue: AT_FDCWD).readLink(Array("/proc/\(connection.credentials.pid)/cwd".utf8)) else {
                return connection.replyLegacy(false)
            }
            path = lexicallyNormalized(path, base: cwd)
        }
        let label = String(decoding: path, as: UTF8.self)
        guard settings.legacyClients else {
            logger.notice("refusing \(connection.client)'s original-protocol request for \(label): legacy-clients = no")
            return connection.replyLegacy(false)
        }
        guard request.socketType == 1 else {
            logger.notice("refusing \(connection.client)'s request for \(label): only stream sockets are proxied")
            return connection.replyLegacy(false)
        }
        guard path.count + LegacyUDSProxyRequest.rendezvousSuffix.count <= Endpoint.maximumUnixPathLength else {
            return connection.replyLegacy(false)
        }
        guard mayUse(connection, label) else { return connection.replyLegacy(false) }
        guard let link = outgoingLink, let id = link.allocateStreamID() else { return connection.replyLegacy(false) }
        let stream = Stream(id: id, link: link, kind: .socket, label: label, leg: nil, opening: .legacy(connection, path: path))
        connection.waitFor(stream)
        link.add(stream)
        stream.requestOpen(path: path)
    }

    // MARK: The original's rendezvous

    func rendezvous(for stream: Stream, path: [UInt8], connection: ControlConnection) {
        let entry = Rendezvous(stream: stream, path: path, requester: connection.credentials)
        pendingLegacyReplies[ObjectIdentifier(entry)] = connection
        rendezvousQueues[path, default: []].append(entry)
        if rendezvousQueues[path]!.count == 1 { beginRendezvous(entry) }
    }

    private func beginRendezvous(_ entry: Rendezvous) {
        let connection = pendingLegacyReplies.removeValue(forKey: ObjectIdentifier(entry))
        guard !shuttingDown else {
            connection?.replyLegacy(false)
            endRendezvous(entry)
            return entry.stream.reset("udsproxyd is stopping")
        }
        let listenPath = entry.listenPath
        do {
            try Socket.removeStaleUnixSocket(listenPath)
            let fd = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue), nonBlocking: true)
            do {
                try fd.bind(SocketAddress(unixPath: listenPath))
                // Only the requesting user can connect (and the pid is checked on accept).
                chown(listenPath, entry.requester.uid, entry.requester.gid)
                chmod(listenPath, 0o600)
                try fd.listen(backlog: 8)
            } catch {
                fd.closeQuietly()
                unlink(listenPath)
                throw error
            }
            let listener = Listener(fd: fd, name: "rendezvous \(listenPath)", reactor: reactor, logger: logger) {
                [unowned self, unowned entry] client in
                rendezvousAccepted(entry, client)
            }
            try listener.start()
            entry.listener = listener
        } catch {
            logger.warning("cannot listen on \(listenPath) for \(entry.stream.label): \(error)")
            connection?.replyLegacy(false)
            endRendezvous(entry)
            entry.stream.reset("no rendezvous socket")
            return
        }
        entry.timer = reactor.schedule(after: Limits.rendezvousTimeout) { [weak self, weak entry] in
            guard let self, let entry else { return }
            self.logger.notice("nobody connected to \(listenPath) within \(Limits.rendezvousTimeout)")
            self.endRendezvous(entry)
            entry.stream.reset("the original client never connected")
        }
        if let connection, case .waiting = connection.state {
            connection.replyLegacy(true)
        } else {
            // The client left before it was told where to connect.
            endRendezvous(entry)
            entry.stream.reset("the client went away")
        }
    }

    private func rendezvousAccepted(_ entry: Rendezvous, _ client: FileDescriptor) {
        guard let credentials = try? client.peerCredentials(), credentials.pid == entry.requester.pid else {
            let who = (try? client.peerCredentials()).map { "pid \($0.pid) (uid \($0.uid))" } ?? "an unknown process"
            logger.warning("\(who) connected to \(entry.listenPath), which waits for pid \(entry.requester.pid); refused")
            return client.closeQuietly()
        }
        endRendezvous(entry)
        entry.stream.rendezvousDone(client)
    }

    func rendezvousCancelled(for stream: Stream) {
        for (_, queue) in rendezvousQueues {
            if let entry = queue.first(where: { $0.stream === stream }) {
                pendingLegacyReplies.removeValue(forKey: ObjectIdentifier(entry))?.replyLegacy(false)
                endRendezvous(entry)
                return
            }
        }
    }

    /// Removes the listener and its file, and lets the next request for the path have it.
    private func endRendezvous(_ entry: Rendezvous) {
        reactor.cancel(entry.timer)
        entry.timer = nil
        if let listener = entry.listener {
            listener.close()
            unlink(entry.listenPath)
            entry.listener = nil
        }
        guard var queue = rendezvousQueues[entry.path] else { return }
        let wasFirst = queue.first === entry
        queue.removeAll { $0 === entry }
        rendezvousQueues[entry.path] = queue.isEmpty ? nil : queue
        if wasFirst, let next = queue.first { reactor.later { [self] in beginRendezvous(next) } }
    }

    // MARK: Reload and shutdown

    func reload(_ new: UDSProxySettings) {
        if new.listen != settings.listen || new.peer != settings.peer || new.control != settings.control {
            logger.warning("listen, peer and control changed in the configuration; they take effect when udsproxyd restarts")
        }
        var kept = new
        kept.listen = settings.listen
        kept.peer = settings.peer
        kept.control = settings.control
        settings = kept
        logger.info("whitelist (\(new.whitelistSource)): \(new.whitelist.summary)")
        updateStatus(now: true)
    }

    /// Stops accepting, tells the peer, and stops the reactor once what is buffered has been written
    /// (at most `Limits.drainTimeout`).
    func shutDown() {
        guard !shuttingDown else { return }
        shuttingDown = true
        reactor.cancel(retryTimer)
        control?.close()
        control = nil
        if let path = controlPathCreated { unlink(path) }
        for listener in peerListeners { listener.close() }
        peerListeners.removeAll()
        for entry in rendezvousQueues.values.flatMap({ $0 }) { endRendezvous(entry) }
        for link in links { link.goAway("udsproxyd is stopping") }
        let deadline = Reactor.now() + Limits.drainTimeout.nanoseconds
        waitForDrain(deadline)
    }

    private func waitForDrain(_ deadline: UInt64) {
        if links.allSatisfy({ $0.pendingOutput == 0 }) || Reactor.now() >= deadline { return stopNow() }
        reactor.schedule(after: .milliseconds(20)) { [weak self] in self?.waitForDrain(deadline) }
    }

    private func finishShutdownIfIdle() {
        if links.isEmpty && !stopped { stopNow() }
    }

    /// Closes everything at once and ends the reactor.
    func stopNow() {
        guard !stopped else { return }
        stopped = true
        shuttingDown = true
        control?.close()
        control = nil
        if let path = controlPathCreated { unlink(path) }
        controlPathCreated = nil
        for listener in peerListeners { listener.close() }
        peerListeners.removeAll()
        for link in links { link.fail("udsproxyd is stopping") }
        for connection in controlClients.values { connection.reply(errno: Errno.connectionRefused.rawValue, socket: nil) }
        reactor.stop()
    }

    // MARK: Status

    func streamsChanged() {
        updateStatus(now: false)
    }

    /// Publishes the status line: at once for link changes, at most every second for connection counts
    /// (which change with every connection: the line is not even computed more often).
    private func updateStatus(now: Bool) {
        if now {
            reactor.cancel(statusTimer)
            statusTimer = nil
            publishAndNotify()
        } else if statusTimer == nil {
            statusTimer = reactor.schedule(after: .seconds(1)) { [weak self] in
                self?.statusTimer = nil
                self?.publishAndNotify()
            }
        }
    }

    private func publishAndNotify() {
        let text = statusLine()
        board.setStatus(text)
        guard text != lastStatus else { return }
        lastStatus = text
        do { try Systemd.notify(.status(text)) } catch { logger.debug("cannot send STATUS: \(error)") }
    }

    func statusLine() -> String {
        let up = links.filter(\.isUp)
        let connections = up.reduce(0) { count, link in count + link.streams.values.filter { $0.kind == .socket }.count }
        var parts: [String] = []
        if let peer = settings.peer {
            if let dialed, dialed.isUp {
                parts.append("linked to \(peer)")
            } else if let error = lastDialError {
                let seconds = Double(nextRetryAt > Reactor.now() ? nextRetryAt - Reactor.now() : 0) / 1e9
                let retry = (seconds * 10).rounded() / 10
                parts.append("peer \(peer) unreachable (\(error)), attempt \(dialFailures + 1) in \(retry) s")
            } else {
                parts.append("connecting to \(peer)")
            }
        }
        let accepted = up.filter { $0.role == .acceptor }
        if !accepted.isEmpty {
            parts.append("peer connected from \(accepted.map(\.remote).joined(separator: ", "))")
        } else if !peerListeners.isEmpty && settings.peer == nil {
            parts.append("waiting for the peer on \(listenerNames.joined(separator: ", "))")
        }
        if shuttingDown { parts.append("stopping") }
        parts.append("\(connections) connection\(connections == 1 ? "" : "s")")
        return parts.joined(separator: "; ")
    }
}

extension String {
    fileprivate func replacingPrefix(_ prefix: String) -> String {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
    }
}

/// A udsproxyd start-up or configuration problem, said in one line.
public struct UDSProxyError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

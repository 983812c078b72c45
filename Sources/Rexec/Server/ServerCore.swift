import DPUConfig
import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import Synchronization
import SystemPackage

/// A session the server runs for one connection (the native protocol or the original's).
protocol ServerSession: AnyObject {
    /// The program's pid once started.
    var pid: pid_t? { get }
    /// The program stopped or continued (from SIGCHLD).
    func childStateChanged(_ change: ChildStateChange)
    /// The server is stopping: tell the client, apply `policy` to the program.
    func shutDown(_ policy: RexecServerSettings.StopPolicy)
}

/// Everything of the server that lives on its event loop thread: listeners, connections in their
/// handshake, sessions, the SIGCHLD wake-up. Only `execute` is called from other threads.
final class ServerCore {
    let loop: IOLoop
    let logger: Logger
    let settings: RexecServerSettings
    private(set) var whitelist: Whitelist
    private var listeners: [Listener] = []
    private var pending: [ObjectIdentifier: PendingConnection] = [:]
    private var sessions: [ObjectIdentifier: ServerSession] = [:]
    private var byPID: [pid_t: ServerSession] = [:]
    private let childEvents: EventCounter
    private(set) var stopping = false
    private var nextSession: UInt64 = 1
    private var lastRefusalLog: UInt64 = 0
    /// Counters for STATUS= (read from other threads through `Snapshot`).
    let snapshot: Snapshot

    final class Listener {
        let fd: FileDescriptor
        let endpoint: Endpoint
        var key: PreSharedKey?
        var registration: IOLoop.Registration?
        /// We created its socket file (socket-activated ones belong to systemd): removed on stop.
        let ownsPath: Bool
        /// Accepting stopped because max-pending connections are opening.
        var paused = false
        var isUnix: Bool { if case .unix = endpoint { true } else { false } }
        init(fd: FileDescriptor, endpoint: Endpoint, key: PreSharedKey?, ownsPath: Bool) {
            self.fd = fd
            self.endpoint = endpoint
            self.key = key
            self.ownsPath = ownsPath
        }
    }

    init(settings: RexecServerSettings, whitelist: Whitelist, logger: Logger, snapshot: Snapshot) throws(SystemError) {
        loop = try IOLoop()
        self.settings = settings
        self.whitelist = whitelist
        self.logger = logger
        self.snapshot = snapshot
        childEvents = try EventCounter()
    }

    /// Adopts listening sockets (already bound: ours or socket-activated).
    func adopt(_ fd: FileDescriptor, endpoint: Endpoint, key: PreSharedKey?, ownsPath: Bool) throws(SystemError) {
        try fd.setNonBlocking()
        if case .tcp = endpoint {
            // Set once here: every connection accepted from a TCP listener starts with its options (six
            // system calls fewer per connection). Requests go out as written; a DPU that vanishes (cable,
            // reset) is noticed within `keepalive` seconds, idle or not.
            let seconds = Int32(settings.keepalive)
            try? fd.setSocketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            try? fd.enableKeepAlive(idleSeconds: max(1, seconds / 2), intervalSeconds: max(1, seconds / 6), probes: 3)
            try? fd.setSocketOption(level: Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, seconds * 1000)
        }
        let listener = Listener(fd: fd, endpoint: endpoint, key: key, ownsPath: ownsPath)
        listener.registration = try loop.register(fd) { [unowned self, unowned listener] _ in accept(listener) }
        listeners.append(listener)
    }

    /// Starts watching SIGCHLD (stops and continues of programs; their exits come through pidfds).
    func watchChildren() throws(SystemError) {
        _ = try loop.register(childEvents.fd, readOnly: true) { [unowned self] _ in
            childEvents.drain()
            while let change = ChildStateChange.next() {
                switch change {
                case .stopped(let pid, _), .continued(let pid):
                    byPID[pid]?.childStateChanged(change)
                }
            }
        }
        try Signals.wake(childEvents, on: SIGCHLD)
    }

    /// New keys and whitelist (SIGHUP): new connections use them; running sessions are untouched.
    func reload(whitelist: Whitelist, keys: [Endpoint: PreSharedKey?]) {
        self.whitelist = whitelist
        for listener in listeners { if let key = keys[listener.endpoint] { listener.key = key } }
    }

    // MARK: connections

    private func accept(_ listener: Listener) {
        while !stopping {
            if pending.count >= settings.maximumPending && !evictStalledConnection() {
                // A burst of new connections: leave the rest in the kernel's backlog until handshakes
                // finish (they take one round trip), rather than refusing clients that did nothing wrong.
                listener.paused = true
                return
            }
            let accepted: FileDescriptor?
            do { accepted = try listener.fd.accept(nonBlocking: true) } catch {
                switch error.errno.rawValue {
                case ECONNABORTED, EPROTO, EPERM: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of fds: leave the rest in the backlog and look again shortly.
                    refuse("cannot accept on \(listener.endpoint): \(error.errno); retrying in 100 ms")
                    loop.schedule(after: .milliseconds(100)) { [unowned self, unowned listener] in accept(listener) }
                    return
                default:
                    logger.error("accept on \(listener.endpoint): \(error)")
                    return
                }
            }
            guard let fd = accepted else { return }
            var peer = "unknown peer"
            var refusal: String?
            if sessions.count >= settings.maximumSessions {
                refusal = "the server runs \(sessions.count) sessions, its limit (max-sessions); try again later"
            }
            if listener.isUnix {
                guard let credentials = try? fd.peerCredentials() else {
                    fd.closeQuietly()
                    continue
                }
                peer = "pid \(credentials.pid) uid \(credentials.uid)"
                fd.enlargeSendBuffer()
                if !settings.allowedUIDs.contains(credentials.uid) {
                    refusal = "uid \(credentials.uid) may not use \(listener.endpoint) (the server's allow-uid)"
                }
            } else {
                peer = (try? fd.peerAddress().description) ?? peer
            }
            if let refusal { refuse("refused \(peer) on \(listener.endpoint): \(refusal)") }
            let connection = PendingConnection(core: self, fd: fd, listener: listener, peer: peer, refusal: refusal)
            pending[ObjectIdentifier(connection)] = connection
            connection.start()
        }
        snapshot.update(sessions: sessions.count, pending: pending.count)
    }

    /// Drops the connection that has been opening longest, if it has taken half the handshake limit (a
    /// handshake takes one round trip; a busy machine may need a little longer): a peer that holds
    /// connections half-open cannot lock others out for longer than that.
    private func evictStalledConnection() -> Bool {
        let now = IOLoop.now()
        let limit = UInt64(settings.handshakeTimeout.components.seconds) * 500_000_000
        guard let oldest = pending.values.min(by: { $0.since < $1.since }), now - oldest.since > limit else {
            return false
        }
        refuse("dropped \(oldest.peer): still opening after \((now - oldest.since) / 1_000_000) ms while \(pending.count) connections wait (max-pending)")
        oldest.close()
        pending[ObjectIdentifier(oldest)] = nil
        return true
    }

    /// Logs a refusal, at most a few per second (a flood must not flood the journal too).
    private func refuse(_ message: String) {
        let now = IOLoop.now()
        if now - lastRefusalLog > 200_000_000 {
            lastRefusalLog = now
            logger.warning("\(message)")
        }
    }

    func pendingEnded(_ connection: PendingConnection) {
        pending[ObjectIdentifier(connection)] = nil
        snapshot.update(sessions: sessions.count, pending: pending.count)
        for listener in listeners where listener.paused {
            listener.paused = false
            loop.later { [unowned self, unowned listener] in accept(listener) }
        }
    }

    func sessionID() -> UInt64 {
        defer { nextSession += 1 }
        return nextSession
    }

    func add(_ session: ServerSession) {
        sessions[ObjectIdentifier(session)] = session
        snapshot.update(sessions: sessions.count, pending: pending.count)
    }

    func started(_ session: ServerSession, pid: pid_t) {
        byPID[pid] = session
        snapshot.started()
    }

    /// Daemons that sessions follow (`qemu -daemonize`): no other session may claim them.
    private var followed: Set<pid_t> = []

    func follows(_ pid: pid_t, _ yes: Bool) {
        if yes { followed.insert(pid) } else { followed.remove(pid) }
    }

    /// Whether a session already owns `pid` (its program, or a daemon it follows).
    func owns(_ pid: pid_t) -> Bool { byPID[pid] != nil || followed.contains(pid) }

    /// Forgets a finished session — after the current batch of events: it may be deep in its own
    /// callbacks now, and must outlive them.
    func remove(_ session: ServerSession) {
        loop.later { [self] in forget(session) }
    }

    private func forget(_ session: ServerSession) {
        sessions[ObjectIdentifier(session)] = nil
        if let pid = session.pid, byPID[pid] === session { byPID[pid] = nil }
        snapshot.update(sessions: sessions.count, pending: pending.count)
        if stopping && sessions.isEmpty { loop.stop() }
    }

    // MARK: stopping

    /// SIGTERM: stop accepting, tell every client, apply the stop policy; the loop ends when every
    /// session has let go.
    func shutDown() {
        guard !stopping else { return }
        stopping = true
        for listener in listeners {
            if let registration = listener.registration { loop.unregister(registration, listener.fd) }
            listener.fd.closeQuietly()
            if case .unix(let path) = listener.endpoint, listener.ownsPath { unlink(path) }
        }
        listeners = []
        for connection in pending.values { connection.close() }
        pending = [:]
        for session in Array(sessions.values) { session.shutDown(settings.stopPolicy) }
        if sessions.isEmpty { loop.stop() }
    }
}

/// Numbers other threads may read (the STATUS= line).
final class Snapshot: Sendable {
    private let state = Mutex<(sessions: Int, pending: Int, started: Int)>((0, 0, 0))
    func update(sessions: Int, pending: Int) { state.withLock { $0.sessions = sessions; $0.pending = pending } }
    func started() { state.withLock { $0.started += 1 } }
    var line: String {
        state.withLock { "\($0.sessions) session\($0.sessions == 1 ? "" : "s"), \($0.started) program\($0.started == 1 ? "" : "s") started" }
    }
}

/// A connection before its session: protocol detection (the original client's first bytes differ from
/// dpuctl's hello), then the handshake. Bounded in time (`handshakeTimeout`) and size.
final class PendingConnection {
    unowned let core: ServerCore
    let end: LocalEnd
    let listener: ServerCore.Listener
    let peer: String
    /// Why this connection will be refused once it has said who it is (nil: it is welcome).
    let refusal: String?
    /// When it was accepted (monotonic ns).
    let since = IOLoop.now()
    private var handshake: Handshake?
    private var input = ByteBuffer()
    private var output = ByteBuffer()
    private var timer: IOLoop.TimerID?
    private var done = false

    init(core: ServerCore, fd: FileDescriptor, listener: ServerCore.Listener, peer: String, refusal: String?) {
        self.core = core
        self.end = LocalEnd(fd: fd, owned: true)
        self.listener = listener
        self.peer = peer
        self.refusal = refusal
    }

    func start() {
        end.onReady = { [unowned self] in progress() }
        do { try end.watch(core.loop) } catch {
            return fail("cannot watch: \(error)")
        }
        timer = core.loop.schedule(after: core.settings.handshakeTimeout) { [unowned self] in
            fail("no request within \(core.settings.handshakeTimeout)")
        }
        // The client says hello right after connecting, so it is usually here already: answer it now
        // rather than after another turn of the loop (an empty socket just says EAGAIN).
        end.readable = true
        progress()
    }

    private func progress() {
        guard !done else { return }
        if handshake == nil {
            guard end.readable else { return }
            // Peek: the original client's first message carries an fd that a plain read would drop.
            var first: UInt8 = 0
            let count = recv(end.fd.rawValue, &first, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if count < 0 {
                if errno == EAGAIN { end.readable = false; return }
                return fail("connection error: \(Errno(rawValue: errno))")
            }
            if count == 0 { return fail(nil) }
            if LegacyRexecHeader.looksLegacy(first) {
                // The original protocol has no way to say why: a refusal is a closed connection.
                if refusal != nil { return fail(nil) }
                guard listener.isUnix else {
                    return fail("speaks the original rexec protocol, which only the unix socket serves")
                }
                return handOver { LegacySession(core: core, end: end, peer: peer) }
            }
            guard first == Hello.magic[0] else { return fail("does not speak the rexec protocol (first byte 0x\(String(first, radix: 16)))") }
            handshake = Handshake(
                role: .server, service: .rexec, capabilities: RexecCapability.supported, key: listener.key, nonce: randomBytes(Hello.nonceSize))
        }
        while end.readable && !done {
            var outcome = LocalEnd.IOResult.wouldBlock
            input.writeWithUnsafeMutableBytes(minimumWritableBytes: 1024) { raw -> Int in
                outcome = end.read(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(4096)))
                if case .bytes(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .bytes: break
            case .wouldBlock: break
            case .endOfFile: return fail(nil)
            case .failed(let error): return fail("\(error)")
            }
            guard input.readableBytes <= Frame.maximumPayload + 2 * Frame.headerSize + Hello.size else {
                return fail("sent more than a handshake and a request without finishing the handshake")
            }
            do {
                switch try handshake!.feed(&input) {
                case .continue(let send):
                    var send = send
                    output.writeBuffer(&send)
                    flush()
                case .finished(let send, let result):
                    var send = send
                    output.writeBuffer(&send)
                    if let refusal {
                        // Opened only to say why it is refused, in a way the client can print.
                        ConnectionMessage.goAway(.refused, reason: refusal).frame.encode(into: &output)
                        flush()
                        return fail(nil)
                    }
                    let leftover = input
                    let greeting = output
                    return handOver {
                        NativeSession(
                            core: core, end: end, leftover: leftover, greeting: greeting, capabilities: result.capabilities, peer: peer,
                            via: listener.endpoint)
                    }
                case .rejected(let send, let error):
                    var send = send
                    output.writeBuffer(&send)
                    flush()
                    return fail("refused: \(error.message)")
                }
            } catch {
                return fail("handshake failed: \(error.message)")
            }
            if case .wouldBlock = outcome { return }
        }
    }

    private func flush() {
        while output.readableBytes > 0 {
            let result = output.readableBytesView.withUnsafeBytes { end.write($0) }
            guard case .bytes(let count) = result else { return }
            output.moveReaderIndex(forwardBy: count)
        }
    }

    private func handOver(_ make: () -> ServerSession?) {
        done = true
        if let timer { core.loop.cancel(timer) }
        end.onReady = nil
        // A connection that has carried only a handshake has room: the session's first frames (STARTED)
        // go out as soon as they are queued, not a turn of the loop later when the writable edge that the
        // registration queued is reported. A write that finds no room clears this again.
        end.writable = true
        core.pendingEnded(self)
        if let session = make() { core.add(session) }
    }

    private func fail(_ why: String?) {
        guard !done else { return }
        if let why { core.logger.notice("\(peer) via \(listener.endpoint): \(why)") }
        close()
        core.pendingEnded(self)
    }

    func close() {
        done = true
        if let timer { core.loop.cancel(timer) }
        end.close(core.loop)
    }
}

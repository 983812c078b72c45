import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import QTFS
import SystemPackage
import Synchronization

/// One connection of the pool as a request sees it: which slot, which incarnation, and the export id the
/// engine gave this connection.
struct Link: Sendable, Equatable {
    var slot: Int
    var generation: UInt64
    var export: UInt32
}

/// What the pool does with a request whose connection broke before the answer came.
enum Retry: Sendable {
    /// Send it again once a connection is back (the request is idempotent).
    case resend
    /// Fail it with EIO (it may or may not have happened on the host).
    case fail
}

/// A request on its way: how to encode it for a connection, what to do with the answer.
final class Outgoing: @unchecked Sendable {
    let operation: QTFSOperation
    /// Builds the request for `link`; nil if it cannot be sent there (a handle of another connection).
    let encode: (Link) -> QTFSRequest?
    /// A slot this request must use (handles belong to their connection), with the generation it expects.
    let pinned: Link?
    let retry: Retry
    /// Called once with the answer and the connection it came on (nil when there was none).
    let complete: (Result<QTFSReply, Errno>, Link?) -> Void
    /// Set when the FUSE request was interrupted.
    let cancelled = Atomic<Bool>(false)
    var deadline: UInt64 = 0

    init(
        _ operation: QTFSOperation, pinned: Link? = nil, retry: Retry? = nil,
        encode: @escaping (Link) -> QTFSRequest?, complete: @escaping (Result<QTFSReply, Errno>, Link?) -> Void
    ) {
        self.operation = operation
        self.encode = encode
        self.pinned = pinned
        self.retry = retry ?? (operation.isIdempotent ? .resend : .fail)
        self.complete = complete
    }
}

/// The pool of multiplexed connections to the engine. Any number of requests are in flight on each; a
/// connection that breaks is redialled in the background, with every request that can safely be sent
/// again sent again, so that a restart of the engine is a pause, not an error.
final class EngineClient: Sendable {
    let endpoint: Endpoint
    let key: PreSharedKey?
    let hostPath: [UInt8]
    let logger: Logger
    /// How long a request waits for a connection before it fails with EIO.
    let patience: Duration
    let slots: [Slot]
    private let waiting = Mutex([Outgoing]())
    private let nextSlot = Atomic<Int>(0)
    private let info = Mutex<QTFSExportInfo?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// Called with a poll id when the engine says a polled file may be ready.
    let pollReady = Mutex<(@Sendable (UInt64) -> Void)?>(nil)

    init(endpoint: Endpoint, key: PreSharedKey?, hostPath: [UInt8], connections: Int, patience: Duration, logger: Logger) {
        self.endpoint = endpoint
        self.key = key
        self.hostPath = hostPath
        self.logger = logger
        self.patience = patience
        slots = (0..<max(1, connections)).map { Slot(index: $0) }
    }

    /// What the engine said about the export at the first successful attach.
    var export: QTFSExportInfo? { info.withLock { $0 } }

    /// Opens every connection once, failing with the reason if not even the first one can be opened (a
    /// mount must fail visibly, not hang), then keeps them open in the background.
    func start() throws(ConnectionError) {
        let first = try dial(slots[0])
        slots[0].up(first)
        info.withLock { $0 = first.info }
        do {
            try OSThread.start(name: "qtfs-reader") { [self] in read(slots[0], first) }
        } catch {
            throw .system(error)
        }
        for slot in slots.dropFirst() {
            try? OSThread.start(name: "qtfs-dialer") { [self] in keepConnected(slot, delay: false) }
        }
        try? OSThread.start(name: "qtfs-timeouts") { [self] in expireWaiting() }
    }

    /// Closes every connection and waits (up to 5 s) until every request has been answered, with EIO if
    /// need be: afterwards no answer can reach the kernel session any more.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        shutDownConnections()
        for _ in 0..<250 where readers.load(ordering: .relaxed) > 0 {
            shutDownConnections()
            usleep(20_000)
        }
        flushWaitingAsFailed()
    }

    private func shutDownConnections() {
        for slot in slots { slot.current?.socket.shutdown() }
        for connection in leaving.withLock({ Array($0.values) }) { connection.socket.shutdown() }
    }

    /// Connections the engine told to go, still reading their last answers (no longer in a slot).
    private let leaving = Mutex([ObjectIdentifier: ClientConnection]())

    /// Reader threads running (each answers the requests of its connection).
    private let readers = Atomic<Int>(0)

    // MARK: Sending

    /// Sends `request` on a connection (its pinned one, or the next one that is up). If none is up it
    /// waits for one, up to `patience`.
    func send(_ request: Outgoing) {
        if request.cancelled.load(ordering: .relaxed) { return request.complete(.failure(.interrupted), nil) }
        if stopped.load(ordering: .relaxed) { return request.complete(.failure(.ioError), nil) }
        let candidates: [Slot]
        if let pinned = request.pinned {
            candidates = [slots[pinned.slot]]
        } else {
            let start = nextSlot.wrappingAdd(1, ordering: .relaxed).oldValue
            candidates = (0..<slots.count).map { slots[(start + $0) % slots.count] }
        }
        for slot in candidates {
            guard let connection = slot.current else { continue }
            if let pinned = request.pinned, pinned.generation != connection.link.generation {
                // The handle died with its connection: the caller reopens and tries again.
                return request.complete(.failure(.staleNFSFileHandle), nil)
            }
            guard let message = request.encode(connection.link) else {
                return request.complete(.failure(.staleNFSFileHandle), nil)
            }
            if connection.send(message, request) { return }
        }
        if request.pinned != nil, slots[request.pinned!.slot].current == nil, stopped.load(ordering: .relaxed) {
            return request.complete(.failure(.ioError), nil)
        }
        park(request)
    }

    private func park(_ request: Outgoing) {
        if stopped.load(ordering: .relaxed) { return request.complete(.failure(.ioError), nil) }
        request.deadline = monotonicNanoseconds() + UInt64(patience.components.seconds) * 1_000_000_000
        waiting.withLock { $0.append(request) }
        // A connection it can use may have come up between the attempt and the parking. Only one it can
        // use: a request pinned to a slot that is down would otherwise be sent and parked again at once,
        // without end, while another slot is up.
        if hasConnection(for: request) { flushWaiting() }
    }

    private func hasConnection(for request: Outgoing) -> Bool {
        if let pinned = request.pinned { return slots[pinned.slot].current != nil }
        return slots.contains { $0.current != nil }
    }

    private func flushWaiting() {
        let parked = waiting.withLock { list in
            defer { list = [] }
            return list
        }
        for request in parked { send(request) }
    }

    private func expireWaiting() {
        while !stopped.load(ordering: .relaxed) {
            usleep(200_000)
            let now = monotonicNanoseconds()
            let expired = waiting.withLock { list -> [Outgoing] in
                let gone = list.filter { $0.deadline <= now || $0.cancelled.load(ordering: .relaxed) }
                list.removeAll { $0.deadline <= now || $0.cancelled.load(ordering: .relaxed) }
                return gone
            }
            for request in expired {
                request.complete(.failure(request.cancelled.load(ordering: .relaxed) ? .interrupted : .ioError), nil)
            }
        }
        flushWaitingAsFailed()
    }

    private func flushWaitingAsFailed() {
        let parked = waiting.withLock { list in
            defer { list = [] }
            return list
        }
        for request in parked { request.complete(.failure(.ioError), nil) }
    }

    /// The FUSE request behind `request` was interrupted: tell the engine to give up on it.
    func cancel(_ request: Outgoing) {
        request.cancelled.store(true, ordering: .relaxed)
        for slot in slots { slot.current?.cancel(request) }
    }

    // MARK: Connections

    private func dial(_ slot: Slot) throws(ConnectionError) -> ClientConnection {
        let fd: FileDescriptor
        do { fd = try Socket.connect(to: endpoint) } catch { throw .system(error) }
        if case .tcp = endpoint { try? fd.enableKeepAlive(idleSeconds: 10, intervalSeconds: 5, probes: 3) }
        // An engine that stops reading (stopped, deadlocked, its host overloaded) must not hold FUSE
        // workers in a send for good: a request that cannot go out for 30 s ends the connection, and
        // what was waiting on it goes to the next one.
        try? fd.setSendTimeout(seconds: 30)
        let (socket, _) = try FramedSocket.open(fd, role: .client, key: key)
        // The first request of every connection attaches the export; its id is per connection.
        var request = ByteBuffer()
        QTFSRequest.attach(hostPath: hostPath).encodeFrame(id: 1, into: &request)
        do { try socket.send(request) } catch { throw .system(error) }
        guard let frame = try socket.readFrame() else { throw .closed("the engine closed the connection") }
        if frame.type == .goAway, case .goAway(_, let reason) = try? ConnectionMessage(frame) {
            throw .closed("the engine refused: \(reason)")
        }
        guard frame.type == .qtfsReply, frame.stream == 1 else { throw .closed("the engine answered ATTACH with \(frame.type)") }
        let result: Result<QTFSReply, QTFSFailure>
        do { result = try QTFSReply.decode(frame.payload, for: .attach) } catch { throw .wire(error) }
        switch result {
        case .success(.attached(let info)):
            let link = Link(slot: slot.index, generation: slot.nextGeneration(), export: info.export)
            return ClientConnection(socket: socket, link: link, info: info)
        case .failure(let failure):
            let reason = failure.errno == EACCES
                ? "the engine does not export \(describe(hostPath)) (check the host's whitelist [Mount])"
                : "the engine cannot attach \(describe(hostPath)): \(Errno(rawValue: failure.errno))"
            throw .closed(reason)
        default:
            throw .closed("the engine answered ATTACH with something else")
        }
    }

    /// Dials `slot` until it is up (backing off to 1 s), then reads from it until it breaks.
    private func keepConnected(_ slot: Slot, delay: Bool) {
        var pause: UInt32 = delay ? 100_000 : 0
        while !stopped.load(ordering: .relaxed) {
            if pause > 0 { usleep(pause) }
            do {
                let connection = try dial(slot)
                slot.up(connection)
                info.withLock { $0 = $0 ?? connection.info }
                logger.info("connection \(slot.index) to \(endpoint) is up")
                flushWaiting()
                read(slot, connection)
                return
            } catch {
                if pause >= 1_000_000 { logger.debug("connection \(slot.index) to \(endpoint): \(error)") }
                pause = min(max(pause * 2, 100_000), 1_000_000)
            }
        }
    }

    /// The reader of one connection: answers go to their requests; at the end, what is pending is sent
    /// again or failed, and the slot is redialled.
    private func read(_ slot: Slot, _ connection: ClientConnection) {
        readers.add(1, ordering: .relaxed)
        defer { readers.subtract(1, ordering: .relaxed) }
        var reason = "closed by the engine"
        while true {
            let frame: Frame?
            do { frame = try connection.socket.readFrame() } catch {
                reason = "\(error)"
                break
            }
            guard let frame else { break }
            if frame.type == .qtfsReply {
                connection.answer(frame)
            } else if frame.type == .qtfsPollReady, let id = try? QTFSPollReady.decode(frame) {
                pollReady.withLock { $0 }?(id)
            } else if frame.type == .goAway {
                // The engine is stopping (or dropping this connection). Nothing new goes on it: new
                // requests take another connection or wait for the next one. Our end of the stream tells
                // the engine that all we sent is in its hands; it answers that, then closes. (Without it,
                // a request on its way when the engine closed would be lost, and a MKDIR or a write
                // cannot simply be sent again.)
                leaving.withLock { $0[ObjectIdentifier(connection)] = connection }
                slot.down(connection)
                connection.drain()
                continue
            } else if frame.type == .ping, case .ping(let value) = try? ConnectionMessage(frame) {
                try? connection.socket.send(ConnectionMessage.pong(value).frame)
            }
        }
        slot.down(connection)
        leaving.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(connection)) }
        connection.socket.shutdown()
        if stopped.load(ordering: .relaxed) {
            for request in connection.takePending() { request.complete(.failure(.ioError), nil) }
            return
        }
        logger.warning("connection \(slot.index) to \(endpoint) lost (\(reason)); reconnecting")
        for request in connection.takePending() {
            switch request.retry {
            case .resend where request.pinned == nil: send(request)
            case .resend: request.complete(.failure(.staleNFSFileHandle), nil)
            case .fail: request.complete(.failure(.ioError), nil)
            }
        }
        try? OSThread.start(name: "qtfs-dialer") { [self] in keepConnected(slot, delay: true) }
    }
}

/// One slot of the pool: the current connection, if any.
final class Slot: Sendable {
    let index: Int
    private let state = Mutex<(connection: ClientConnection?, generation: UInt64)>((nil, 0))

    init(index: Int) { self.index = index }

    var current: ClientConnection? { state.withLock { $0.connection } }

    func nextGeneration() -> UInt64 { state.withLock { state in state.generation += 1; return state.generation } }

    func up(_ connection: ClientConnection) { state.withLock { $0.connection = connection } }

    func down(_ connection: ClientConnection) {
        state.withLock { if $0.connection === connection { $0.connection = nil } }
    }
}

/// One authenticated connection with its requests in flight.
final class ClientConnection: Sendable {
    let socket: FramedSocket
    let link: Link
    let info: QTFSExportInfo
    private let pending = Mutex((next: UInt32(2), requests: [UInt32: Outgoing](), closed: false, draining: false))

    init(socket: FramedSocket, link: Link, info: QTFSExportInfo) {
        self.socket = socket
        self.link = link
        self.info = info
    }

    /// Registers and writes `message`; false if the connection is closed or draining (nothing was sent).
    func send(_ message: QTFSRequest, _ request: Outgoing) -> Bool {
        let id = pending.withLock { state -> UInt32? in
            guard !state.closed, !state.draining else { return nil }
            var id = state.next
            while id == 0 || state.requests[id] != nil { id &+= 1 }
            state.next = id &+ 1
            state.requests[id] = request
            return id
        }
        guard let id else { return false }
        var buffer = ByteBuffer()
        message.encodeFrame(id: id, into: &buffer)
        do {
            try socket.send(buffer)
        } catch {
            // Draining began between the registration and the write: the request was not sent.
            let unsent = pending.withLock { state -> Bool in
                guard state.draining, state.requests[id] === request else { return false }
                state.requests[id] = nil
                return true
            }
            if unsent { return false }
            // The reader sees the broken connection and deals with the request.
            socket.shutdown()
        }
        return true
    }

    /// The engine said it is going away: no new requests; our end of the stream once a frame being
    /// written is whole. Answers to what was sent still come.
    func drain() {
        pending.withLock { $0.draining = true }
        socket.finishSending()
    }

    /// The engine's errno as the FUSE kernel may be given it. The kernel refuses an error of 512 or
    /// more (its own internal codes, such as ENOTSUPP 524, which host sysfs and cgroup files do leak)
    /// before it finds the request, which then never ends: its caller would wait, unkillable, until the
    /// mount goes. And ENOSYS to OPEN, FSYNC, CREATE, POLL or an xattr call switches that operation off
    /// for the whole mount: a host file system that lacks it must not do that to every file.
    static func localErrno(_ raw: Int32) -> Errno {
        switch raw {
        case ENOSYS, 524: return .notSupported
        case 1..<512: return Errno(rawValue: raw)
        default: return .ioError
        }
    }

    func answer(_ frame: Frame) {
        guard let request = pending.withLock({ $0.requests.removeValue(forKey: frame.stream) }) else { return }
        do {
            switch try QTFSReply.decode(frame.payload, for: request.operation) {
            case .success(let reply): request.complete(.success(reply), link)
            case .failure(let failure): request.complete(.failure(Self.localErrno(failure.errno)), link)
            }
        } catch {
            request.complete(.failure(.ioError), link)
        }
    }

    func cancel(_ request: Outgoing) {
        guard let id = pending.withLock({ state in state.requests.first { $0.value === request }?.key }) else { return }
        try? socket.send(Frame(type: .qtfsCancel, stream: id))
    }

    /// Everything still unanswered; the connection takes no new requests afterwards.
    func takePending() -> [Outgoing] {
        pending.withLock { state in
            state.closed = true
            defer { state.requests = [:] }
            return Array(state.requests.values)
        }
    }
}

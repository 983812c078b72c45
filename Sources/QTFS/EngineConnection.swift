import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import Synchronization

/// One client connection on the engine: a reader thread that decodes requests and hands them to the
/// pools, replies written by whichever worker finished. Requests run concurrently and are answered in
/// any order. A malformed frame ends this connection and nothing else.
final class EngineConnection: Sendable {
    let id: UInt64
    let socket: FramedSocket
    let session: EngineSession
    let peer: String
    private let engine: EngineCore
    /// Requests being worked on, by id, to cancel them.
    private let inFlight = ConditionLock([UInt32: Cancellation]())
    /// Set once GOAWAY was sent because the engine is stopping.
    private let goingAway = Atomic<Bool>(false)
    /// Replies being sent: a request leaves `inFlight` before its reply goes (its id may be used again as
    /// soon as the client has the reply), so an ending connection waits for these too. Lowered under
    /// `inFlight`'s lock, so that a waiter cannot miss it.
    private let replying = Atomic<Int>(0)

    /// Most requests of one connection in flight at once; the reader stops reading beyond it, so a client
    /// that floods the engine is slowed down by TCP, not by memory.
    static let maximumInFlight = 256

    init(id: UInt64, socket: FramedSocket, peer: String, engine: EngineCore) {
        self.id = id
        self.socket = socket
        self.peer = peer
        self.engine = engine
        session = EngineSession(handleLimit: engine.server.handleLimit)
    }

    /// Reads and dispatches until the peer goes or the connection is shut down.
    func run() {
        defer { finish() }
        while true {
            let frame: Frame?
            do {
                frame = try socket.readFrame()
            } catch {
                engine.logger.warning("connection \(peer): \(error); closing it")
                sendGoAway(.protocolError, "\(error)")
                return
            }
            guard let frame else {
                // After our GOAWAY the client's end of stream means it sends nothing more: what it sent is
                // all read, and is answered before the connection closes.
                if goingAway.load(ordering: .relaxed) {
                    _ = inFlight.wait(timeout: .seconds(5)) { $0.isEmpty && replying.load(ordering: .relaxed) == 0 ? true : nil }
                }
                return
            }
            if frame.type.isConnectionLevel {
                guard handleConnectionFrame(frame) else { return }
                continue
            }
            if frame.type == .qtfsCancel {
                inFlight.withLock { $0[frame.stream] }?.cancel()
                continue
            }
            let request: QTFSRequest
            do {
                request = try QTFSRequest(frame)
            } catch {
                engine.logger.warning("connection \(peer): \(error.message); closing it")
                sendGoAway(.protocolError, error.message)
                return
            }
            guard frame.stream != 0 else {
                sendGoAway(.protocolError, "request with id 0")
                return
            }
            let cancellation = Cancellation()
            let admitted = inFlight.wait { pending -> Bool? in
                guard pending.count < EngineConnection.maximumInFlight else { return nil }
                guard pending[frame.stream] == nil else { return false }
                pending[frame.stream] = cancellation
                return true
            }
            guard admitted == true else {
                sendGoAway(.protocolError, "request id \(frame.stream) is already in flight")
                return
            }
            if let (handle, offset, count) = engine.server.directReadLength(request, in: session) {
                sendRead(handle, offset, count, id: frame.stream)
                continue
            }
            switch engine.server.pool(for: request, in: session) {
            case .inline:
                perform(request, id: frame.stream, blocking: false, cancellation)
            case .fast:
                engine.fast.submit { [self] in perform(request, id: frame.stream, blocking: false, cancellation) }
            case .blocking:
                engine.blocking.submit { [self] in perform(request, id: frame.stream, blocking: true, cancellation) }
            }
        }
    }

    /// A READ of a regular file, answered straight from the page cache (sendfile): no copy through a
    /// buffer of ours, and, to TCP, no copy at all on this side.
    private func sendRead(_ handle: OpenHandle, _ offset: Int64, _ count: Int, id: UInt32) {
        replying.add(1, ordering: .relaxed)
        inFlight.withLock { _ = $0.removeValue(forKey: id) }
        inFlight.signal()
        defer { replied() }
        var header = ByteBuffer()
        QTFSReply.encodeDataHeader(id: id, length: count, into: &header)
        do {
            try socket.send(header, file: handle.fd, offset: offset, count: count)
        } catch {
            socket.shutdown()
        }
    }

    private func perform(_ request: QTFSRequest, id: UInt32, blocking: Bool, _ cancellation: Cancellation) {
        let result: Result<QTFSReply, SystemError>
        do {
            result = .success(try engine.server.perform(request, in: session, blocking: blocking, cancellation: cancellation))
        } catch {
            switch error {
            case .mustBlock:
                engine.blocking.submit { [self] in perform(request, id: id, blocking: true, cancellation) }
                return
            case .failed(let failure):
                result = .failure(failure)
            }
        }
        replying.add(1, ordering: .relaxed)
        inFlight.withLock { _ = $0.removeValue(forKey: id) }
        inFlight.signal()
        defer { replied() }
        do {
            switch result {
            case .success(.data(let data)):
                var header = ByteBuffer()
                QTFSReply.encodeDataHeader(id: id, length: data.readableBytes, into: &header)
                try socket.send(header, data)
            case .success(let reply):
                var buffer = ByteBuffer()
                reply.encodeFrame(id: id, into: &buffer)
                try socket.send(buffer)
                if case .poll(let handle, let events, let notify) = request, case .polled(0) = reply, notify != 0 {
                    engine.poller.register(self, handle: handle, events: events, pollID: notify)
                }
                // A registration holds its file open (a FIFO would keep a reader): it goes with the handle.
                if case .release(let handle) = request { engine.poller.forget(self, handle: handle) }
            case .failure(let error):
                if error.errno == .ioError || error.errno == .invalidArgument {
                    engine.logger.debug("connection \(peer): \(request.operation): \(error)")
                }
                var buffer = ByteBuffer()
                QTFSReply.encodeFailure(id: id, errno: error.errno.rawValue, into: &buffer)
                try socket.send(buffer)
            }
        } catch {
            // The connection broke; the reader notices and cleans up.
            socket.shutdown()
        }
    }

    /// A reply counted in `replying` has been sent (or could not be).
    private func replied() {
        inFlight.withLock { _ in _ = replying.subtract(1, ordering: .relaxed) }
        inFlight.signal()
    }

    /// Ping, go-away: false when the connection should end.
    private func handleConnectionFrame(_ frame: Frame) -> Bool {
        do {
            switch try ConnectionMessage(frame) {
            case .ping(let value):
                try socket.send(ConnectionMessage.pong(value).frame)
                return true
            case .goAway:
                return false
            case .pong, .windowUpdate, .resetStream:
                return true
            }
        } catch {
            sendGoAway(.protocolError, "\(error)")
            return false
        }
    }

    func sendGoAway(_ code: CloseCode, _ reason: String) {
        if code == .shuttingDown { goingAway.store(true, ordering: .relaxed) }
        try? socket.send(ConnectionMessage.goAway(code, reason: reason).frame)
    }

    /// Sends POLL_READY for `pollID` (from the poller).
    func notifyReady(_ pollID: UInt64) {
        do { try socket.send(QTFSPollReady.frame(pollID: pollID)) } catch { socket.shutdown() }
    }

    /// The connection is ending: interrupt what still waits, wait for running requests (they reply into
    /// a dead socket, harmlessly), then close every handle.
    private func finish() {
        socket.shutdown()
        for cancellation in inFlight.withLock({ Array($0.values) }) { cancellation.cancel() }
        _ = inFlight.wait(timeout: .seconds(30)) { $0.isEmpty ? true : nil }
        engine.poller.forget(self)
        session.close()
        engine.ended(self)
    }

}

/// Watches handles a client polls with a notify id, with one epoll instance and one thread, and sends
/// POLL_READY once when one may be ready (EPOLLONESHOT). No busy polling.
final class Poller: Sendable {
    private struct Registration {
        weak var connection: EngineConnection?
        var handleID: UInt64
        var handle: OpenHandle
        var pollID: UInt64
    }

    private let epoll: Epoll
    private let wakeup: EventCounter
    private let state = Mutex((next: UInt64(1), byToken: [UInt64: Registration](), byFD: [Int32: UInt64]()))
    private let fast: WorkerPool

    init(fast: WorkerPool) throws(SystemError) {
        epoll = try Epoll()
        wakeup = try EventCounter()
        self.fast = fast
        try epoll.add(wakeup.fd, events: UInt32(POLLIN), data: 0)
    }

    func start() throws(SystemError) {
        try OSThread.start(name: "qtfs-poller") { [self] in loop() }
    }

    func register(_ connection: EngineConnection, handle id: UInt64, events: UInt32, pollID: UInt64) {
        guard let handle = try? connection.session.handle(id) else { return }
        let fd = handle.fd
        let wanted = (events & UInt32(POLLIN | POLLOUT | POLLPRI)) | Epoll.oneShot
        state.withLock { state in
            let token = state.next
            state.next += 1
            let previous = state.byFD[fd.rawValue]
            if let previous { state.byToken[previous] = nil }
            state.byToken[token] = Registration(connection: connection, handleID: id, handle: handle, pollID: pollID)
            state.byFD[fd.rawValue] = token
            do {
                if previous != nil {
                    try epoll.modify(fd, events: wanted, data: token)
                } else {
                    try epoll.add(fd, events: wanted, data: token)
                }
            } catch {
                // Not pollable (a regular file): it is always ready.
                state.byToken[token] = nil
                state.byFD[fd.rawValue] = nil
                fast.submit { [weak connection] in connection?.notifyReady(pollID) }
            }
        }
    }

    /// Drops the registrations of a connection that ended, or of one of its handles.
    func forget(_ connection: EngineConnection, handle: UInt64? = nil) {
        state.withLock { state in
            for (token, registration) in state.byToken
            where registration.connection == nil
                || (registration.connection === connection && (handle == nil || registration.handleID == handle))
            {
                epoll.remove(registration.handle.fd)
                state.byFD[registration.handle.fd.rawValue] = nil
                state.byToken[token] = nil
            }
        }
    }

    private func loop() {
        while true {
            guard let ready = try? epoll.wait(timeoutMilliseconds: -1) else { continue }
            for (_, token) in ready where token != 0 {
                let registration = state.withLock { state -> Registration? in
                    guard let registration = state.byToken.removeValue(forKey: token) else { return nil }
                    if state.byFD[registration.handle.fd.rawValue] == token {
                        state.byFD[registration.handle.fd.rawValue] = nil
                        epoll.remove(registration.handle.fd)
                    }
                    return registration
                }
                if let registration, let connection = registration.connection {
                    let pollID = registration.pollID
                    fast.submit { connection.notifyReady(pollID) }
                }
            }
        }
    }
}

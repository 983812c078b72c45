import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage

/// A listening socket on the reactor: accepts until the backlog is empty and hands each connection on.
final class Listener: ReactorSource {
    let fd: FileDescriptor
    let name: String
    private let reactor: Reactor
    private let logger: Logger
    private let accepted: (FileDescriptor) -> Void
    private var token: UInt64 = 0
    private var paused = false

    init(fd: FileDescriptor, name: String, reactor: Reactor, logger: Logger, accepted: @escaping (FileDescriptor) -> Void) {
        self.fd = fd
        self.name = name
        self.reactor = reactor
        self.logger = logger
        self.accepted = accepted
    }

    func start() throws(SystemError) {
        token = try reactor.register(fd, events: Reactor.input, self)
    }

    func handle(events: UInt32) {
        let exhausted: Set<Errno> = [.tooManyOpenFiles, .tooManyOpenFilesInSystem, .noBufferSpace, .noMemory]
        let clientGone: Set<Errno> = [.connectionAbort, .protocolError, .notPermitted]
        while !paused {
            do throws(SystemError) {
                guard let client = try fd.accept(nonBlocking: true) else { return }
                accepted(client)
            } catch where exhausted.contains(error.errno) {
                // Out of descriptors: accepting again at once would spin. Leave the rest in the backlog.
                logger.error("\(name): cannot accept: \(error.errno); trying again in 100 ms")
                pause()
                reactor.schedule(after: .milliseconds(100)) { [weak self] in self?.resume() }
                return
            } catch where clientGone.contains(error.errno) {
                continue  // that client is gone or was refused by a filter; the next one may be fine
            } catch {
                logger.error("\(name): cannot accept: \(error)")
                return
            }
        }
    }

    /// Leaves new connections in the kernel's backlog.
    func pause() {
        guard !paused, token != 0 else { return }
        paused = true
        reactor.modify(fd, token: token, events: 0)
    }

    func resume() {
        guard paused, token != 0 else { return }
        paused = false
        reactor.modify(fd, token: token, events: Reactor.input)
    }

    func close() {
        if token != 0 { reactor.unregister(fd, token: token) }
        token = 0
        fd.closeQuietly()
    }
}

/// One client of the control socket: it sends one request, gets one reply (with the socket, or the
/// `.proxy` rendezvous for the original's clients), and is closed. A client that goes away while its
/// request is pending abandons the connection being opened for it.
final class ControlConnection: ReactorSource {
    enum State {
        case reading
        case waiting(Stream?)
        case done
    }

    let fd: FileDescriptor
    let credentials: PeerCredentials
    private let proxy: Proxy
    private var reactor: Reactor { proxy.reactor }
    private var token: UInt64 = 0
    private var buffer = ByteBuffer()
    private var timer: TimerID?
    private(set) var state = State.reading
    private var isLegacy = false

    init(fd: FileDescriptor, credentials: PeerCredentials, proxy: Proxy) {
        self.fd = fd
        self.credentials = credentials
        self.proxy = proxy
    }

    /// Who asked, for logs.
    var client: String { "pid \(credentials.pid) (uid \(credentials.uid))" }

    func start() throws(SystemError) {
        token = try reactor.register(fd, events: Reactor.input | Reactor.readHangUp, self)
        timer = reactor.schedule(after: Limits.requestTimeout) { [weak self] in
            guard let self, case .reading = self.state else { return }
            self.proxy.logger.notice("control client \(self.client) sent no complete request within \(Limits.requestTimeout)")
            self.finish()
        }
    }

    func handle(events: UInt32) {
        switch state {
        case .reading:
            readRequest()
        case .waiting(let stream):
            // The client only waits; anything readable means it went away (or broke the protocol).
            proxy.logger.debug("control client \(client) went away before its connection was ready")
            finish()
            stream?.abandon()
        case .done:
            break
        }
    }

    private func readRequest() {
        // The longest request of either protocol: dpuctl's (8 bytes and a path of up to 107) is longer.
        let room = max(LegacyUDSProxyRequest.size, UDSProxyControlRequest.maximumSize) - buffer.readableBytes
        guard room > 0 else { return finish() }
        let result = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { raw in
            (try? fd.readSome(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(room))) ?? nil) ?? -1
        }
        if result == 0 { return finish() }  // EOF before a request
        guard let kind = UDSProxyControlProtocol.identify(buffer.readableBytesView) else { return }
        do {
            switch kind {
            case .current:
                guard let request = try UDSProxyControlRequest.decode(&buffer) else { return }
                state = .waiting(nil)
                proxy.controlRequest(request, from: self)
            case .legacy:
                isLegacy = true
                guard let request = try LegacyUDSProxyRequest.decode(&buffer) else { return }
                state = .waiting(nil)
                proxy.legacyRequest(request, from: self)
            }
        } catch {
            proxy.logger.notice("control client \(client) sent a bad request: \(error)")
            if isLegacy { replyLegacy(false) } else { reply(errno: Errno.invalidArgument.rawValue, socket: nil) }
        }
    }

    /// The connection being opened for this client.
    func waitFor(_ stream: Stream) {
        if case .waiting = state { state = .waiting(stream) }
    }

    /// Answers a dpuctl client: 0 with `socket` attached, or an errno.
    func reply(errno: Int32, socket: FileDescriptor?) {
        guard case .waiting = state else { return }
        let bytes = UDSProxyControlReply.encode(errno: errno)
        _ = try? bytes.withUnsafeBytes { raw in try fd.send(raw, fds: socket.map { [$0] } ?? []) }
        finish()
    }

    /// Answers the original's client: 1 = connect to `<path>.proxy` now, 0 = failed.
    func replyLegacy(_ ready: Bool) {
        guard case .waiting = state else { return }
        let bytes = LegacyUDSProxyRequest.reply(ready)
        _ = try? bytes.withUnsafeBytes { raw in try fd.send(raw) }
        finish()
    }

    private func finish() {
        guard token != 0 else { return }
        state = .done
        reactor.cancel(timer)
        reactor.unregister(fd, token: token)
        token = 0
        fd.closeQuietly()
        proxy.controlFinished(self)
    }
}

/// The original's rendezvous, done safely: one `<path>.proxy` listener at a time per path (later requests
/// for the path queue behind it), owned by the requesting user with mode 0600, accepting only a
/// connection from the process that asked, removed as soon as it connected or after
/// `Limits.rendezvousTimeout`.
final class Rendezvous {
    let stream: Stream
    let path: [UInt8]
    let requester: PeerCredentials
    var listener: Listener?
    var timer: TimerID?

    var listenPath: String { String(decoding: path + LegacyUDSProxyRequest.rendezvousSuffix, as: UTF8.self) }

    init(stream: Stream, path: [UInt8], requester: PeerCredentials) {
        self.stream = stream
        self.path = path
        self.requester = requester
    }
}

import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// One connection to the peer udsproxyd: the handshake, then frames in both directions, many streams
/// (proxied connections and pipes) multiplexed over it.
///
/// Reading never waits for a local reader: DATA goes to its stream, which buffers at most its flow-control
/// window; so one stalled connection stops only itself. Writing collects the frames of a reactor round in
/// one buffer and writes them at the end of the round; while that buffer is above its high-water mark,
/// streams stop reading their local sockets and wait their turn (`waitForSpace`).
final class PeerLink: ReactorSource {
    enum Role { case dialer, acceptor }
    enum State { case connecting, handshaking, up, closed }

    let proxy: Proxy
    var reactor: Reactor { proxy.reactor }
    let fd: FileDescriptor
    let role: Role
    /// The peer's address, for logs.
    let remote: String
    private(set) var state: State = .handshaking
    /// The peer said GOAWAY: it opens nothing more, and we should not ask it to.
    private(set) var peerGoingAway = false
    private(set) var connectedAt: UInt64 = 0

    private var token: UInt64 = 0
    private var handshake: Handshake
    private var input = ByteBuffer()
    var output = ByteBuffer()
    private var writable = false
    private var hungUp = false
    private var flushScheduled = false
    private(set) var streams: [UInt32: Stream] = [:]
    private var nextStreamID: UInt32
    private var lastPeerStreamID: UInt32 = 0
    private var waiting: [Stream] = []
    private var lastInput = Reactor.now()
    private var handshakeTimer: TimerID?
    private var pingTimer: TimerID?
    private let decoder = FrameDecoder()

    init(proxy: Proxy, fd: FileDescriptor, role: Role, remote: String, key: PreSharedKey?) {
        self.proxy = proxy
        self.fd = fd
        self.role = role
        self.remote = remote
        handshake = Handshake(role: role == .dialer ? .client : .server, service: .udsproxy, capabilities: 0, key: key)
        // The dialing side numbers its streams odd, the accepting side even: no collision, no negotiation.
        nextStreamID = role == .dialer ? 1 : 2
    }

    /// Registers the link. A dialer whose connect is still in progress says `connecting`.
    func start(connecting: Bool) throws(SystemError) {
        token = try reactor.register(fd, events: Reactor.stream, self)
        state = connecting ? .connecting : .handshaking
        writable = !connecting
        handshakeTimer = reactor.schedule(after: Limits.handshakeTimeout) { [weak self] in
            self?.fail("no handshake within \(Limits.handshakeTimeout)")
        }
        if !connecting && role == .dialer { sendOpening() }
    }

    var isUp: Bool { state == .up }
    /// Local sockets wait while this much is queued for the peer.
    var outputFull: Bool { output.readableBytes >= Limits.linkHighWater }

    // MARK: Events

    func handle(events: UInt32) {
        if state == .connecting {
            guard events & (Reactor.output | Reactor.error | Reactor.hangUp) != 0 else { return }
            do {
                if let error = try fd.pendingError() { return fail("connect: \(error)") }
            } catch {
                return fail("connect: \(error)")
            }
            state = .handshaking
            writable = true
            sendOpening()
            return
        }
        if events & Reactor.output != 0 {
            writable = true
            flush()
        }
        if events & (Reactor.input | Reactor.readHangUp | Reactor.hangUp | Reactor.error) != 0 {
            if events & (Reactor.readHangUp | Reactor.hangUp | Reactor.error) != 0 { hungUp = true }
            readInput()
        }
    }

    private func sendOpening() {
        var opening = handshake.clientOpening
        output.writeBuffer(&opening)
        scheduleFlush()
    }

    private func readInput() {
        while state == .handshaking || state == .up {
            // Room for a whole chunk frame, so a busy link is read in few calls.
            let wanted = Limits.chunk + Frame.headerSize
            var result: Result<Int?, SystemError> = .success(nil)
            var available = 0
            input.writeWithUnsafeMutableBytes(minimumWritableBytes: wanted) { raw in
                available = raw.count
                result = Result { () throws(SystemError) -> Int? in try fd.readSome(into: raw) }
                if case .success(let count?) = result { return count }
                return 0
            }
            let count: Int
            switch result {
            case .success(nil): return
            case .success(let read?): count = read
            case .failure(let error): return fail("read: \(error.errno)")
            }
            if count == 0 {
                return fail(peerGoingAway ? "the peer shut down" : "the peer closed the connection")
            }
            lastInput = Reactor.now()
            if state == .handshaking { continueHandshake() }
            if state == .up { processFrames() }
            if input.readableBytes == 0 {
                input.clear()
            } else if input.readerIndex > input.capacity / 2 {
                input.discardReadBytes()
            }
            // A short read emptied the socket; epoll reports new data as a new edge (but the end of the
            // stream, once reported, is not reported again: then read until the read says so).
            if count < available && !hungUp { return }
        }
    }

    private func continueHandshake() {
        do {
            switch try handshake.feed(&input) {
            case .continue(var send):
                output.writeBuffer(&send)
                scheduleFlush()
            case .finished(var send, _):
                output.writeBuffer(&send)
                scheduleFlush()
                becomeUp()
            case .rejected(var send, let error):
                output.writeBuffer(&send)
                flush()
                fail("\(error)", refused: true)
            }
        } catch {
            fail("\(error)", refused: true)
        }
    }

    private func becomeUp() {
        state = .up
        connectedAt = Reactor.now()
        reactor.cancel(handshakeTimer)
        handshakeTimer = nil
        schedulePing()
        proxy.linkUp(self)
    }

    private func schedulePing() {
        pingTimer = reactor.schedule(after: Limits.pingInterval) { [weak self] in
            guard let self, self.state == .up else { return }
            if Reactor.now() - self.lastInput > Limits.linkSilence.nanoseconds {
                return self.fail("no word from the peer for \(Limits.linkSilence)")
            }
            self.send(ConnectionMessage.ping(Reactor.now()).frame)
            self.schedulePing()
        }
    }

    private func processFrames() {
        while state == .up, input.readableBytes >= Frame.headerSize {
            let header: FrameHeader
            do {
                header = try input.withUnsafeReadableBytes { (raw) -> Result<FrameHeader, WireError> in
                    Result { () throws(WireError) -> FrameHeader in
                        try decoder.decodeHeader(UnsafeRawBufferPointer(rebasing: raw.prefix(Frame.headerSize)))
                    }
                }.get()
            } catch {
                return fail("protocol error: \(error)")
            }
            guard input.readableBytes >= Frame.headerSize + header.length else {
                input.reserveCapacity(minimumWritableBytes: Frame.headerSize + header.length - input.readableBytes)
                return
            }
            input.moveReaderIndex(forwardBy: Frame.headerSize)
            var payload = input.readSlice(length: header.length)!
            do {
                try dispatch(header, &payload)
            } catch {
                return fail("protocol error: \(error)")
            }
        }
    }

    private func dispatch(_ header: FrameHeader, _ payload: inout ByteBuffer) throws(WireError) {
        if header.type == .udsData {
            // A stream reset a moment ago may still receive what was in flight: dropped.
            guard let stream = streams[header.stream] else { return }
            try stream.receiveData(&payload, end: header.flags.contains(.endStream))
            return
        }
        let frame = Frame(type: header.type, flags: header.flags, stream: header.stream, payload: payload)
        if header.type.isConnectionLevel {
            switch try ConnectionMessage(frame) {
            case .ping(let value): send(ConnectionMessage.pong(value).frame)
            case .pong: break
            case .goAway(_, let reason):
                peerGoingAway = true
                proxy.linkGoingAway(self, reason: reason)
            case .windowUpdate(let stream, let increment):
                try streams[stream]?.grant(increment)
            case .resetStream(let stream, _, let reason):
                streams[stream]?.resetByPeer(reason)
            }
            return
        }
        switch try UDSProxyMessage(frame) {
        case .open(let id, let path):
            try acceptPeerStream(id)
            proxy.serveOpen(on: self, stream: id, path: path)
        case .openResult(let id, let errno):
            guard id % 2 == nextStreamID % 2 else { throw WireError(.protocolViolation, "OPEN_RESULT for a stream the peer opened") }
            streams[id]?.opened(errno: errno)
        case .descriptors(let id, let descriptors):
            // The pipe streams it opens are ours to accept (or refuse) even if their connection is gone.
            for case .pipe(let pipe, _, _) in descriptors { try acceptPeerStream(pipe) }
            guard let stream = streams[id] else {
                for case .pipe(let pipe, _, _) in descriptors {
                    send(ConnectionMessage.resetStream(stream: pipe, .cancelled, reason: "its connection is closed").frame)
                }
                return
            }
            try stream.receiveDescriptors(descriptors)
        }
    }

    /// Checks a stream id the peer chose: its parity, and that it is new.
    private func acceptPeerStream(_ id: UInt32) throws(WireError) {
        guard id % 2 != nextStreamID % 2 else { throw WireError(.protocolViolation, "the peer opened stream \(id), which is ours to number") }
        guard id > lastPeerStreamID else { throw WireError(.protocolViolation, "the peer reused stream id \(id)") }
        lastPeerStreamID = id
    }

    // MARK: Streams

    /// A new id for a stream we open, or nil when the link cannot take more streams.
    func allocateStreamID() -> UInt32? {
        guard streams.count < Limits.streamsPerLink, nextStreamID < UInt32.max - 2 else { return nil }
        defer { nextStreamID += 2 }
        return nextStreamID
    }

    var canTakeStream: Bool { streams.count < Limits.streamsPerLink }

    func add(_ stream: Stream) { streams[stream.id] = stream }

    func remove(_ stream: Stream) {
        if streams[stream.id] === stream { streams[stream.id] = nil }
        proxy.streamsChanged()
    }

    /// `stream` has data to send but the link's buffer is full: it is pumped again once it drained.
    func waitForSpace(_ stream: Stream) {
        if !waiting.contains(where: { $0 === stream }) { waiting.append(stream) }
    }

    // MARK: Output

    func send(_ frame: Frame) {
        guard state == .up || state == .handshaking else { return }
        frame.encode(into: &output)
        // Data stops at the high-water mark; what still grows is our answers to the peer (PONG, window
        // updates, resets). A peer that keeps asking without reading loses its link.
        if output.readableBytes > Limits.linkOutputLimit { return fail("the peer does not read what it is sent") }
        scheduleFlush()
    }

    /// Reads up to `maximum` bytes with `read` straight into the output buffer, behind the header of a
    /// DATA frame for `stream`. Returns what `read` returned; the frame exists only if bytes were read.
    func appendData(
        stream: UInt32, maximum: Int, _ read: (UnsafeMutableRawBufferPointer) -> LegRead
    ) -> (LegRead, headerIndex: Int) {
        let headerIndex = output.writerIndex
        var outcome = LegRead.wouldBlock
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: Frame.headerSize + maximum) { raw in
            outcome = read(UnsafeMutableRawBufferPointer(rebasing: raw[Frame.headerSize..<(Frame.headerSize + maximum)]))
            guard case .read(let count, _, _) = outcome, count > 0 else { return 0 }
            return Frame.headerSize + count
        }
        if case .read(let count, _, _) = outcome, count > 0 {
            // The header `Frame.encodeHeader` would write, in place.
            output.setInteger(UInt32(count), at: headerIndex, endianness: .big)
            output.setInteger(FrameType.udsData.rawValue, at: headerIndex + 4)
            output.setInteger(UInt8(0), at: headerIndex + 5)
            output.setInteger(UInt16(0), at: headerIndex + 6, endianness: .big)
            output.setInteger(stream, at: headerIndex + 8, endianness: .big)
            scheduleFlush()
        }
        return (outcome, headerIndex)
    }

    func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        reactor.atEndOfRound { [self] in
            flushScheduled = false
            flush()
        }
    }

    func flush() {
        guard state != .closed, state != .connecting, writable else { return }
        while output.readableBytes > 0 {
            let result = output.withUnsafeReadableBytes { raw in
                Result { () throws(SystemError) -> Int? in try fd.writeSome(raw) }
            }
            switch result {
            case .success(nil):
                writable = false
            case .success(let count?):
                output.moveReaderIndex(forwardBy: count)
                continue
            case .failure(let error):
                return fail("write: \(error.errno)")
            }
            break
        }
        if output.readableBytes == 0 {
            output.clear()
        } else if output.readerIndex >= Limits.linkLowWater {
            output.discardReadBytes()
        }
        if output.readableBytes <= Limits.linkLowWater && !waiting.isEmpty {
            let resumed = waiting
            waiting.removeAll()
            for stream in resumed { reactor.later { stream.pumpOut() } }
        }
    }

    /// Tells the peer we are going away, and closes once the buffer is written (or at the latest when the
    /// caller stops the reactor).
    func goAway(_ reason: String) {
        guard state == .up else { return }
        send(ConnectionMessage.goAway(.shuttingDown, reason: reason).frame)
    }

    /// Bytes still to be written to the peer.
    var pendingOutput: Int { output.readableBytes }

    // MARK: Failure

    /// Closes the link: every stream on it is reset, and the proxy is told (and reconnects a dialer).
    func fail(_ reason: String, refused: Bool = false) {
        guard state != .closed else { return }
        let wasUp = state == .up
        state = .closed
        reactor.cancel(handshakeTimer)
        reactor.cancel(pingTimer)
        reactor.unregister(fd, token: token)
        fd.closeQuietly()
        let lost = Array(streams.values)
        streams.removeAll()
        waiting.removeAll()
        input = ByteBuffer()
        output = ByteBuffer()
        for stream in lost { stream.linkLost() }
        proxy.linkClosed(self, reason: reason, wasUp: wasUp, refused: refused)
    }
}

/// What reading a local socket or pipe gave.
enum LegRead {
    case read(Int, fds: [FileDescriptor], truncated: Bool)
    case wouldBlock
    case endOfFile
    case failed(SystemError)
}

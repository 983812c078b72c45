import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage

/// One relayed byte stream: a proxied unix connection, or a pipe passed inside one. Its local end (the
/// "leg") is a socket or pipe on this machine; its other end is the same stream id on the peer link.
///
/// Each direction ends on its own: local EOF is sent as DATA with END_STREAM (the peer then shuts down
/// writing on its side), and the peer's END_STREAM becomes shutdown(SHUT_WR) here, after everything
/// before it was delivered. The stream is gone when both directions ended, or at once on a reset
/// (a local error, or RESET_STREAM from the peer), which closes the leg.
final class Stream: ReactorSource {
    enum Kind {
        /// A unix stream socket, both directions.
        case socket
        /// A pipe end we read here and send (the process on the peer reads).
        case pipeSource
        /// A pipe end we write here (the process on the peer writes).
        case pipeSink
    }

    /// What a stream that is not open yet waits for.
    enum Opening {
        /// A blocking control request: the client gets `appEnd` when the peer has connected.
        case control(ControlConnection, appEnd: FileDescriptor)
        /// A non-blocking control request, already answered: `filler` bytes were queued to keep the
        /// client's socket unwritable until the peer has connected; they are discarded then.
        case filler(Int)
        /// The original's request: once the peer has connected, the client is told to connect to
        /// `<path>.proxy`, and that connection becomes the leg.
        case legacy(ControlConnection, path: [UInt8])
        /// The original's client was told to connect to `<path>.proxy`; the proxy waits for it.
        case rendezvous
        /// The peer asked us to connect to the path; the connect is under way.
        case serving
    }

    enum State {
        case opening(Opening)
        case open
        case closed
    }

    let id: UInt32
    let link: PeerLink
    let kind: Kind
    /// What the stream carries, for logs: the socket path, or "pipe".
    let label: String
    var proxy: Proxy { link.proxy }
    var reactor: Reactor { link.reactor }
    var logger: Logger { link.proxy.logger }

    private(set) var state: State
    private var leg: FileDescriptor?
    private var token: UInt64 = 0
    private var timer: TimerID?

    // Local leg -> peer.
    private var sendWindow = SendWindow(initial: Limits.window)
    private var legReadable = false
    /// The other end shut down or failed: read until the read says so (no short-read shortcut, since no
    /// further edge will come).
    private var legHungUp = false
    private var sentEnd = false

    // Peer -> local leg.
    private var receiveWindow = ReceiveWindow(size: Limits.window)
    private var pending = CircularBuffer<PendingChunk>()
    private var legWritable = true
    private var receivedEnd = false
    private var wroteEnd = false
    private var inboundDescriptors: [FileDescriptor] = []

    private struct PendingChunk {
        var bytes: ByteBuffer
        var fds: [FileDescriptor]
    }

    init(id: UInt32, link: PeerLink, kind: Kind, label: String, leg: FileDescriptor?, opening: Opening?) {
        self.id = id
        self.link = link
        self.kind = kind
        self.label = label
        self.leg = leg
        self.state = opening.map { .opening($0) } ?? .open
    }

    var isOpening: Bool {
        if case .opening = state { return true }
        return false
    }

    // MARK: Opening

    /// Sends OPEN and waits for the answer, at most `Limits.openTimeout`.
    func requestOpen(path: [UInt8]) {
        link.send(UDSProxyMessage.open(stream: id, path: path).frame)
        timer = reactor.schedule(after: Limits.openTimeout) { [weak self] in
            guard let self, self.isOpening else { return }
            self.logger.warning("connection \(self.id) to \(self.label): the peer did not connect within \(Limits.openTimeout)")
            self.reset("timed out", waiter: .timedOut)
        }
    }

    /// The peer's answer to our OPEN.
    func opened(errno: Int32) {
        guard case .opening(let opening) = state else { return }
        reactor.cancel(timer)
        timer = nil
        guard errno == 0 else {
            let error = Errno(rawValue: errno)
            logger.notice("connection \(id) to \(label) refused by the peer: \(error)")
            close(tellWaiter: error)
            return
        }
        switch opening {
        case .control(let connection, let appEnd):
            connection.reply(errno: 0, socket: appEnd)
            appEnd.closeQuietly()
            start()
        case .filler(let count):
            guard discard(count) else {
                return reset("the client's socket failed before the peer connected")
            }
            start()
        case .legacy(let connection, let path):
            // The peer's end is open from here on and may speak first (QMP's greeting): what it sends is
            // kept (within the window) until the original's client connects to `<path>.proxy`.
            state = .opening(.rendezvous)
            legWritable = false
            proxy.rendezvous(for: self, path: path, connection: connection)
        case .rendezvous, .serving:
            break
        }
    }

    /// The original's client connected to `<path>.proxy`: that connection is the leg.
    func rendezvousDone(_ accepted: FileDescriptor) {
        leg = accepted
        start()
    }

    /// We connected to the socket the peer asked for.
    func served(_ connected: FileDescriptor) {
        leg = connected
        link.send(UDSProxyMessage.openResult(stream: id, errno: 0).frame)
        start()
    }

    /// Starts relaying: registers the leg. epoll reports what is already readable at once.
    func start() {
        guard let leg else { return }
        do {
            token = try reactor.register(leg, events: Reactor.stream, self)
        } catch {
            logger.error("connection \(id) to \(label): cannot watch its socket: \(error)")
            return reset("internal error")
        }
        state = .open
        legWritable = true
        pumpIn()  // what the peer sent while the leg was not there yet
    }

    /// Reads and drops the filler bytes queued from the client's end of a non-blocking request. They are
    /// all in the socket already (queued before the client had it), so this never waits.
    private func discard(_ count: Int) -> Bool {
        guard let leg else { return false }
        var left = count
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        while left > 0 {
            let read = scratch.withUnsafeMutableBytes { raw in
                try? leg.readSome(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(left)))
            }
            guard let got = read ?? nil, got > 0 else { return false }
            left -= got
        }
        return true
    }

    // MARK: Events

    func handle(events: UInt32) {
        guard case .open = state else { return }
        if events & Reactor.output != 0 {
            legWritable = true
            pumpIn()
        }
        if kind == .pipeSink {
            // The reading end went away: nothing we write can arrive; tell the writer on the peer.
            if events & (Reactor.error | Reactor.hangUp) != 0 { reset("the pipe's reader closed it") }
            return
        }
        if events & (Reactor.input | Reactor.readHangUp | Reactor.hangUp | Reactor.error) != 0 {
            legReadable = true
            if events & (Reactor.readHangUp | Reactor.hangUp | Reactor.error) != 0 { legHungUp = true }
            pumpOut()
        }
    }

    // MARK: Local leg -> peer

    /// Reads the leg into DATA frames while the window, the link and the leg allow, a few chunks per
    /// round so that busy connections take turns.
    func pumpOut() {
        guard case .open = state, kind != .pipeSink, !sentEnd, legReadable, link.isUp, let leg else { return }
        for _ in 0..<4 {
            if link.outputFull { return link.waitForSpace(self) }
            let allowance = sendWindow.allowance(Limits.chunk)
            guard allowance > 0 else { return }  // `grant` resumes
            let kind = self.kind
            let (outcome, headerIndex) = link.appendData(stream: id, maximum: allowance) { raw in
                Stream.read(leg, kind: kind, into: raw)
            }
            switch outcome {
            case .wouldBlock:
                legReadable = false
                return
            case .endOfFile:
                legReadable = false
                return finishSending()
            case .failed(let error):
                return reset("reading its socket: \(error.errno)")
            case .read(let count, let fds, let truncated):
                sendWindow.consume(count)
                if truncated {
                    logger.warning("connection \(id) to \(label): more descriptors than one message can carry were passed; the rest were closed")
                }
                if !fds.isEmpty {
                    passDescriptors(fds, dataAt: headerIndex, count: count)
                } else if count < allowance && !legHungUp {
                    // A short read emptied the socket (reads stop early only at passed descriptors), and
                    // epoll reports new data, or the end, as a new edge.
                    legReadable = false
                    return
                }
            }
        }
        reactor.later { [self] in pumpOut() }
    }

    private static func read(_ leg: FileDescriptor, kind: Kind, into raw: UnsafeMutableRawBufferPointer) -> LegRead {
        do {
            if kind == .socket {
                guard let (count, fds, truncated) = try leg.receive(into: raw, maxFDs: UDSProxyMessage.maximumDescriptors) else {
                    return .wouldBlock
                }
                if count == 0 {
                    for fd in fds { fd.closeQuietly() }
                    return .endOfFile
                }
                return .read(count, fds: fds, truncated: truncated)
            }
            guard let count = try leg.readSome(into: raw) else { return .wouldBlock }
            return count == 0 ? .endOfFile : .read(count, fds: [], truncated: false)
        } catch {
            return .failed(error)
        }
    }

    /// Descriptors arrived with the bytes just framed at `headerIndex`: they must reach the peer before
    /// those bytes, so the frame is taken back and sent after the DESCRIPTORS frames.
    ///
    /// Where in those bytes the sender attached them is unknown: one read returns the bytes of several
    /// writes, and stops after the write that carried descriptors. So they travel with the last byte,
    /// which is surely part of that write; bytes before it may belong to earlier writes, which carried
    /// none, and a receiver reading those with a plain read() would otherwise lose the descriptors.
    private func passDescriptors(_ fds: [FileDescriptor], dataAt headerIndex: Int, count: Int) {
        let bytes = link.output.getSlice(at: headerIndex + Frame.headerSize, length: count)!
        var copy = ByteBuffer()
        copy.writeImmutableBuffer(bytes)
        link.output.moveWriterIndex(to: headerIndex)
        var passed: [PassedDescriptor] = []
        for fd in fds {
            if let descriptor = Descriptors.outgoing(fd, stream: self) { passed.append(descriptor) }
        }
        // Each DESCRIPTORS frame stays far below the frame limit, whatever the paths.
        var start = 0
        while start < passed.count {
            var size = 0
            var end = start
            while end < passed.count && (end == start || size < 64 << 10) {
                if case .file(let path, _, _) = passed[end] { size += path.count + 20 } else { size += 10 }
                end += 1
            }
            link.send(UDSProxyMessage.descriptors(stream: id, Array(passed[start..<end])).frame)
            start = end
        }
        link.send(Frame(type: .udsData, stream: id, payload: copy))
    }

    private func finishSending() {
        sentEnd = true
        link.send(Frame(type: .udsData, flags: .endStream, stream: id))
        finishIfDone()
    }

    /// Credit from the peer: the window may allow more reading.
    func grant(_ increment: UInt32) throws(WireError) {
        try sendWindow.grant(increment)
        if legReadable { pumpOut() }
    }

    // MARK: Peer -> local leg

    func receiveData(_ payload: inout ByteBuffer, end: Bool) throws(WireError) {
        switch state {
        case .closed: return
        case .opening(.rendezvous), .open: break
        case .opening: throw WireError(.protocolViolation, "DATA on stream \(id) before it was open")
        }
        guard kind != .pipeSource else { throw WireError(.protocolViolation, "DATA towards the pipe on stream \(id), which only sends") }
        guard !receivedEnd else { throw WireError(.protocolViolation, "DATA on stream \(id) after its END_STREAM") }
        try receiveWindow.receive(payload.readableBytes)
        if payload.readableBytes > 0 {
            // Descriptors go with the last byte (see `passDescriptors`): the bytes before it first.
            var fds: [FileDescriptor] = []
            var last: ByteBuffer? = nil
            if !inboundDescriptors.isEmpty {
                fds = inboundDescriptors
                inboundDescriptors.removeAll()
                last = payload.getSlice(at: payload.writerIndex - 1, length: 1)
                payload.moveWriterIndex(to: payload.writerIndex - 1)
            }
            var none: [FileDescriptor] = []
            if pending.isEmpty && legWritable {
                guard write(&payload, &none) else { return }
            }
            if payload.readableBytes > 0 { queue(&payload, fds: []) }
            if var last {
                if pending.isEmpty && legWritable {
                    guard write(&last, &fds) else { return }
                }
                if last.readableBytes > 0 { queue(&last, fds: fds) }
            }
        } else if !inboundDescriptors.isEmpty && end {
            for fd in inboundDescriptors { fd.closeQuietly() }
            inboundDescriptors.removeAll()
        }
        if end {
            receivedEnd = true
            if pending.isEmpty && leg != nil { finishWriting() }
        }
    }

    /// Keeps bytes the leg cannot take yet. Bytes without descriptors join the chunk before them if it
    /// has none either: a peer sending a byte per frame costs about a byte per byte here, not a chunk
    /// (and its buffer) each, which the window, counting bytes, would not bound.
    private func queue(_ bytes: inout ByteBuffer, fds: [FileDescriptor]) {
        if fds.isEmpty, let last = pending.indices.last, pending[last].fds.isEmpty {
            pending[last].bytes.writeBuffer(&bytes)
            return
        }
        var copy = ByteBuffer()
        copy.writeBuffer(&bytes)
        pending.append(PendingChunk(bytes: copy, fds: fds))
    }

    /// Writes what the leg takes now. Returns false when the stream was reset.
    private func write(_ bytes: inout ByteBuffer, _ fds: inout [FileDescriptor]) -> Bool {
        guard let leg else { return false }
        while bytes.readableBytes > 0 {
            let attached = fds
            let result = bytes.withUnsafeReadableBytes { raw in
                Result { () throws(SystemError) -> Int? in
                    attached.isEmpty ? try leg.writeSome(raw) : try leg.send(raw, fds: attached)
                }
            }
            switch result {
            case .success(nil):
                legWritable = false
                return true
            case .success(let count?):
                bytes.moveReaderIndex(forwardBy: count)
                // The kernel holds its own references now.
                for fd in fds { fd.closeQuietly() }
                fds.removeAll()
                if let credit = receiveWindow.release(count) {
                    link.send(ConnectionMessage.windowUpdate(stream: id, increment: credit).frame)
                }
            case .failure(let error):
                reset("writing its socket: \(error.errno)")
                return false
            }
        }
        return true
    }

    private func pumpIn() {
        while legWritable, var chunk = pending.first {
            guard write(&chunk.bytes, &chunk.fds) else { return }
            if chunk.bytes.readableBytes > 0 {
                pending[pending.startIndex] = chunk
                return
            }
            pending.removeFirst()
        }
        if pending.isEmpty && receivedEnd && !wroteEnd { finishWriting() }
    }

    private func finishWriting() {
        wroteEnd = true
        if kind == .pipeSink {
            closeLeg()
        } else if let leg {
            try? leg.shutdown(.write)
        }
        finishIfDone()
    }

    private func finishIfDone() {
        let sendingDone = kind == .pipeSink || sentEnd
        let receivingDone = kind == .pipeSource || wroteEnd
        if sendingDone && receivingDone { close(tellWaiter: nil) }
    }

    // MARK: Descriptors from the peer

    func receiveDescriptors(_ descriptors: [PassedDescriptor]) throws(WireError) {
        guard isOpen || isAwaitingRendezvous, kind == .socket else {
            throw WireError(.protocolViolation, "DESCRIPTORS on stream \(id), which is not an open connection")
        }
        guard inboundDescriptors.count + descriptors.count <= Limits.pendingDescriptors else {
            throw WireError(.protocolViolation, "more than \(Limits.pendingDescriptors) descriptors without data on stream \(id)")
        }
        // Those attached to bytes the leg has not taken yet count too (a byte after each batch would
        // otherwise make room for another, without bound): a reader that far behind loses its connection.
        if inboundDescriptors.count + descriptors.count + pending.reduce(0, { $0 + $1.fds.count }) > Limits.pendingDescriptors {
            logger.notice("connection \(id) to \(label): more than \(Limits.pendingDescriptors) descriptors wait for its reader; resetting it")
            for case .pipe(let pipe, _, _) in descriptors {
                link.send(ConnectionMessage.resetStream(stream: pipe, .cancelled, reason: "its connection is reset").frame)
            }
            return reset("more than \(Limits.pendingDescriptors) descriptors waiting for the reader")
        }
        for descriptor in descriptors {
            if let fd = Descriptors.incoming(descriptor, stream: self) { inboundDescriptors.append(fd) }
        }
    }

    // MARK: Ending

    /// Aborts the stream: the peer is told (RESET_STREAM) and the leg closed; a client still waiting for
    /// the connection is told `waiter`.
    func reset(_ reason: String, waiter: Errno = .connectionReset) {
        guard !isClosed else { return }
        logger.debug("connection \(id) to \(label) reset: \(reason)")
        link.send(ConnectionMessage.resetStream(stream: id, .cancelled, reason: reason).frame)
        close(tellWaiter: waiter)
    }

    /// The peer reset the stream.
    func resetByPeer(_ reason: String) {
        logger.debug("connection \(id) to \(label) reset by the peer: \(reason)")
        close(tellWaiter: .connectionReset)
    }

    /// The link went down.
    func linkLost() {
        close(tellWaiter: .connectionAbort)
    }

    /// The client of an opening stream went away: nobody wants the connection any more.
    func abandon() {
        if isOpening { reset("the client went away") }
    }

    private var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    private var isAwaitingRendezvous: Bool {
        if case .opening(.rendezvous) = state { return true }
        return false
    }

    private var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    private func closeLeg() {
        guard let leg else { return }
        if token != 0 { reactor.unregister(leg, token: token) }
        token = 0
        leg.closeQuietly()
        self.leg = nil
    }

    /// Releases everything; an opening stream's client is told `tellWaiter` (the original errno is what
    /// it returns to its caller anyway; this is for logs and the Swift client).
    private func close(tellWaiter error: Errno?) {
        if case .opening(let opening) = state {
            switch opening {
            case .control(let connection, let appEnd):
                appEnd.closeQuietly()
                connection.reply(errno: (error ?? .connectionReset).rawValue, socket: nil)
            case .legacy(let connection, _):
                connection.replyLegacy(false)
            case .rendezvous:
                proxy.rendezvousCancelled(for: self)
            case .filler, .serving:
                break
            }
        }
        state = .closed
        reactor.cancel(timer)
        timer = nil
        closeLeg()
        for chunk in pending { for fd in chunk.fds { fd.closeQuietly() } }
        pending.removeAll()
        for fd in inboundDescriptors { fd.closeQuietly() }
        inboundDescriptors.removeAll()
        link.remove(self)
    }

    /// Closes after a failed open (no RESET: the peer has nothing open).
    func failOpen(_ error: Errno) {
        close(tellWaiter: error)
    }
}

import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

// The data path shared by client and server: one framed connection carrying any number of streams, each
// tied to a local fd, with per-stream credit so that a slow reader stops its own stream and nothing else.

/// A local fd one side of a stream reads from or writes to, with the readiness the last event reported.
final class LocalEnd {
    let fd: FileDescriptor
    /// Inherited sockets share their open file description with the caller: use MSG_DONTWAIT per call
    /// instead of setting O_NONBLOCK on it.
    let isSharedSocket: Bool
    /// Regular files cannot be watched by epoll and are always ready.
    private(set) var alwaysReady = false
    var readable = false
    var writable = false
    /// The peer hung up (EPOLLHUP/ERR): reads give EOF, writes EPIPE.
    var hungUp = false
    private var registration: IOLoop.Registration?
    /// Whether closing `fd` is ours to do (false for the client's own fds 0-2 and inherited fds).
    let owned: Bool
    /// A pipe: data can be spliced between it and the connection without passing through our memory.
    var canSplice = false
    /// Called when readiness changed.
    var onReady: (() -> Void)?
    private(set) var closed = false
    /// A carried unix socket on which descriptors may be passed (SCM_RIGHTS): reads and writes go through
    /// it, so that descriptors travel with their bytes.
    var passing: DescriptorPassing?

    init(fd: FileDescriptor, owned: Bool, isSharedSocket: Bool = false) {
        self.fd = fd
        self.owned = owned
        self.isSharedSocket = isSharedSocket
    }

    /// Registers with `loop`; an fd epoll refuses (a regular file) is treated as always ready.
    func watch(_ loop: IOLoop) throws(SystemError) {
        guard registration == nil && !alwaysReady else { return }
        do throws(SystemError) {
            registration = try loop.register(fd) { [unowned self] events in
                if events.contains(.readable) || events.contains(.peerClosed) { readable = true }
                if events.contains(.writable) { writable = true }
                if events.contains(.hangUp) || events.contains(.error) {
                    hungUp = true
                    readable = true
                    writable = true
                }
                onReady?()
            }
        } catch where error.errno == .notPermitted {
            alwaysReady = true
            readable = true
            writable = true
        }
    }

    private var readingWatched = true

    /// Stops (or resumes) being woken when there is something to read (`IOLoop.watchReading`).
    func watchReading(_ on: Bool, _ loop: IOLoop) {
        guard let registration, readingWatched != on else { return }
        readingWatched = on
        loop.watchReading(registration, fd, on)
    }

    enum IOResult {
        case bytes(Int)
        case wouldBlock
        case endOfFile
        case failed(SystemError)
    }

    /// Reads into `buffer`. EIO from a pseudo-terminal controller whose terminal side is closed is end of
    /// file (that is how ptys say it).
    func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        if let passing { return passing.read(self, into: buffer) }
        while true {
            let count = isSharedSocket
                ? recv(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
                : Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count)
            if count > 0 { return .bytes(count) }
            if count == 0 { return .endOfFile }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted: continue
            case .wouldBlock:
                if alwaysReady { return .endOfFile }
                readable = false
                return .wouldBlock
            case .ioError, .connectionReset: return .endOfFile
            default: return .failed(SystemError(error, "read", String(fd.rawValue)))
            }
        }
    }

    /// Writes `buffer`. `more`: on a socket, more follows at once (MSG_MORE: a frame header is not sent
    /// as a packet of its own ahead of its spliced payload).
    func write(_ buffer: UnsafeRawBufferPointer, more: Bool = false) -> IOResult {
        if let passing { return passing.write(self, buffer) }
        while true {
            let count = isSharedSocket || more
                ? send(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL) | (more ? Int32(MSG_MORE) : 0))
                : Glibc.write(fd.rawValue, buffer.baseAddress, buffer.count)
            if count >= 0 { return .bytes(count) }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted: continue
            case .wouldBlock:
                writable = false
                return .wouldBlock
            default: return .failed(SystemError(error, "write", String(fd.rawValue)))
            }
        }
    }

    /// Stops watching and closes the fd if it is ours.
    func close(_ loop: IOLoop) {
        guard !closed else { return }
        closed = true
        if let registration { loop.unregister(registration, fd) }
        registration = nil
        onReady = nil
        passing?.discard()
        passing = nil
        if owned { fd.closeQuietly() }
    }
}

/// One carried stream: local source → DATA frames out, DATA frames in → local sink. Either half may be
/// absent (a pipe goes one way; a socket or terminal both ways).
final class CarriedStream {
    let id: UInt32
    var source: LocalEnd?
    var sink: LocalEnd?
    var sendWindow = SendWindow()
    var receiveWindow = ReceiveWindow()
    /// Received bytes the sink has not taken yet (bounded by the receive window): first those waiting in
    /// `spill`, then these.
    var pending = ByteBuffer()
    /// Received payload spliced into a pipe of our own while the sink, a full pipe, could not take it.
    var spill: SpillPipe?
    /// Received bytes waiting for the sink.
    var queuedBytes: Int { (spill?.count ?? 0) + pending.readableBytes }
    enum HalfState { case open, ended, reset }
    var sendState: HalfState
    var receiveState: HalfState
    /// Send END_STREAM once the source hits EAGAIN (the server after its program exited: whatever the
    /// program wrote is in the pipe by then; later writers are its orphans).
    var drainOnly = false
    /// Called when the stream finished both ways (to release fds and let the session decide it is done).
    var onFinished: ((CarriedStream) -> Void)?
    /// Shuts down only the writing side of a duplex sink at end of stream (sockets), rather than closing.
    var halfCloseSink = false
    /// Called when the sink is done (instead of closing it): the client replaces its fds with /dev/null.
    var onSinkDone: (() -> Void)?
    var onSourceDone: (() -> Void)?

    init(id: UInt32, source: LocalEnd?, sink: LocalEnd?) {
        self.id = id
        self.source = source
        self.sink = sink
        sendState = source == nil ? .ended : .open
        receiveState = sink == nil ? .ended : .open
    }

    var isFinished: Bool { sendState != .open && receiveState != .open && queuedBytes == 0 }
}

/// A private pipe that holds received payload by reference (spliced from the connection) while a sink
/// pipe is full: the connection keeps being read — the frames behind, other streams' data, credit and
/// signals, must not wait for one slow reader — and the payload still moves without a copy (pipe to pipe
/// later). Created on first need, `Multiplexer.spliceWindow` large where the kernel allows.
struct SpillPipe {
    let read: FileDescriptor
    let write: FileDescriptor
    /// Bytes in it.
    var count = 0

    init() throws(SystemError) {
        (read, write) = try FileDescriptor.makePipe(nonBlocking: true)
        write.setPipeCapacity(Int32(Multiplexer.spliceWindow))
    }

    func close() {
        read.closeQuietly()
        write.closeQuietly()
    }
}

/// A framed connection with its streams. The owner handles control frames (`onControl`) and the end of
/// the connection (`onClosed`); the multiplexer moves the data.
final class Multiplexer {
    let loop: IOLoop
    let link: LocalEnd
    private var inbound: ByteBuffer
    private(set) var outbound: ByteBuffer
    private let decoder: FrameDecoder
    /// The live streams, in the order they were added (few: a linear search beats a dictionary, whose
    /// generic metadata costs start-up time). A stream that finished both ways leaves the list.
    private(set) var streams: [CarriedStream] = []
    /// Highest number of streams at once (a peer that opens more loses its connection).
    var maximumStreams = 4096
    /// What may be queued for the connection at most: data stops at the high-water mark (plus one read),
    /// so more is answers to the peer's own requests (PONG, refusals) that it does not read — the
    /// connection ends rather than the process's memory.
    var outboundLimit = 4 * Multiplexer.outboundHighWater
    /// What all streams together may hold for local readers that do not take it (each stream's window
    /// bounds that stream, not how many there are: 1280 × 4 MiB on the server): past it the connection
    /// ends rather than the process's memory. No session that works comes near it.
    var maximumQueued = 256 << 20
    /// The highest stream number seen so far in each side's range (the client's below
    /// `RexecLimits.serverStreams`, the server's from it on): each side numbers its streams upwards, so a
    /// number at or under its side's highest that is not live is a stream that finished (or was refused)
    /// here, and what the peer sent on it before it learnt so is dropped — not taken for a protocol error.
    private var highestClientStream: UInt32 = 0
    private var highestServerStream: UInt32 = 0
    /// Stop reading local sources while this much is queued for the connection.
    static let outboundHighWater = 2 << 20
    static let chunk = 1 << 20
    /// Below this, a pipe's data is read and sent rather than spliced.
    static let spliceThreshold = 64 << 10
    /// The window a stream asks its sender to work in when it splices into a pipe: what its spill pipe
    /// holds (1 MiB, the most an unprivileged pipe may have; credit is returned as bytes enter the sink),
    /// so that a consumer slower than the connection leaves the rest in the sender's pipe rather than in
    /// our memory, copied.
    static let spliceWindow = 1 << 20

    /// A control frame (anything but DATA and the connection's flow-control and liveness frames).
    var onControl: ((Frame) throws(WireError) -> Void)?
    /// The connection ended: nil for a clean end of file, else why.
    var onClosed: ((Error?) -> Void)?
    /// Called after each pump, when some stream may have finished or the outbound queue drained.
    var onProgress: (() -> Void)?
    private(set) var closed = false
    /// A DATA frame whose header is queued and whose payload the kernel moves from a pipe to the
    /// connection (splice): `before` queued bytes go first, then `remaining` bytes from the pipe.
    private var splicing: (stream: CarriedStream, source: LocalEnd, remaining: Int, before: Int, closeAfter: Bool)?
    /// Descriptors passed on carried unix sockets travel (both sides have the capability); see
    /// PassedDescriptors.swift.
    var descriptorPassing: PassingPolicy?
    /// Splice between pipes and the connection, both ways: a source pipe's pages go into the socket by
    /// reference, and received payload goes from the socket into a sink pipe (or its `SpillPipe`) the
    /// same way, so a byte crosses the relay without a copy through our memory. See `splices(over:)`.
    var spliceLink = false

    /// Whether the connection's kind of socket takes part in splicing (TCP and unix sockets; vsock's
    /// support varies with its transport).
    static func splices(over endpoint: Endpoint) -> Bool {
        switch endpoint {
        case .tcp, .unix: true
        case .vsock: false
        }
    }
    private var pumping = false
    private var pumpAgain = false
    /// A source was left unread because the outbound queue was full. Once `flush` has made room, the
    /// next pass reads it: no event would say so (a regular file has none; a pipe's edge was taken, and
    /// its writer may have written its last byte already).
    private var sourceWaitsForRoom = false
    /// Bytes came from the peer since the liveness timer last looked (`watchLiveness`).
    private var heard = false
    /// `watchLiveness`: how often to look, after how many silent looks to give up, and how many so far.
    private var liveness: (interval: Duration, silent: Int, quiet: Int)?
    private var livenessTimer: IOLoop.TimerID?

    init(loop: IOLoop, link: LocalEnd, leftover: ByteBuffer = ByteBuffer(), maximumPayload: Int = Frame.maximumPayload) {
        self.loop = loop
        self.link = link
        self.decoder = FrameDecoder(maximumPayload: maximumPayload)
        // Grows to a frame's size when one arrives; a session that moves little data stays small.
        inbound = ByteBuffer()
        inbound.reserveCapacity(64 << 10)
        var leftover = leftover
        inbound.writeBuffer(&leftover)
        outbound = ByteBuffer()
        link.onReady = { [unowned self] in pump() }
    }

    /// Starts watching the connection (after the owner set its callbacks).
    func start() throws(SystemError) {
        try link.watch(loop)
        // Bytes that arrived with the handshake are processed at once.
        if inbound.readableBytes > 0 { link.readable = true }
        pump()
    }

    /// For a transport without keep-alive (vsock): a peer that vanishes without a reset (a DPU powered
    /// off) would otherwise hold the session, and its program, for good. After each `interval` in which
    /// nothing came from the peer it gets a PING (every version answers with a PONG); after `silent`
    /// of them the connection ends, as a TCP connection's keep-alive ends it.
    func watchLiveness(interval: Duration, silent: Int) {
        liveness = (interval, silent, 0)
        livenessTimer = loop.schedule(after: interval) { [weak self] in self?.livenessCheck() }
    }

    private func livenessCheck() {
        guard !closed, var watch = liveness else { return }
        watch.quiet = heard ? 0 : watch.quiet + 1
        heard = false
        liveness = watch
        if watch.quiet >= watch.silent {
            return close(SystemError(.timedOut, "nothing from the peer for \(watch.interval * watch.silent), not even an answer to a PING"))
        }
        if watch.quiet > 0 {
            send(ConnectionMessage.ping(0).frame)
            flush()
        }
        livenessTimer = loop.schedule(after: watch.interval) { [weak self] in self?.livenessCheck() }
    }

    /// Whether a stream numbered `id` could be added now (a number not in use, room under the limit): for
    /// a caller that must know before it makes the stream's local end.
    func checkRoom(for id: UInt32) throws(WireError) {
        guard stream(id) == nil else { throw WireError(.protocolViolation, "stream \(id) is already in use") }
        guard streams.count < maximumStreams else { throw WireError(.oversized, "more than \(maximumStreams) streams at once") }
    }

    func add(_ stream: CarriedStream) throws(WireError) {
        try checkRoom(for: stream.id)
        saw(stream.id)
        if spliceLink, stream.sink?.canSplice == true {
            stream.receiveWindow = ReceiveWindow(target: Multiplexer.spliceWindow)
        }
        streams.append(stream)
        stream.source?.onReady = { [unowned self] in pump() }
        stream.sink?.onReady = { [unowned self] in pump() }
        if descriptorPassing != nil { enablePassing(stream) }
    }

    func stream(_ id: UInt32) -> CarriedStream? {
        for stream in streams where stream.id == id { return stream }
        return nil
    }

    private func saw(_ id: UInt32) {
        if id >= RexecLimits.serverStreams {
            highestServerStream = max(highestServerStream, id)
        } else {
            highestClientStream = max(highestClientStream, id)
        }
    }

    /// The live stream `id`, or for one that was and is no more (finished or refused here, see
    /// `highestClientStream`) a stand-in reset both ways, so that what still arrives for it is dropped;
    /// nil for a number never used.
    func liveOrRetired(_ id: UInt32) -> CarriedStream? {
        if let live = stream(id) { return live }
        guard id != 0, id <= (id >= RexecLimits.serverStreams ? highestServerStream : highestClientStream) else { return nil }
        let retired = CarriedStream(id: id, source: nil, sink: nil)
        retired.sendState = .reset
        retired.receiveState = .reset
        return retired
    }

    /// Queues a frame for the connection.
    func send(_ frame: Frame) {
        guard !closed, !sendingFinished else { return }
        frame.encode(into: &outbound)
    }

    func send(_ message: RexecMessage) { send(message.frame) }

    /// Resets `stream` both ways: the peer is told why, its local ends are released.
    func reset(_ stream: CarriedStream, _ code: CloseCode, reason: String) {
        send(ConnectionMessage.resetStream(stream: stream.id, code, reason: reason).frame)
        resetLocally(stream)
    }

    /// Refuses a stream the peer opened (an accepted connection, a passed fd) that has no local end: it is
    /// kept as reset, so that what the peer sent on it before our RESET_STREAM arrived is dropped rather
    /// than taken for a protocol error.
    func refuse(_ id: UInt32, _ code: CloseCode, reason: String) throws(WireError) {
        guard stream(id) == nil else { throw WireError(.protocolViolation, "stream \(id) is already in use") }
        saw(id)
        send(ConnectionMessage.resetStream(stream: id, code, reason: reason).frame)
    }

    /// Puts `frame` ahead of the DATA frame queued last, from `headerIndex` on (the descriptors that came
    /// with its bytes are described first); nil drops that DATA frame.
    func precede(dataAt headerIndex: Int, with frame: Frame?) {
        let data = outbound.getBytes(at: headerIndex, length: outbound.writerIndex - headerIndex) ?? []
        outbound.moveWriterIndex(to: headerIndex)
        guard let frame else { return }
        frame.encode(into: &outbound)
        outbound.writeBytes(data)
    }

    /// Queues bytes as they are (the end of a handshake).
    func sendRaw(_ bytes: ByteBuffer) {
        var bytes = bytes
        outbound.writeBuffer(&bytes)
    }

    var hasQueuedOutput: Bool { outbound.readableBytes > 0 }

    /// Ends our side of the connection once everything queued is written (SHUT_WR) and goes on reading
    /// until the peer closes: closing a TCP socket with unread input sends a reset, and the kernel then
    /// drops what it still holds for the peer — the end of a program's output, its EXITED — whenever the
    /// peer has been slow to read.
    func finishSending() {
        guard !closed, !sendingFinished else { return }
        sendingFinished = true
        try? link.fd.shutdown(.write)
    }

    private(set) var sendingFinished = false

    /// Moves everything that can move now. Re-entrant calls (from callbacks) are folded into one.
    func pump() {
        if pumping {
            pumpAgain = true
            return
        }
        pumping = true
        defer { pumping = false }
        repeat {
            pumpAgain = false
            if closed {
                for stream in streams where stream.sink != nil {
                    writeSink(stream)
                    if stream.queuedBytes == 0 { releaseSink(stream) }
                }
                for stream in streams where stream.source != nil { discard(stream) }
                onProgress?()
                return
            }
            readLink()
            sourceWaitsForRoom = false
            for stream in streams {
                writeSink(stream)
                if !closed { readSource(stream) }
            }
            flush()
            if sourceWaitsForRoom && outbound.readableBytes < Multiplexer.outboundHighWater { pumpAgain = true }
            onProgress?()
        } while pumpAgain
    }

    // MARK: connection

    private func readLink() {
        // Frames that arrived with the handshake, or that an earlier pass left for later.
        if inbound.readableBytes > 0 { processInbound() }
        while link.readable && !closed {
            guard outbound.readableBytes <= outboundLimit else {
                return close(WireError(.protocolViolation, "the peer sends requests but does not read the answers (\(outbound.readableBytes) bytes wait for it)"))
            }
            if inbound.readableBytes == 0, let current = incoming, spliceIn(current) { continue }
            if inbound.writableBytes < 32 << 10 {
                inbound.discardReadBytes()
                // Room for a whole frame once large frames flow (fewer, larger reads).
                let wanted = inbound.readableBytes > 0 || inbound.capacity >= 1 << 20 ? Frame.maximumPayload + Frame.headerSize : 64 << 10
                if inbound.writableBytes < 32 << 10 { inbound.reserveCapacity(minimumWritableBytes: wanted) }
            }
            // While large DATA frames for pipes flow, a frame's header is read alone (with the rest of a
            // control frame before it), so that its payload can be spliced; otherwise as much as there is.
            var limit = Int.max
            if incoming == nil && spliceNext {
                let control = inbound.readableBytes < Frame.headerSize
                    ? 0 : Frame.headerSize + Int(inbound.getInteger(at: inbound.readerIndex, endianness: .big, as: UInt32.self)!)
                limit = max(control + Frame.headerSize - inbound.readableBytes, 1)
            }
            var outcome = LocalEnd.IOResult.wouldBlock
            inbound.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { raw -> Int in
                outcome = link.read(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(limit)))
                if case .bytes(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .bytes:
                heard = true
                processInbound()
            case .wouldBlock:
                return
            case .endOfFile:
                processInbound()
                return close(nil)
            case .failed(let error):
                processInbound()
                return close(error)
            }
        }
    }

    /// Moves the rest of the current DATA frame's payload from the connection into its sink, a pipe,
    /// without copying it through our memory (the kernel passes the received pages on by reference): into
    /// the sink itself when nothing waits before it, else into the stream's spill pipe (`SpillPipe`).
    /// Returns false when neither can take it now; the caller then reads the connection as usual (which
    /// also tells an empty connection from full pipes).
    private func spliceIn(_ current: Incoming) -> Bool {
        let stream = current.stream
        guard spliceLink, current.remaining >= Multiplexer.spliceThreshold, stream.receiveState == .open,
            stream.pending.readableBytes == 0, let sink = stream.sink, sink.canSplice
        else { return false }
        do {
            if (stream.spill?.count ?? 0) == 0 {
                if let moved = try link.fd.splice(to: sink.fd, count: current.remaining), moved > 0 {
                    heard = true
                    payloadDelivered(moved)
                    credit(stream, moved)
                    return true
                }
                // Nothing moved: the pipe is full, or the connection has nothing yet (or ended: the
                // read tells).
                guard link.fd.bytesAvailable() > 0 else { return false }
            }
            // No pipe to be had (fd limit...): the payload is read into the buffer instead.
            if stream.spill == nil { stream.spill = try? SpillPipe() }
            guard let spill = stream.spill else { return false }
            guard let moved = try link.fd.splice(to: spill.write, count: current.remaining), moved > 0 else {
                return false
            }
            stream.spill!.count += moved
            heard = true
            payloadDelivered(moved)
            if let error = queuedPastLimit() { refuse(error) }
            return true
        } catch where error.errno == .brokenPipe {
            // The reader of the pipe is gone; the rest of the payload is read and dropped.
            sinkFailed(stream)
            return true
        } catch {
            close(error)
            return true
        }
    }

    /// The DATA frame whose payload is arriving: payloads are handed on as they come, so a frame is never
    /// held whole in `inbound` and a pipe sink can take its payload from the connection directly.
    private typealias Incoming = (stream: CarriedStream, remaining: Int, endStream: Bool)
    private var incoming: Incoming?
    /// The last DATA frame was one to splice: read the next header alone.
    private var spliceNext = false

    private func processInbound() {
        do throws(WireError) {
            while !closed {
                if let current = incoming {
                    guard inbound.readableBytes > 0 else { break }
                    let count = min(current.remaining, inbound.readableBytes)
                    var payload = inbound.readSlice(length: count)!
                    try deliver(&payload, to: current.stream)
                    payloadDelivered(count)
                    continue
                }
                guard inbound.readableBytes >= Frame.headerSize else { break }
                let header = try inbound.readableBytesView.withUnsafeBytes { (raw) throws(WireError) -> FrameHeader in
                    try decoder.decodeHeader(UnsafeRawBufferPointer(rebasing: raw.prefix(Frame.headerSize)))
                }
                if header.type == RexecFrame.data {
                    inbound.moveReaderIndex(forwardBy: Frame.headerSize)
                    try receiveData(header)
                    continue
                }
                guard let frame = try decoder.decode(&inbound) else { break }
                try handle(frame)
            }
        } catch {
            refuse(error)
        }
        if inbound.readableBytes == 0 { inbound.clear() }
    }

    /// Ends the connection for what the peer sent, telling it why.
    private func refuse(_ error: WireError) {
        send(ConnectionMessage.goAway(.protocolError, reason: error.message).frame)
        flush()
        close(error)
    }

    private func handle(_ frame: Frame) throws(WireError) {
        switch frame.type {
        case .windowUpdate, .resetStream, .ping, .pong, .goAway:
            let message = try ConnectionMessage(frame)
            switch message {
            case .windowUpdate(let id, let increment):
                guard let stream = stream(id) else { break }
                try stream.sendWindow.grant(increment)
                stream.source?.watchReading(true, loop)
            case .resetStream(let id, _, _):
                if let stream = stream(id) { resetLocally(stream) }
            case .ping(let value):
                send(ConnectionMessage.pong(value).frame)
            case .pong:
                break
            case .goAway:
                try onControl?(frame)
            }
        case RexecFrame.pass:
            try receivePass(frame)
        default:
            try onControl?(frame)
        }
    }

    /// A DATA frame's header: its payload (counted against the stream's window at once, as a whole) is
    /// handed on as it arrives.
    private func receiveData(_ header: FrameHeader) throws(WireError) {
        guard let stream = liveOrRetired(header.stream) else {
            throw WireError(.protocolViolation, "DATA for unknown stream \(header.stream)")
        }
        switch stream.receiveState {
        case .ended:
            throw WireError(.protocolViolation, "DATA on stream \(header.stream) after its end")
        case .reset:
            break  // sent before the peer saw our reset: its payload is dropped
        case .open:
            try stream.receiveWindow.receive(header.length)
        }
        incoming = (stream, header.length, header.flags.contains(.endStream))
        spliceNext = spliceLink && header.length >= Multiplexer.spliceThreshold && stream.sink?.canSplice == true
        if header.length == 0 { payloadDelivered(0) }
    }

    /// `count` more bytes of the current DATA frame's payload were handed on; at its end, the frame's
    /// end of stream applies.
    private func payloadDelivered(_ count: Int) {
        guard var current = incoming else { return }
        current.remaining -= count
        guard current.remaining == 0 else {
            incoming = current
            return
        }
        incoming = nil
        let stream = current.stream
        if current.endStream && stream.receiveState == .open {
            stream.receiveState = .ended
            if stream.queuedBytes == 0 { finishSink(stream) }
        }
    }

    /// Hands a piece of payload to the stream's sink: straight from the connection's buffer when nothing
    /// waits before it, the rest into the stream's own buffer. Dropped if the stream was reset.
    private func deliver(_ payload: inout ByteBuffer, to stream: CarriedStream) throws(WireError) {
        guard stream.receiveState == .open, payload.readableBytes > 0 else { return }
        if stream.queuedBytes == 0, let sink = stream.sink, sink.writable {
            let result = payload.readableBytesView.withUnsafeBytes { sink.write($0) }
            switch result {
            case .bytes(let written):
                payload.moveReaderIndex(forwardBy: written)
                credit(stream, written)
            case .failed:
                sinkFailed(stream)
                return
            case .wouldBlock, .endOfFile:
                break
            }
        }
        // The rest waits in the stream's own buffer (its storage is kept and reused): a slice of the
        // connection's buffer would make every next read of the connection allocate a new one.
        guard payload.readableBytes > 0 else { return }
        stream.pending.writeBuffer(&payload)
        if let error = queuedPastLimit() { throw error }
    }

    /// What the session's streams hold for their local readers (buffers and spill pipes), if that is
    /// past `maximumQueued`, as the error that ends the connection. Looked at when a payload has to wait.
    private func queuedPastLimit() -> WireError? {
        let queued = streams.reduce(0) { $0 + $1.queuedBytes }
        guard queued > maximumQueued else { return nil }
        let waiting = streams.filter { $0.queuedBytes > 0 }.count
        return WireError(.oversized, "\(queued) bytes wait for local readers on \(waiting) streams, more than the \(maximumQueued) a session may hold")
    }

    private func credit(_ stream: CarriedStream, _ count: Int) {
        if !closed, let increment = stream.receiveWindow.release(count) {
            send(ConnectionMessage.windowUpdate(stream: stream.id, increment: increment).frame)
        }
    }

    /// Writes what the connection can take now.
    func flush() {
        while (outbound.readableBytes > 0 || splicing != nil) && link.writable && !closed {
            if let current = splicing, current.before == 0 {
                // The payload of the frame whose header just went out.
                do {
                    guard let moved = try current.source.fd.splice(to: link.fd, count: current.remaining) else {
                        link.writable = false
                        return
                    }
                    guard moved > 0 else { return close(WireError(.protocolViolation, "a pipe lost data it held")) }
                    splicing!.remaining -= moved
                    if splicing!.remaining == 0 {
                        splicing = nil
                        if current.closeAfter { current.source.close(loop) }
                        pumpAgain = true
                    }
                } catch {
                    if error.errno == .brokenPipe || error.errno == .connectionReset {
                        splicing = nil
                        link.readable = true
                        link.hungUp = true
                        return
                    }
                    return close(error)
                }
                continue
            }
            // With a splice pending, only the bytes queued before its payload may go now.
            let limit = splicing.map { min($0.before, outbound.readableBytes) } ?? outbound.readableBytes
            let result = outbound.readableBytesView.prefix(limit).withUnsafeBytes { link.write($0, more: splicing != nil) }
            switch result {
            case .bytes(let count):
                outbound.moveReaderIndex(forwardBy: count)
                if splicing != nil { splicing!.before -= count }
            case .wouldBlock, .endOfFile: break
            case .failed(let error):
                if error.errno == .brokenPipe || error.errno == .connectionReset {
                    outbound.clear()
                    // The read side reports the end (and any bytes that came before it).
                    link.readable = true
                    link.hungUp = true
                    return
                }
                return close(error)
            }
        }
        if outbound.readableBytes == 0 { outbound.clear() }
    }

    /// Ends the connection: nothing more is sent; sources are released. Sinks that still hold received
    /// data keep being written when `keepSinksAfterClose` (the client: output the program wrote before
    /// it exited must reach the caller), else they are released too. `onClosed` runs once.
    func close(_ error: Error?) {
        guard !closed else { return }
        closed = true
        if let livenessTimer { loop.cancel(livenessTimer) }
        outbound.clear()
        if let current = splicing, current.closeAfter { current.source.close(loop) }
        splicing = nil
        for stream in streams {
            // Sources that go on being drained are read whatever credit they had.
            stream.source?.watchReading(true, loop)
            if !discardSourcesAfterClose || stream.source === stream.sink { releaseSource(stream) }
            if !keepSinksAfterClose || stream.queuedBytes == 0 { releaseSink(stream) }
        }
        link.close(loop)
        onClosed?(error)
        if discardSourcesAfterClose { pump() }
    }

    /// Releases every stream's fds (the session is over).
    func releaseAll() {
        for stream in streams { release(stream) }
    }

    /// See `close`.
    var keepSinksAfterClose = false
    /// After the connection closed, keep reading the sources and drop what they give until their end
    /// (the server: a program whose client vanished must not die of SIGPIPE on its next write before it
    /// got its SIGTERM; it may want to log why it stops).
    var discardSourcesAfterClose = false

    /// Bytes read from the connection but not yet decoded, and bytes not yet sent: what a process taking
    /// over the connection must start from (the client's stand-in).
    var unprocessedInput: ByteBuffer { inbound }
    /// Whether a spliced DATA frame is half sent or a DATA frame half received (the connection cannot
    /// change hands then).
    var isMidFrame: Bool { splicing != nil || incoming != nil }

    /// Whether a sink still holds data to write (after the connection closed).
    var hasPendingSinkData: Bool { streams.contains { $0.sink != nil && $0.queuedBytes > 0 } }

    /// Shuts down our writing side after flushing what is queued (blocking briefly is acceptable: this is
    /// the last thing a session does).
    func finishAndClose() {
        if !closed && outbound.readableBytes > 0 {
            // Bounded: a peer that does not read within a second loses the rest.
            let deadline = IOLoop.now() + 1_000_000_000
            while outbound.readableBytes > 0 && !closed && IOLoop.now() < deadline {
                var set = [pollfd(fd: link.fd.rawValue, events: Int16(POLLOUT), revents: 0)]
                _ = try? DPUSystem.poll(&set, timeoutMilliseconds: 100, retryOnInterrupt: true)
                link.writable = true
                flush()
            }
        }
        close(nil)
    }

    // MARK: streams

    private func readSource(_ stream: CarriedStream) {
        guard stream.sendState == .open, let source = stream.source else { return }
        while source.readable && !closed && stream.sendState == .open && splicing?.stream !== stream {
            let allowance = stream.sendWindow.allowance(Multiplexer.chunk)
            guard allowance > 0 else {
                // Nothing may be sent before credit comes: not woken by every write into the source
                // meanwhile (a writer such as head writes 8 KiB at a time).
                return source.watchReading(false, loop)
            }
            guard outbound.readableBytes < Multiplexer.outboundHighWater else {
                sourceWaitsForRoom = true
                return
            }
            if spliceLink && source.canSplice && splicing == nil {
                // What is in the pipe goes to the connection through the kernel: no copy in and out of
                // our memory. (An empty pipe falls through to read(), which tells EAGAIN from the end.)
                // Small amounts are cheaper copied (one read, one send) than spliced (three calls).
                let available = min(source.fd.bytesAvailable(), allowance)
                if available >= Multiplexer.spliceThreshold {
                    Frame.encodeHeader(type: RexecFrame.data, stream: stream.id, payloadLength: available, into: &outbound)
                    stream.sendWindow.consume(available)
                    splicing = (stream, source, available, outbound.readableBytes, false)
                    flush()
                    continue
                }
            }
            let headerIndex = outbound.writerIndex
            Frame.encodeHeader(type: RexecFrame.data, stream: stream.id, payloadLength: 0, into: &outbound)
            var outcome = LocalEnd.IOResult.wouldBlock
            outbound.writeWithUnsafeMutableBytes(minimumWritableBytes: allowance) { raw in
                outcome = source.read(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(allowance)))
                if case .bytes(let count) = outcome { return count }
                return 0
            }
            switch outcome {
            case .bytes(let count):
                outbound.setInteger(UInt32(count), at: headerIndex, endianness: .big)
                stream.sendWindow.consume(count)
                if source.passing?.hasNews == true { describePassed(stream, source, dataAt: headerIndex) }
            case .wouldBlock:
                outbound.moveWriterIndex(to: headerIndex)
                if stream.drainOnly { endSource(stream) }
                return
            case .endOfFile, .failed:
                outbound.moveWriterIndex(to: headerIndex)
                endSource(stream)
                return
            }
            if outbound.readableBytes >= Multiplexer.outboundHighWater { flush() }
        }
    }

    private func discard(_ stream: CarriedStream) {
        guard let source = stream.source else { return }
        var scratch = [UInt8](repeating: 0, count: 65536)
        while source.readable {
            switch scratch.withUnsafeMutableBytes({ source.read(into: $0) }) {
            case .bytes: continue
            case .wouldBlock: return
            case .endOfFile, .failed:
                releaseSource(stream)
                return
            }
        }
    }

    private func endSource(_ stream: CarriedStream) {
        Frame(type: RexecFrame.data, flags: .endStream, stream: stream.id).encode(into: &outbound)
        stream.sendState = .ended
        releaseSource(stream)
        checkFinished(stream)
    }

    /// Ends sending on every open source at its current EAGAIN (see `CarriedStream.drainOnly`).
    func drainSources() {
        for stream in streams where stream.sendState == .open {
            stream.drainOnly = true
            // Read whatever is there even if no event said so yet: the program's last writes may be in
            // the same batch of events as its exit.
            stream.source?.readable = true
        }
        pump()
    }

    private func writeSink(_ stream: CarriedStream) {
        guard let sink = stream.sink else { return }
        drain: while sink.writable {
            if let spill = stream.spill, spill.count > 0 {
                // Pipe to pipe: the pages move, not the bytes.
                do {
                    // The spill holds data: nothing moved means the sink is full.
                    guard let moved = try spill.read.splice(to: sink.fd, count: spill.count), moved > 0 else {
                        sink.writable = false
                        break drain
                    }
                    stream.spill!.count -= moved
                    credit(stream, moved)
                } catch {
                    return sinkFailed(stream)
                }
            } else if stream.pending.readableBytes > 0 {
                // The buffer's bytes come after the spill's.
                switch stream.pending.readableBytesView.withUnsafeBytes({ sink.write($0) }) {
                case .bytes(let count):
                    stream.pending.moveReaderIndex(forwardBy: count)
                    credit(stream, count)
                case .wouldBlock, .endOfFile:
                    break drain
                case .failed:
                    return sinkFailed(stream)
                }
            } else {
                break
            }
        }
        if stream.pending.readableBytes > 0 && !sink.writable && spliceLink && sink.canSplice {
            // The buffer goes behind the spill's pages (one copy, as into the sink), so that the payload
            // after it can be spliced again instead of joining the buffer.
            spill(stream)
        }
        if stream.pending.readableBytes == 0 { stream.pending.clear() }
        if stream.queuedBytes == 0 && stream.receiveState == .ended { finishSink(stream) }
    }

    /// Moves what the stream's buffer holds into its spill pipe, as far as it takes it.
    private func spill(_ stream: CarriedStream) {
        do {
            if stream.spill == nil { stream.spill = try SpillPipe() }
            guard let written = try stream.pending.readableBytesView.withUnsafeBytes({ raw throws(SystemError) in
                try stream.spill!.write.writeSome(raw)
            }) else { return }
            stream.pending.moveReaderIndex(forwardBy: written)
            stream.spill!.count += written
        } catch {
            // No pipe to be had (fd limit...): the bytes wait in the buffer.
        }
    }

    /// The local reader is gone (EPIPE...): tell the peer to stop, and drop this stream's data.
    private func sinkFailed(_ stream: CarriedStream) {
        send(ConnectionMessage.resetStream(stream: stream.id, .cancelled, reason: "the reader closed").frame)
        resetLocally(stream)
    }

    private func resetLocally(_ stream: CarriedStream) {
        stream.pending = ByteBuffer()
        stream.spill?.close()
        stream.spill = nil
        if stream.sendState == .open { stream.sendState = .reset }
        if stream.receiveState == .open { stream.receiveState = .reset }
        release(stream)
        checkFinished(stream)
    }

    private func finishSink(_ stream: CarriedStream) {
        guard let sink = stream.sink else { return }
        if stream.halfCloseSink && stream.source != nil {
            try? sink.fd.shutdown(.write)
        } else {
            releaseSink(stream)
        }
        _ = sink
        checkFinished(stream)
    }

    private func checkFinished(_ stream: CarriedStream) {
        guard stream.isFinished else { return }
        release(stream)
        // Retired: a session carries any number of connections and passed fds over its life, as many at once
        // as `maximumStreams`.
        streams.removeAll { $0 === stream }
        let callback = stream.onFinished
        stream.onFinished = nil
        callback?(stream)
    }

    private func release(_ stream: CarriedStream) {
        releaseSource(stream)
        releaseSink(stream)
    }

    private func releaseSource(_ stream: CarriedStream) {
        guard let source = stream.source else { return }
        stream.source = nil
        if splicing?.source === source && !closed {
            // Its frame's header is out: the payload must follow before the pipe may go.
            splicing!.closeAfter = true
        } else if source !== stream.sink {
            source.close(loop)
        }
        let done = stream.onSourceDone
        stream.onSourceDone = nil
        done?()
    }

    private func releaseSink(_ stream: CarriedStream) {
        guard let sink = stream.sink else { return }
        stream.sink = nil
        stream.spill?.close()
        stream.spill = nil
        if sink !== stream.source { sink.close(loop) }
        let done = stream.onSinkDone
        stream.onSinkDone = nil
        done?()
    }
}

extension SystemPackage.FileDescriptor {
    /// A unix stream socket queues at most the sender's SO_SNDBUF (about 200 KiB by default): room for a
    /// few whole frames means fewer wake-ups per megabyte. Best effort (SO_SNDBUFFORCE needs
    /// CAP_NET_ADMIN; without it the kernel's wmem_max caps SO_SNDBUF).
    func enlargeSendBuffer(_ bytes: Int32 = 4 << 20) {
        if (try? setSocketOption(level: SOL_SOCKET, SO_SNDBUFFORCE, bytes)) == nil {
            try? setSocketOption(level: SOL_SOCKET, SO_SNDBUF, bytes)
        }
    }
}

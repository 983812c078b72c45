import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage
import Testing

@testable import Rexec

/// Two multiplexers joined by a socketpair on one event loop: the data path of client and server
/// without a network or a process.
@Suite struct Relay {
    final class Pair {
        let loop: IOLoop
        let sender: Multiplexer
        let receiver: Multiplexer
        let input: (read: SystemPackage.FileDescriptor, write: SystemPackage.FileDescriptor)
        let output: (read: SystemPackage.FileDescriptor, write: SystemPackage.FileDescriptor)
        var senderStream: CarriedStream
        var receiverStream: CarriedStream

        init(splice: Bool = false) throws {
            loop = try IOLoop()
            let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
            sender = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
            receiver = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
            input = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            output = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            let source = LocalEnd(fd: input.read, owned: true)
            source.canSplice = splice
            sender.spliceLink = splice
            let sink = LocalEnd(fd: output.write, owned: true)
            sink.canSplice = splice
            receiver.spliceLink = splice
            senderStream = CarriedStream(id: 1, source: source, sink: nil)
            receiverStream = CarriedStream(id: 1, source: nil, sink: sink)
            for (mux, stream) in [(sender, senderStream), (receiver, receiverStream)] {
                mux.onControl = { _ throws(WireError) in }
                try mux.add(stream)
                try mux.start()
                try stream.source?.watch(loop)
                try stream.sink?.watch(loop)
            }
        }

        func turn() throws { try loop.runOnce(timeoutMilliseconds: 1) }
    }

    /// One multiplexer on a socketpair whose other end (`peer`) the test drives by hand, and how it ended.
    final class Lone {
        let loop: IOLoop
        let mux: Multiplexer
        let peer: SystemPackage.FileDescriptor
        private(set) var closed = false
        private(set) var closedWith: Error?

        init() throws {
            loop = try IOLoop()
            let (ours, theirs) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
            peer = theirs
            mux = Multiplexer(loop: loop, link: LocalEnd(fd: ours, owned: true))
            mux.onControl = { _ throws(WireError) in }
            mux.onClosed = { [unowned self] in
                closedWith = $0
                closed = true
            }
        }

        deinit { peer.closeQuietly() }
    }

    /// Writes what the pipe takes now; returns the count.
    func writeSome(_ fd: SystemPackage.FileDescriptor, _ bytes: ArraySlice<UInt8>) throws -> Int {
        try bytes.withUnsafeBytes { try fd.writeSome($0) } ?? 0
    }

    func readSome(_ fd: SystemPackage.FileDescriptor, into result: inout [UInt8]) throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        guard let count = try chunk.withUnsafeMutableBytes({ try fd.readSome(into: $0) }) else { return true }
        result += chunk[..<count]
        return count > 0
    }

    @Test(arguments: [false, true])
    func dataArrivesIntactWithItsEnd(splice: Bool) throws {
        let pair = try Pair(splice: splice)
        var generator = SystemRandomNumberGenerator()
        let data = (0..<(6 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var written = 0
        var received: [UInt8] = []
        var open = true
        for _ in 0..<20_000 where open {
            if written < data.count {
                written += try writeSome(pair.input.write, data[written...])
                if written == data.count { pair.input.write.closeQuietly() }
            }
            try pair.turn()
            open = try readSome(pair.output.read, into: &received)
        }
        #expect(!open, "the end of the input reached the output")
        #expect(received == data)
        pair.output.read.closeQuietly()
    }

    @Test(arguments: [false, true])
    func aReaderThatStopsBoundsWhatIsBuffered(splice: Bool) throws {
        let pair = try Pair(splice: splice)
        let chunk = [UInt8](repeating: 0x5a, count: 1 << 16)
        var written = 0
        var stalled = 0
        // Nobody reads the output: the sender must stop (the pipe into it fills up).
        for _ in 0..<5000 where stalled < 50 {
            let count = try writeSome(pair.input.write, chunk[...])
            written += count
            stalled = count == 0 ? stalled + 1 : 0
            try pair.turn()
        }
        #expect(stalled >= 50, "writing stopped being possible")
        let buffered = pair.receiverStream.queuedBytes
        #expect(buffered <= FlowControl.initialWindow, "the receiver holds at most one window (\(buffered) bytes)")
        #expect(written < 3 * FlowControl.initialWindow, "the sender did not read without bound (\(written) bytes)")
        // Once the reader reads, everything flows.
        pair.input.write.closeQuietly()
        var received: [UInt8] = []
        var open = true
        for _ in 0..<20_000 where open {
            try pair.turn()
            open = try readSome(pair.output.read, into: &received)
        }
        #expect(received.count == written)
        pair.output.read.closeQuietly()
    }

    @Test(arguments: [false, true])
    func aReaderThatGoesAwayStopsTheSender(splice: Bool) throws {
        // As in the client and the server: a write to a pipe nobody reads is EPIPE, not death.
        Signals.ignore(SIGPIPE)
        let pair = try Pair(splice: splice)
        var sourceDone = false
        pair.senderStream.onSourceDone = { sourceDone = true }
        pair.output.read.closeQuietly()  // EPIPE on the receiving side's next write
        let chunk = [UInt8](repeating: 1, count: 4096)
        for _ in 0..<2000 where !sourceDone {
            _ = try? writeSome(pair.input.write, chunk[...])
            try pair.turn()
        }
        #expect(sourceDone, "the reset reached the sender, which let go of its source")
        #expect(pair.senderStream.sendState == .reset)
        pair.input.write.closeQuietly()
    }

    @Test(arguments: [false, true])
    func aStalledReaderHoldsUpOnlyItsOwnStream(splice: Bool) throws {
        // Two streams over one connection; nobody reads the first one's output.
        let loop = try IOLoop()
        let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
        let sender = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
        let receiver = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
        sender.spliceLink = splice
        receiver.spliceLink = splice
        var inputs: [(read: SystemPackage.FileDescriptor, write: SystemPackage.FileDescriptor)] = []
        var outputs: [(read: SystemPackage.FileDescriptor, write: SystemPackage.FileDescriptor)] = []
        var receiving: [CarriedStream] = []
        for mux in [sender, receiver] { mux.onControl = { _ throws(WireError) in } }
        for id in UInt32(1)...2 {
            let input = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            let output = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            inputs.append(input)
            outputs.append(output)
            let source = LocalEnd(fd: input.read, owned: true)
            source.canSplice = splice
            let sink = LocalEnd(fd: output.write, owned: true)
            sink.canSplice = splice
            let out = CarriedStream(id: id, source: source, sink: nil)
            let into = CarriedStream(id: id, source: nil, sink: sink)
            try sender.add(out)
            try receiver.add(into)
            try source.watch(loop)
            try sink.watch(loop)
            receiving.append(into)
        }
        try sender.start()
        try receiver.start()
        let chunk = [UInt8](repeating: 0x41, count: 1 << 16)
        var stalledWritten = 0
        var flowing: [UInt8] = []
        var generator = SystemRandomNumberGenerator()
        let data = (0..<(3 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var written = 0
        var open = true
        for _ in 0..<20_000 where open {
            stalledWritten += try writeSome(inputs[0].write, chunk[...])
            if written < data.count {
                written += try writeSome(inputs[1].write, data[written...])
                if written == data.count { inputs[1].write.closeQuietly() }
            }
            try loop.runOnce(timeoutMilliseconds: 1)
            open = try readSome(outputs[1].read, into: &flowing)
        }
        #expect(!open, "the second stream reached its end while the first one's reader stood still")
        #expect(flowing == data)
        let held = receiving[0].queuedBytes
        #expect(held <= FlowControl.initialWindow, "the stalled stream holds at most its window (\(held) bytes)")
        // The first stream's data is all there once its reader reads.
        inputs[0].write.closeQuietly()
        var stalled: [UInt8] = []
        open = true
        for _ in 0..<20_000 where open {
            try loop.runOnce(timeoutMilliseconds: 1)
            open = try readSome(outputs[0].read, into: &stalled)
        }
        #expect(!open)
        #expect(stalled.count == stalledWritten)
        #expect(stalled.allSatisfy { $0 == 0x41 })
        outputs[0].read.closeQuietly()
        outputs[1].read.closeQuietly()
    }

    @Test(arguments: [false, true])
    func framesCutAnywhereArriveWhole(splice: Bool) throws {
        // Frames written by hand, delivered in pieces of every size: DATA payloads are handed on as they
        // arrive, whatever the cut.
        let loop = try IOLoop()
        let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
        let receiver = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
        receiver.spliceLink = splice
        var controls: [FrameType] = []
        receiver.onControl = { frame throws(WireError) in controls.append(frame.type) }
        var outputs: [(read: SystemPackage.FileDescriptor, write: SystemPackage.FileDescriptor)] = []
        for id in UInt32(1)...2 {
            let output = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            outputs.append(output)
            let sink = LocalEnd(fd: output.write, owned: true)
            sink.canSplice = splice
            try receiver.add(CarriedStream(id: id, source: nil, sink: sink))
            try sink.watch(loop)
        }
        try receiver.start()
        var generator = SystemRandomNumberGenerator()
        func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        let first = random(200_000), second = random(70_000), third = random(5)
        var wire = ByteBuffer()
        Frame(type: RexecFrame.data, stream: 1, payload: ByteBuffer(bytes: first)).encode(into: &wire)
        Frame(type: RexecFrame.data, stream: 2).encode(into: &wire)
        Frame(type: RexecFrame.signal, payload: ByteBuffer(bytes: [0, 0, 0, 15, 0])).encode(into: &wire)
        Frame(type: RexecFrame.data, flags: .endStream, stream: 1, payload: ByteBuffer(bytes: second)).encode(into: &wire)
        Frame(type: RexecFrame.data, flags: .endStream, stream: 2, payload: ByteBuffer(bytes: third)).encode(into: &wire)
        let bytes = Array(wire.readableBytesView)
        let cuts = [1, 3, 8, 12, 13, 100, 4096, 65_537, 7]
        var offset = 0
        var turn = 0
        var received: [[UInt8]] = [[], []]
        var open = [true, true]
        for _ in 0..<20_000 where open.contains(true) {
            if offset < bytes.count {
                let end = min(offset + cuts[turn % cuts.count], bytes.count)
                offset += try writeSome(a, bytes[offset..<end])
                turn += 1
            }
            try loop.runOnce(timeoutMilliseconds: 0)
            for index in 0..<2 where open[index] { open[index] = try readSome(outputs[index].read, into: &received[index]) }
        }
        #expect(open == [false, false], "both streams ended")
        #expect(received[0] == first + second)
        #expect(received[1] == third)
        #expect(controls == [RexecFrame.signal])
        #expect(!receiver.closed)
        a.closeQuietly()
        for output in outputs { output.read.closeQuietly() }
    }

    @Test func aDataFrameOverTheWindowEndsTheConnection() throws {
        let loop = try IOLoop()
        let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
        let receiver = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
        receiver.spliceLink = true
        var closedWith: Error?
        var closed = false
        receiver.onControl = { _ throws(WireError) in }
        receiver.onClosed = { closedWith = $0; closed = true }
        let output = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
        let sink = LocalEnd(fd: output.write, owned: true)
        sink.canSplice = true
        try receiver.add(CarriedStream(id: 1, source: nil, sink: sink))
        try receiver.start()
        // Only the header: the window is checked before any of the payload is taken.
        var header = ByteBuffer()
        for _ in 0..<4 {
            Frame.encodeHeader(type: RexecFrame.data, stream: 1, payloadLength: Frame.maximumPayload - 4096, into: &header)
            header.writeRepeatingByte(0, count: Frame.maximumPayload - 4096)
        }
        Frame.encodeHeader(type: RexecFrame.data, stream: 1, payloadLength: 1, into: &header)
        var offset = 0
        let bytes = Array(header.readableBytesView)
        for _ in 0..<20_000 where !closed {
            if offset < bytes.count { offset += try writeSome(a, bytes[offset...]) }
            try loop.runOnce(timeoutMilliseconds: 0)
        }
        #expect(closed)
        #expect((closedWith as? WireError)?.code == .flowControl)
        a.closeQuietly()
        output.read.closeQuietly()
    }

    /// A peer that sends PINGs and never reads the PONGs: the answers waiting for it are bounded, the
    /// connection ends (they grew with the PINGs before, until the process ran out of memory).
    @Test func aPeerThatDoesNotReadItsAnswersLosesItsConnection() throws {
        let lone = try Lone()
        lone.mux.outboundLimit = 64 << 10  // (8 MiB in use: the same, only slower to reach)
        try lone.mux.start()
        var pings = ByteBuffer()
        for value in 0..<4096 { ConnectionMessage.ping(UInt64(value)).frame.encode(into: &pings) }
        let bytes = Array(pings.readableBytesView)
        var sent = 0
        for _ in 0..<100_000 where !lone.closed {
            _ = try? writeSome(lone.peer, bytes[...])
            sent += 1
            try lone.loop.runOnce(timeoutMilliseconds: 0)
        }
        #expect(lone.closed, "still open after \(sent) batches of PINGs")
        #expect((lone.closedWith as? WireError)?.message.contains("does not read the answers") == true)
    }

    /// Each stream's window bounds that stream; `maximumQueued` bounds them all together: streams whose
    /// local readers have stopped cannot make the session hold their windows' worth each.
    /// (Spliced, what the sink pipe does not take goes to the stream's spill pipe first.)
    @Test(arguments: [1, 3], [false, true])
    func whatWaitsForStoppedReadersIsBoundedPerSession(streamCount: Int, splice: Bool) throws {
        let lone = try Lone()
        let (loop, mux) = (lone.loop, lone.mux)
        mux.maximumQueued = 512 << 10
        mux.spliceLink = splice
        var readers: [SystemPackage.FileDescriptor] = []
        defer { for reader in readers { reader.closeQuietly() } }
        for id in 1...UInt32(streamCount) {
            // A pipe nobody reads: it takes 64 KiB, the rest waits in the stream.
            let pipe = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            readers.append(pipe.read)
            let sink = LocalEnd(fd: pipe.write, owned: true)
            sink.canSplice = splice
            let stream = CarriedStream(id: id, source: nil, sink: sink)
            try mux.add(stream)
            try stream.sink?.watch(loop)
        }
        try mux.start()
        // 300 KiB for each stream, well within its 4 MiB window: one such stream is fine, three are not.
        var frames = ByteBuffer()
        for id in 1...UInt32(streamCount) {
            for _ in 0..<3 {
                Frame(type: RexecFrame.data, stream: id, payload: ByteBuffer(repeating: 0x61, count: 100 << 10)).encode(into: &frames)
            }
        }
        let bytes = Array(frames.readableBytesView)
        var offset = 0
        for _ in 0..<10_000 where !lone.closed && offset < bytes.count {
            offset += try writeSome(lone.peer, bytes[offset...])
            try loop.runOnce(timeoutMilliseconds: 1)
        }
        for _ in 0..<10 where !lone.closed { try loop.runOnce(timeoutMilliseconds: 1) }
        if streamCount == 1 {
            #expect(!lone.closed, "closed with \(String(describing: lone.closedWith))")
            #expect(offset == bytes.count)
        } else {
            #expect(lone.closed)
            let message = (lone.closedWith as? WireError)?.message ?? ""
            #expect(message.contains("wait for local readers on 3 streams, more than the 524288 a session may hold"), "\(message)")
        }
        mux.close(nil)
    }

    // The liveness checks wait for timers (a second or so): on a thread of their own (OSThread.run), not on
    // the cooperative pool other tests need.

    @Test func aPeerThatFallsSilentIsPingedThenGivenUp() async throws {
        let (closedWith, pings) = try await OSThread.run(name: "silent peer") { () throws -> (Error?, Int) in
            let lone = try Lone()
            try lone.mux.start()
            lone.mux.watchLiveness(interval: .milliseconds(100), silent: 3)
            // The peer is there (its socket open) but says nothing: a host powered off, vsock unaware.
            for _ in 0..<1000 where !lone.closed { try lone.loop.runOnce(timeoutMilliseconds: 10) }
            var received = [UInt8](repeating: 0, count: 4096)
            let count = try received.withUnsafeMutableBytes { try lone.peer.readSome(into: $0) } ?? 0
            var buffer = ByteBuffer(bytes: received[..<count])
            var pings = 0
            let decoder = FrameDecoder()
            while let frame = try decoder.decode(&buffer) { if frame.type == .ping { pings += 1 } }
            return (lone.closed ? lone.closedWith : nil, pings)
        }
        let error = try #require(closedWith as? SystemError, "the connection to a silent peer stayed open")
        #expect(error.errno == .timedOut)
        #expect(error.description.contains("nothing from the peer for 0.3 seconds"))
        #expect(pings == 2)  // after the first and the second silent interval; the third ends it
    }

    @Test func aPeerThatAnswersPingsStaysConnectedThoughIdle() async throws {
        let stillOpen = try await OSThread.run(name: "answering peer") { () throws -> Bool in
            let loop = try IOLoop()
            let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
            let watching = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
            let answering = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
            var closed = false
            for mux in [watching, answering] {
                mux.onControl = { _ throws(WireError) in }
                mux.onClosed = { _ in closed = true }
                try mux.start()
            }
            watching.watchLiveness(interval: .milliseconds(100), silent: 3)
            // Ten intervals without a byte of data: only PINGs and their PONGs.
            let end = IOLoop.now() + 1_000_000_000
            while IOLoop.now() < end && !closed { try loop.runOnce(timeoutMilliseconds: 10) }
            let open = !closed
            watching.close(nil)
            answering.close(nil)
            return open
        }
        #expect(stillOpen)
    }

    /// A regular file as the source (stdin redirected from a file) gives no events: once it has filled the
    /// outbound queue, the pass that empties the queue must read on by itself. Over TCP, whose send
    /// buffer grows while the sender waits, one flush can send everything queued without meeting EAGAIN,
    /// and then no EPOLLOUT comes again (TCP signals room only to a sender that ran out of it); nor does
    /// a WINDOW_UPDATE (nothing answers here; a receiver keeping back its first credit does not either).
    /// The end must still be sent: a remote `wc -c` waited for it forever once in CI.
    @Test(.enabled(if: geteuid() == 0, "SO_SNDBUFFORCE needs CAP_NET_ADMIN"))
    func aFileSourceIsReadToItsEndWithoutEvents() throws {
        let loop = try IOLoop()
        let server = try Socket.listen(on: .tcp(host: "127.0.0.1", port: 0))
        defer { server.closeQuietly() }
        let a = try Socket.connect(to: .tcp(host: "127.0.0.1", port: try server.localAddress().port))
        try a.setNonBlocking()
        let b = try #require(try server.accept(nonBlocking: true))
        try a.setSocketOption(level: SOL_SOCKET, SO_SNDBUFFORCE, 64 << 10)
        let sender = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
        sender.onControl = { _ throws(WireError) in }
        let file = try ChildProcess.anonymousFile()
        let size = 3 << 20  // within one window: no credit is needed
        let content = [UInt8](repeating: 0x42, count: size)
        var written = 0
        while written < size { written += try content[written...].withUnsafeBytes { try file.writeSome($0) } ?? 0 }
        _ = try file.seek(offset: 0, from: .start)
        let source = LocalEnd(fd: file, owned: true)
        try sender.add(CarriedStream(id: 1, source: source, sink: nil))
        try sender.start()
        try source.watch(loop)
        #expect(source.alwaysReady)

        let decoder = FrameDecoder()
        var received = ByteBuffer()
        var payload = 0
        var ended = false
        func readAll() throws {
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while let count = try chunk.withUnsafeMutableBytes({ try b.readSome(into: $0) }), count > 0 {
                received.writeBytes(chunk[..<count])
            }
            for frame in try decoder.decodeAll(&received) where frame.type == RexecFrame.data && frame.stream == 1 {
                payload += frame.payload.readableBytes
                if frame.flags.contains(.endStream) { ended = true }
            }
        }
        // The sender fills the small buffer and waits.
        for _ in 0..<100 { try loop.runOnce(timeoutMilliseconds: 0) }
        #expect(!ended)
        // The send buffer grows (as TCP's autotuning makes it) and is read: the queue goes out in one flush.
        try a.setSocketOption(level: SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20)
        // Bounded in time, not in turns (a loaded machine turns slowly): the end follows the last byte
        // at once, so two seconds after it is plenty; the whole transfer gets thirty.
        let start = monotonicNanoseconds()
        var allArrived: UInt64?
        while !ended {
            try readAll()
            let now = monotonicNanoseconds()
            if payload == size && allArrived == nil { allArrived = now }
            if now - start > 30_000_000_000 || now - (allArrived ?? now) > 2_000_000_000 { break }
            try loop.runOnce(timeoutMilliseconds: 1)
        }
        #expect(payload == size)
        #expect(ended, "the end of the file was sent")
        sender.close(nil)  // the connection and the file
        b.closeQuietly()
    }

    /// A stream that finished leaves the table: a session carries any number over its life (here five
    /// with room for two at once), and what the peer still sends on a finished one is dropped rather than
    /// taken for a protocol error; a stream number above any seen still is one.
    @Test func finishedStreamsLeaveAndLateFramesForThemAreDropped() throws {
        let lone = try Lone()
        let (loop, mux, b) = (lone.loop, lone.mux, lone.peer)
        mux.maximumStreams = 2
        try mux.start()
        func peerSends(_ id: UInt32, _ bytes: [UInt8], end: Bool) throws {
            var frame = ByteBuffer()
            Frame(type: RexecFrame.data, flags: end ? .endStream : [], stream: id, payload: ByteBuffer(bytes: bytes)).encode(into: &frame)
            _ = try frame.readableBytesView.withUnsafeBytes { try b.writeSome($0) }
        }
        var finished = 0
        for id in UInt32(1)...5 {
            let output = try SystemPackage.FileDescriptor.makePipe(nonBlocking: true)
            let stream = CarriedStream(id: id, source: nil, sink: LocalEnd(fd: output.write, owned: true))
            stream.onFinished = { _ in finished += 1 }
            try mux.add(stream)
            try stream.sink?.watch(loop)
            try peerSends(id, [UInt8(id)], end: true)
            for _ in 0..<100 where finished < Int(id) { try loop.runOnce(timeoutMilliseconds: 1) }
            var got = [UInt8](repeating: 0, count: 8)
            let count = try got.withUnsafeMutableBytes { try output.read.readSome(into: $0) } ?? 0
            #expect(Array(got[..<count]) == [UInt8(id)])
            output.read.closeQuietly()
        }
        #expect(finished == 5)
        #expect(mux.streams.isEmpty)
        #expect(!lone.closed)
        // Late: stream 3 finished. Dropped, the connection stays.
        try peerSends(3, [9, 9], end: false)
        for _ in 0..<20 { try loop.runOnce(timeoutMilliseconds: 1) }
        #expect(!lone.closed)
        // Stream 6 was never opened.
        try peerSends(6, [1], end: false)
        for _ in 0..<100 where !lone.closed { try loop.runOnce(timeoutMilliseconds: 1) }
        #expect(lone.closed)
        #expect((lone.closedWith as? WireError)?.code == .protocolViolation)
    }

    @Test func garbageFromThePeerEndsOnlyThatConnection() throws {
        let lone = try Lone()
        let (loop, b) = (lone.loop, lone.peer)
        try lone.mux.start()
        // A DATA frame for a stream that does not exist.
        var bytes = ByteBuffer()
        Frame(type: RexecFrame.data, stream: 99, payload: ByteBuffer(bytes: [1, 2, 3])).encode(into: &bytes)
        _ = try bytes.readableBytesView.withUnsafeBytes { try b.writeSome($0) }
        for _ in 0..<100 where !lone.closed { try loop.runOnce(timeoutMilliseconds: 1) }
        #expect(lone.closed)
        #expect((lone.closedWith as? WireError)?.code == .protocolViolation)
        // The peer is told why before the connection closes.
        var reply = [UInt8](repeating: 0, count: 4096)
        let count = try reply.withUnsafeMutableBytes { try b.readSome(into: $0) } ?? 0
        var buffer = ByteBuffer(bytes: reply[..<count])
        let frame = try #require(try FrameDecoder().decode(&buffer))
        #expect(frame.type == .goAway)
    }
}

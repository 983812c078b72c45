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
            sender.spliceToLink = splice
            senderStream = CarriedStream(id: 1, source: source, sink: nil)
            receiverStream = CarriedStream(id: 1, source: nil, sink: LocalEnd(fd: output.write, owned: true))
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
        let buffered = pair.receiverStream.pending.readableBytes
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

    @Test func garbageFromThePeerEndsOnlyThatConnection() throws {
        let loop = try IOLoop()
        let (a, b) = try SystemPackage.FileDescriptor.socketPair(nonBlocking: true)
        let mux = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
        var closedWith: Error?
        var closed = false
        mux.onControl = { _ throws(WireError) in }
        mux.onClosed = { closedWith = $0; closed = true }
        try mux.start()
        // A DATA frame for a stream that does not exist.
        var bytes = ByteBuffer()
        Frame(type: RexecFrame.data, stream: 99, payload: ByteBuffer(bytes: [1, 2, 3])).encode(into: &bytes)
        _ = try bytes.readableBytesView.withUnsafeBytes { try b.writeSome($0) }
        for _ in 0..<100 where !closed { try loop.runOnce(timeoutMilliseconds: 1) }
        #expect(closed)
        #expect((closedWith as? WireError)?.code == .protocolViolation)
        // The peer is told why before the connection closes.
        var reply = [UInt8](repeating: 0, count: 4096)
        let count = try reply.withUnsafeMutableBytes { try b.readSome(into: $0) } ?? 0
        var buffer = ByteBuffer(bytes: reply[..<count])
        let frame = try #require(try FrameDecoder().decode(&buffer))
        #expect(frame.type == .goAway)
        b.closeQuietly()
    }
}

import NIOCore
import Testing

@testable import DPUWire

@Suite struct FrameDecoding {
    func encoded(_ frames: [Frame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { frame.encode(into: &buffer) }
        return buffer
    }

    let sample = [
        Frame(type: .ping, stream: 0, payload: ByteBuffer(bytes: [0, 0, 0, 0, 0, 0, 0, 7])),
        Frame(type: FrameType(rawValue: 0x10), flags: .endStream, stream: 42, payload: ByteBuffer(bytes: Array(0..<200))),
        Frame(type: FrameType(rawValue: 0x11), stream: 7),
    ]

    @Test func aRoundTripGivesBackEveryFrame() throws {
        var buffer = encoded(sample)
        #expect(try FrameDecoder().decodeAll(&buffer) == sample)
        #expect(buffer.readableBytes == 0)
    }

    @Test func byteByByteInputGivesTheSameFrames() throws {
        let all = encoded(sample)
        var pending = ByteBuffer()
        var decoded: [Frame] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            decoded += try FrameDecoder().decodeAll(&pending)
        }
        #expect(decoded == sample)
    }

    @Test func aTruncatedFrameWaitsForMore() throws {
        let all = encoded(sample)
        for cut in 0..<all.readableBytes {
            var partial = all.getSlice(at: 0, length: cut)!
            let frames = try FrameDecoder().decodeAll(&partial)
            #expect(frames.count < sample.count)
        }
    }

    @Test func anOversizedLengthIsRefusedFromTheHeaderAlone() {
        var buffer = ByteBuffer()
        Frame.encodeHeader(type: .ping, stream: 0, payloadLength: 5000, into: &buffer)
        // Only the header: the decoder must not wait for 5000 bytes it will refuse anyway.
        #expect(throws: WireError.self) { try FrameDecoder(maximumPayload: 4096).decode(&buffer) }
        var huge = ByteBuffer(bytes: [0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 0, 0, 0, 1])
        #expect { try FrameDecoder().decode(&huge) } throws: { ($0 as? WireError)?.code == .oversized }
    }

    @Test func nonZeroReservedBitsAreRefused() {
        var buffer = ByteBuffer(bytes: [0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0, 1])
        #expect { try FrameDecoder().decode(&buffer) } throws: { ($0 as? WireError)?.code == .malformed }
    }

    @Test func garbageNeverCrashesTheDecoder() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let length = Int.random(in: 0..<64, using: &generator)
            var buffer = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            _ = try? FrameDecoder(maximumPayload: 1 << 16).decodeAll(&buffer)
        }
    }
}

@Suite struct ConnectionMessages {
    let all: [ConnectionMessage] = [
        .ping(0xdead_beef), .pong(1), .goAway(.shuttingDown, reason: "server restarting"),
        .windowUpdate(stream: 3, increment: 65536), .resetStream(stream: 9, .cancelled, reason: ""),
    ]

    @Test func roundTrip() throws {
        for message in all {
            #expect(try ConnectionMessage(message.frame) == message)
        }
    }

    @Test func truncatedPayloadsAreRefused() {
        for message in all {
            let frame = message.frame
            for cut in 0..<frame.payload.readableBytes {
                var short = frame
                short.payload = frame.payload.getSlice(at: frame.payload.readerIndex, length: cut)!
                #expect(throws: WireError.self) { try ConnectionMessage(short) }
            }
        }
    }

    @Test func trailingBytesAreRefused() {
        var frame = ConnectionMessage.ping(1).frame
        frame.payload.writeInteger(UInt8(0))
        #expect(throws: WireError.self) { try ConnectionMessage(frame) }
    }

    @Test func aZeroWindowUpdateIsMalformed() {
        var payload = ByteBuffer()
        payload.writeInteger(UInt32(0))
        #expect(throws: WireError.self) { try ConnectionMessage(Frame(type: .windowUpdate, stream: 1, payload: payload)) }
    }

    @Test func anOverlongReasonIsRefused() {
        var payload = ByteBuffer()
        payload.writeInteger(UInt32(1))
        payload.writeWireString(String(repeating: "x", count: ConnectionMessage.maximumReason + 1))
        #expect { try ConnectionMessage(Frame(type: .goAway, payload: payload)) } throws: {
            ($0 as? WireError)?.code == .oversized
        }
    }
}

@Suite struct BoundedReaders {
    @Test func aLengthBeyondTheBytesPresentIsTruncation() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(100))
        buffer.writeBytes([1, 2, 3])
        #expect { try buffer.readWireBytes("field", maximum: 1000) } throws: { ($0 as? WireError)?.code == .truncated }
    }

    @Test func aCountTheBufferCannotHoldIsRefusedBeforeAllocating() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1_000_000))
        #expect { try buffer.readWireByteStrings("argv", maximumCount: 2_000_000, maximumTotal: 1 << 20) } throws: {
            ($0 as? WireError)?.code == .truncated
        }
    }

    @Test func theTotalOfAListIsBounded() {
        var buffer = ByteBuffer()
        buffer.writeWireByteStrings([Array(repeating: 1, count: 600), Array(repeating: 2, count: 600)])
        #expect { try buffer.readWireByteStrings("env", maximumCount: 10, maximumTotal: 1000) } throws: {
            ($0 as? WireError)?.code == .oversized
        }
    }

    @Test func invalidUTF8IsRefused() {
        var buffer = ByteBuffer()
        buffer.writeWireBytes([0xff, 0xfe])
        #expect { try buffer.readWireString("name", maximum: 10) } throws: { ($0 as? WireError)?.code == .malformed }
    }
}

@Suite struct FlowControlWindows {
    @Test func aSenderStopsAtTheWindowAndResumesOnCredit() throws {
        var send = SendWindow(initial: 1000)
        var receive = ReceiveWindow(size: 1000)
        #expect(send.allowance(1500) == 1000)
        send.consume(1000)
        try receive.receive(1000)
        #expect(send.allowance(1) == 0)
        #expect(receive.release(400) == nil)  // below half: no update yet
        let released = receive.release(100)
        let credit = try #require(released)
        #expect(credit == 500)
        try send.grant(credit)
        #expect(send.allowance(1500) == 500)
    }

    @Test func aReceiverCanWorkInASmallerWindowByWithholdingCredit() throws {
        var send = SendWindow(initial: 1000)
        var receive = ReceiveWindow(size: 1000, target: 400)
        // The whole protocol window may arrive at once, and is accepted.
        send.consume(1000)
        try receive.receive(1000)
        // The first 600 bytes consumed are kept back; then credit comes per half target (200).
        #expect(receive.release(600) == nil)
        #expect(receive.release(199) == nil)
        let released = receive.release(1)
        let credit = try #require(released)
        #expect(credit == 200)
        try send.grant(credit)
        // From now on the sender never has more than the target in flight.
        send.consume(send.allowance(1000))
        try receive.receive(200)
        #expect(send.allowance(1) == 0)
        #expect(receive.outstanding == 1000)
        let releasedNext = receive.release(200)
        let next = try #require(releasedNext)
        #expect(next == 200)
        try send.grant(next)
        #expect(send.allowance(1000) == 200)
        // The peer's limit is still the protocol's window.
        try receive.receive(200)
        #expect(throws: WireError.self) { try receive.receive(1) }
    }

    @Test func aTargetOutsideTheWindowIsClamped() {
        #expect(ReceiveWindow(size: 100, target: 500).target == 100)
        #expect(ReceiveWindow(size: 100, target: 0).target == 1)
        #expect(ReceiveWindow(size: 100).target == 100)
    }

    @Test func sendingPastTheWindowIsTheSendersError() throws {
        var receive = ReceiveWindow(size: 100)
        try receive.receive(100)
        #expect { try receive.receive(1) } throws: { ($0 as? WireError)?.code == .flowControl }
    }

    @Test func aGrantBeyondTheMaximumIsRefused() {
        var send = SendWindow(initial: FlowControl.maximumWindow)
        #expect(throws: WireError.self) { try send.grant(1) }
    }
}

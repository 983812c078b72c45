import NIOCore
import Testing

@testable import DPUWire

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private let messages: [UDSProxyMessage] = [
    .open(stream: 1, path: bytes("/var/lib/libvirt/qemu/domain-1-vm/monitor.sock")),
    .open(stream: 0xffff_fffd, path: bytes("/" + String(repeating: "a", count: 106))),
    .openResult(stream: 3, errno: 0),
    .openResult(stream: 5, errno: 111),
    .descriptors(stream: 7, [.file(path: bytes("/home/VMs/disk.qcow2"), flags: [.readable, .writable, .append], offset: 1 << 40)]),
    .descriptors(stream: 9, [
        .pipe(stream: 11, end: .read, nonBlocking: false), .pipe(stream: 13, end: .write, nonBlocking: true),
        .file(path: [0x2f, 0xff, 0x80], flags: .all, offset: 0),
    ]),
]

@Suite struct UDSProxyPeerMessages {
    @Test func everyMessageSurvivesARoundTrip() throws {
        for message in messages {
            #expect(try UDSProxyMessage(message.frame) == message)
        }
    }

    @Test func byteByByteInputGivesTheSameMessages() throws {
        var all = ByteBuffer()
        for message in messages { message.frame.encode(into: &all) }
        var pending = ByteBuffer()
        var decoded: [UDSProxyMessage] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            for frame in try FrameDecoder().decodeAll(&pending) { decoded.append(try UDSProxyMessage(frame)) }
        }
        #expect(decoded == messages)
    }

    @Test func everyTruncationIsRefused() {
        for message in messages {
            let frame = message.frame
            for cut in 0..<frame.payload.readableBytes {
                var short = frame
                short.payload = frame.payload.getSlice(at: frame.payload.readerIndex, length: cut)!
                #expect(throws: WireError.self) { try UDSProxyMessage(short) }
            }
        }
    }

    @Test func trailingBytesAreRefused() {
        for message in messages {
            var frame = message.frame
            frame.payload.writeInteger(UInt8(0))
            #expect { try UDSProxyMessage(frame) } throws: { ($0 as? WireError)?.code == .malformed }
        }
    }

    @Test func oversizedPathsAreRefusedBeforeTheyAreRead() {
        let open = UDSProxyMessage.open(stream: 1, path: bytes("/" + String(repeating: "a", count: 107))).frame
        #expect { try UDSProxyMessage(open) } throws: { ($0 as? WireError)?.code == .oversized }
        let file = UDSProxyMessage.descriptors(
            stream: 1, [.file(path: bytes("/" + String(repeating: "a", count: 4095)), flags: .readable, offset: 0)]
        ).frame
        #expect { try UDSProxyMessage(file) } throws: { ($0 as? WireError)?.code == .oversized }
        // A length field that claims more than the limit, with nothing behind it.
        var lying = ByteBuffer()
        lying.writeInteger(UInt32.max, endianness: .big)
        #expect { try UDSProxyMessage(Frame(type: .udsOpen, stream: 1, payload: lying)) } throws: { ($0 as? WireError)?.code == .oversized }
    }

    @Test func tooManyDescriptorsAreRefused() {
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(0))
        #expect(throws: WireError.self) { try UDSProxyMessage(Frame(type: .udsDescriptors, stream: 1, payload: payload)) }
        let many = [PassedDescriptor](repeating: .pipe(stream: 2, end: .read, nonBlocking: false), count: 254)
        #expect(throws: WireError.self) { try UDSProxyMessage(UDSProxyMessage.descriptors(stream: 1, many).frame) }
    }

    @Test(arguments: ["relative/x.sock", "", "/a\u{0}b"])
    func pathsMustBeAbsoluteWithoutNul(_ text: String) {
        #expect(throws: WireError.self) { try UDSProxyMessage(UDSProxyMessage.open(stream: 1, path: bytes(text)).frame) }
        let file = UDSProxyMessage.descriptors(stream: 1, [.file(path: bytes(text), flags: .readable, offset: 0)]).frame
        #expect(throws: WireError.self) { try UDSProxyMessage(file) }
    }

    @Test func fieldsWithImpossibleValuesAreRefused() {
        // Stream 0 is the connection's own.
        #expect(throws: WireError.self) { try UDSProxyMessage(UDSProxyMessage.openResult(stream: 0, errno: 0).frame) }
        #expect(throws: WireError.self) {
            try UDSProxyMessage(UDSProxyMessage.descriptors(stream: 1, [.pipe(stream: 0, end: .read, nonBlocking: false)]).frame)
        }
        #expect(throws: WireError.self) { try UDSProxyMessage(UDSProxyMessage.openResult(stream: 1, errno: -1).frame) }
        #expect(throws: WireError.self) {
            try UDSProxyMessage(UDSProxyMessage.descriptors(stream: 1, [.file(path: bytes("/f"), flags: PassedFileFlags(rawValue: 1 << 20), offset: 0)]).frame)
        }
        #expect(throws: WireError.self) {
            try UDSProxyMessage(UDSProxyMessage.descriptors(stream: 1, [.file(path: bytes("/f"), flags: .readable, offset: UInt64.max)]).frame)
        }
        var unknownKind = ByteBuffer()
        unknownKind.writeInteger(UInt8(1))
        unknownKind.writeInteger(UInt8(9))
        #expect(throws: WireError.self) { try UDSProxyMessage(Frame(type: .udsDescriptors, stream: 1, payload: unknownKind)) }
        #expect { try UDSProxyMessage(Frame(type: FrameType(rawValue: 0x14), stream: 1)) } throws: {
            ($0 as? WireError)?.code == .unknownMessage
        }
        #expect(throws: WireError.self) { try UDSProxyMessage(Frame(type: .udsData, stream: 1)) }
    }

    @Test func garbageOnlyEverThrowsWireErrors() {
        var generator = SystemRandomNumberGenerator()
        for type in [FrameType.udsOpen, .udsOpenResult, .udsDescriptors] {
            for _ in 0..<3000 {
                let length = Int.random(in: 0..<80, using: &generator)
                let payload = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
                do {
                    _ = try UDSProxyMessage(Frame(type: type, stream: UInt32.random(in: 0...9, using: &generator), payload: payload))
                } catch {
                    // Only WireError exists in the signature; reaching here without a crash is the test.
                }
            }
        }
    }
}

@Suite struct UDSProxyControlMessages {
    @Test func aRequestSurvivesARoundTrip() throws {
        for request in [
            UDSProxyControlRequest(path: bytes("/var/run/rexec/rexec_uds.sock")),
            UDSProxyControlRequest(path: bytes("/" + String(repeating: "x", count: 106)), nonBlocking: true),
        ] {
            var buffer = ByteBuffer()
            request.encode(into: &buffer)
            #expect(try UDSProxyControlRequest.decode(&buffer) == request)
            #expect(buffer.readableBytes == 0)
        }
    }

    @Test func aRequestArrivingByteByByteIsDecodedOnceComplete() throws {
        let request = UDSProxyControlRequest(path: bytes("/srv/x.sock"), nonBlocking: true)
        var all = ByteBuffer()
        request.encode(into: &all)
        var pending = ByteBuffer()
        var decoded: [UDSProxyControlRequest] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            #expect(UDSProxyControlProtocol.identify(pending.readableBytesView) != .legacy)
            if let request = try UDSProxyControlRequest.decode(&pending) { decoded.append(request) }
        }
        #expect(decoded == [request])
    }

    @Test func badRequestsAreRefused() {
        func header(version: UInt8 = 1, flags: UInt8 = 0, length: UInt16) -> ByteBuffer {
            var buffer = ByteBuffer(bytes: bytes("UDSP"))
            buffer.writeInteger(version)
            buffer.writeInteger(flags)
            buffer.writeInteger(length, endianness: .big)
            return buffer
        }
        var version = header(version: 2, length: 3)
        #expect { try UDSProxyControlRequest.decode(&version) } throws: { ($0 as? WireError)?.code == .unsupportedVersion }
        var flags = header(flags: 2, length: 3)
        #expect { try UDSProxyControlRequest.decode(&flags) } throws: { ($0 as? WireError)?.code == .malformed }
        var empty = header(length: 0)
        #expect { try UDSProxyControlRequest.decode(&empty) } throws: { ($0 as? WireError)?.code == .oversized }
        var long = header(length: 108)
        #expect { try UDSProxyControlRequest.decode(&long) } throws: { ($0 as? WireError)?.code == .oversized }
        var relative = header(length: 3)
        relative.writeBytes(bytes("a/b"))
        #expect { try UDSProxyControlRequest.decode(&relative) } throws: { ($0 as? WireError)?.code == .malformed }
        var legacy = ByteBuffer(bytes: [1, 0, 0, 0])
        #expect { try UDSProxyControlRequest.decode(&legacy) } throws: { ($0 as? WireError)?.code == .badMagic }
    }

    @Test func theProtocolIsToldFromTheFirstBytes() {
        #expect(UDSProxyControlProtocol.identify([UInt8]()) == nil)
        #expect(UDSProxyControlProtocol.identify(bytes("UD")) == nil)
        #expect(UDSProxyControlProtocol.identify(bytes("UDSP")) == .current)
        #expect(UDSProxyControlProtocol.identify([1, 0]) == .legacy)
        #expect(UDSProxyControlProtocol.identify(bytes("UDX")) == .legacy)
    }

    @Test func repliesCarryTheErrno() throws {
        #expect(try UDSProxyControlReply.decode(UDSProxyControlReply.encode(errno: 0)) == 0)
        #expect(try UDSProxyControlReply.decode(UDSProxyControlReply.encode(errno: 113)) == 113)
        #expect(throws: WireError.self) { try UDSProxyControlReply.decode([0, 0, 0]) }
    }
}

@Suite struct OriginalControlRequests {
    /// What the original's libudsproxy.so sent (observed: garbage in the unused field).
    func original(type: UInt16 = 1, path: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(type, endianness: .little)
        buffer.writeBytes([0xb6, 0x87])
        buffer.writeBytes(bytes(path))
        buffer.writeRepeatingByte(0, count: 108 - path.utf8.count)
        return buffer
    }

    @Test func theObservedBytesDecode() throws {
        var buffer = original(path: "/srv/remote/echo.sock")
        #expect(buffer.readableBytes == LegacyUDSProxyRequest.size)
        #expect(try LegacyUDSProxyRequest.decode(&buffer) == LegacyUDSProxyRequest(socketType: 1, path: bytes("/srv/remote/echo.sock")))
    }

    @Test func aRoundTripAndByteByByte() throws {
        let request = LegacyUDSProxyRequest(socketType: 2, path: bytes("relative.sock"))
        var all = ByteBuffer()
        request.encode(into: &all)
        var pending = ByteBuffer()
        var decoded: [LegacyUDSProxyRequest] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            if let request = try LegacyUDSProxyRequest.decode(&pending) { decoded.append(request) }
        }
        #expect(decoded == [request])
    }

    @Test func badRequestsAreRefused() {
        var type = original(type: 5, path: "/x")
        #expect(throws: WireError.self) { try LegacyUDSProxyRequest.decode(&type) }
        var long = original(path: "/" + String(repeating: "a", count: 101))
        #expect { try LegacyUDSProxyRequest.decode(&long) } throws: { ($0 as? WireError)?.code == .oversized }
        var empty = original(path: "")
        #expect(throws: WireError.self) { try LegacyUDSProxyRequest.decode(&empty) }
        var unterminated = ByteBuffer(bytes: [1, 0, 0, 0] + [UInt8](repeating: 0x61, count: 108))
        #expect { try LegacyUDSProxyRequest.decode(&unterminated) } throws: { ($0 as? WireError)?.code == .malformed }
        #expect(LegacyUDSProxyRequest.reply(true) == [1, 0, 0, 0])
        #expect(LegacyUDSProxyRequest.reply(false) == [0, 0, 0, 0])
    }
}

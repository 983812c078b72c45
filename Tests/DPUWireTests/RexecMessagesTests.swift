import NIOCore
import Testing

@testable import DPUWire

@Suite struct RexecMessageCoding {
    static let request = RexecExecRequest(
        program: Array("/usr/bin/qemu-kvm".utf8),
        arguments: [Array("/usr/bin/qemu-kvm".utf8), Array("-name".utf8), [0xff, 0xfe], []],
        environment: [Array("PATH=/usr/bin".utf8), Array("EMPTY=".utf8), Array("LC_ALL=C".utf8)],
        workingDirectory: Array("/var/lib/libvirt".utf8), umask: 0o022, gated: true,
        terminal: RexecTerminal(
            flags: [1, 2, 3, 4], controlCharacters: Array(0..<32),
            size: RexecWindowSize(rows: 24, columns: 80, width: 640, height: 480)),
        descriptors: [
            RexecDescriptor(targets: [0, 1, 2], kind: .terminal(stream: 1)),
            RexecDescriptor(targets: [6], kind: .file(path: Array("/run/libvirt/qemu/vm.pid".utf8), flags: 0o2, offset: 1 << 33)),
            RexecDescriptor(targets: [10, 11], kind: .output(stream: 2)),
            RexecDescriptor(targets: [29], kind: .listener),
            RexecDescriptor(targets: [30], kind: .input(stream: 3)),
            RexecDescriptor(targets: [31], kind: .socket(stream: 4)),
        ])

    static let all: [RexecMessage] = [
        .exec(request),
        .exec(RexecExecRequest(program: [0x2f], arguments: [[0x2f]], environment: [], workingDirectory: [0x2f], umask: 0)),
        .started(pid: 4242, notes: ["fd 6 is not carried", ""]),
        .exited(.exited(code: 0)), .exited(.exited(code: 255)),
        .exited(.signaled(signal: 9, coreDumped: false)), .exited(.signaled(signal: 11, coreDumped: true)),
        .failed(RexecFailure(.notFound, errno: 2, "not found on the server")),
        .signal(15, toGroup: false), .signal(2, toGroup: true),
        .windowSize(RexecWindowSize(rows: 50, columns: 200, width: 0, height: 0)),
        .open(stream: 17, listener: 29),
        .stopped(signal: 20), .continued, .gate(UInt8(ascii: "1")),
        .exec(RexecExecRequest(
            program: Array("/usr/bin/qemu-system-x86_64".utf8), arguments: [Array("qemu".utf8), Array("-daemonize".utf8)],
            environment: [], workingDirectory: [0x2f], umask: 0o022,
            descriptors: [RexecDescriptor(targets: [2], kind: .output(stream: 1))],
            daemonPidFile: Array("/var/lib/libvirt/qemu/qmp-x/qmp.pid".utf8))),
        .daemonized(pid: 4243, notes: ["a note"]), .daemonized(pid: 0, notes: []),
    ] + passes

    static let passes: [RexecMessage] = [
        .pass(stream: 17, descriptors: [RexecDescriptorKind.output(stream: 18)]),
        .pass(stream: 0x8000_0004, descriptors: [
            RexecDescriptorKind.file(path: Array("/var/lib/libvirt/qemu/save/vm.save".utf8), flags: 0o1, offset: 4096),
            RexecDescriptorKind.input(stream: 0x8000_0005), RexecDescriptorKind.socket(stream: 0x8000_0006),
            RexecDescriptorKind.output(stream: 0x8000_0007),
        ]),
    ]

    func encoded(_ messages: [RexecMessage]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for message in messages { message.frame.encode(into: &buffer) }
        return buffer
    }

    @Test func everyMessageSurvivesARoundTrip() throws {
        for message in Self.all {
            #expect(try RexecMessage(message.frame) == message)
        }
    }

    @Test func byteByByteInputDecodesToTheSameMessages() throws {
        let all = encoded(Self.all)
        var pending = ByteBuffer()
        var decoded: [RexecMessage] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            for frame in try FrameDecoder().decodeAll(&pending) { decoded.append(try RexecMessage(frame)) }
        }
        #expect(decoded == Self.all)
    }

    @Test func everyTruncatedPayloadIsRefused() {
        for message in Self.all {
            let frame = message.frame
            let length = frame.payload.readableBytes
            for cut in 0..<length {
                let truncated = Frame(type: frame.type, stream: frame.stream, payload: frame.payload.getSlice(at: frame.payload.readerIndex, length: cut)!)
                #expect(throws: WireError.self, "\(message) cut at \(cut)") { try RexecMessage(truncated) }
            }
        }
    }

    @Test func trailingBytesAreRefused() {
        for message in Self.all {
            var frame = message.frame
            frame.payload.writeInteger(UInt8(0))
            #expect { try RexecMessage(frame) } throws: { ($0 as? WireError)?.code == .malformed }
        }
    }

    @Test func oversizedCountsAreRefusedBeforeAnyAllocation() {
        // An EXEC claiming four billion arguments in a few bytes.
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(0))
        payload.writeWireBytes(Array("/bin/true".utf8))
        payload.writeInteger(UInt32.max, endianness: .big)
        #expect { try RexecMessage(Frame(type: RexecFrame.exec, payload: payload)) } throws: {
            ($0 as? WireError)?.code == .oversized
        }
        // A string longer than the payload.
        var long = ByteBuffer()
        long.writeInteger(UInt8(0))
        long.writeInteger(UInt32(1 << 30), endianness: .big)
        #expect { try RexecMessage(Frame(type: RexecFrame.exec, payload: long)) } throws: { ($0 as? WireError)?.code == .oversized }
        // Too many descriptors.
        var request = Self.request
        request.descriptors = (0..<Int32(RexecLimits.maximumDescriptors + 1)).map {
            RexecDescriptor(targets: [$0 + 3], kind: .listener)
        }
        #expect { try RexecMessage(RexecMessage.exec(request).frame) } throws: { ($0 as? WireError)?.code == .oversized }
    }

    @Test func invalidFieldsAreRefused() {
        func refused(_ change: (inout RexecExecRequest) -> Void) -> Bool {
            var request = Self.request
            change(&request)
            return (try? RexecMessage(RexecMessage.exec(request).frame)) == nil
        }
        #expect(refused { $0.program = [] })
        #expect(refused { $0.program = Array("/bin/\0x".utf8) })
        #expect(refused { $0.arguments = [] })
        #expect(refused { $0.arguments.append([0x61, 0, 0x62]) })
        #expect(refused { $0.environment.append(Array("NOEQUALS".utf8)) })
        #expect(refused { $0.workingDirectory = Array("relative".utf8) })
        #expect(refused { $0.umask = 0o1000 })
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [1], kind: .listener)) })  // fd 1 twice
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [40], kind: .input(stream: 2))) })  // stream twice
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [41], kind: .input(stream: 0))) })
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [], kind: .listener)) })
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [1 << 21], kind: .listener)) })
        #expect(refused { $0.descriptors.append(RexecDescriptor(targets: [42], kind: .file(path: Array("rel".utf8), flags: 0, offset: 0))) })
        #expect(refused {
            $0.terminal = nil  // a terminal descriptor without TTY mode
        })
        #expect(refused { $0.daemonPidFile = Array("relative.pid".utf8) })
        #expect(refused { $0.daemonPidFile = [] })
        #expect(!refused { $0.daemonPidFile = Array("/run/x.pid".utf8) })
        #expect(!refused { _ in })
        #expect((try? RexecMessage(Frame(type: RexecFrame.daemonized, payload: ByteBuffer(bytes: [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])))) == nil)
        #expect((try? RexecMessage(RexecMessage.signal(0, toGroup: false).frame)) == nil)
        #expect((try? RexecMessage(RexecMessage.signal(99, toGroup: false).frame)) == nil)
        #expect((try? RexecMessage(RexecMessage.started(pid: 0, notes: []).frame)) == nil)
        #expect((try? RexecMessage(RexecMessage.stopped(signal: 0).frame)) == nil)
        #expect((try? RexecMessage(RexecMessage.stopped(signal: 9).frame)) == nil)  // SIGKILL stops nothing
        #expect((try? RexecMessage(RexecMessage.stopped(signal: 15).frame)) == nil)
        #expect((try? RexecMessage(RexecMessage.stopped(signal: 21).frame)) == .stopped(signal: 21))
        #expect((try? RexecMessage(Frame(type: RexecFrame.exited, payload: ByteBuffer(bytes: [2, 0, 0])))) == nil)
        #expect((try? RexecMessage(Frame(type: RexecFrame.exited, payload: ByteBuffer(bytes: [1, 0, 0])))) == nil)
        #expect((try? RexecMessage(Frame(type: RexecFrame.open, stream: 0, payload: ByteBuffer(bytes: [0, 0, 0, 3])))) == nil)
        #expect((try? RexecMessage(Frame(type: RexecFrame.signal, stream: 5, payload: ByteBuffer(bytes: [0, 0, 0, 9, 0])))) == nil)
    }

    @Test func passedDescriptorsAreBoundedAndValidated() {
        func refused(_ kinds: [RexecDescriptorKind], on stream: UInt32 = 3) -> WireError.Code? {
            do {
                _ = try RexecMessage(RexecMessage.pass(stream: stream, descriptors: kinds).frame)
                return nil
            } catch {
                return error.code
            }
        }
        let most = (0..<RexecLimits.maximumPassed).map { RexecDescriptorKind.input(stream: UInt32(10 + $0)) }
        #expect(refused(most) == nil)
        #expect(refused(most + [.input(stream: 99)]) == .oversized)
        #expect(refused([]) == .malformed)
        #expect(refused([.listener]) == .malformed)
        #expect(refused([.terminal(stream: 4)]) == .malformed)
        #expect(refused([.input(stream: 0)]) == .malformed)
        #expect(refused([.input(stream: 4), .socket(stream: 4)]) == .malformed)  // one stream twice
        #expect(refused([.output(stream: 3)], on: 3) == .malformed)  // the carrier itself
        #expect(refused([.output(stream: 4)], on: 0) == .malformed)  // on stream 0
        #expect(refused([.file(path: Array("relative".utf8), flags: 0, offset: 0)]) == .malformed)
        #expect(refused([.file(path: Array("/a\0b".utf8), flags: 0, offset: 0)]) == .malformed)
        #expect(refused([.file(path: [UInt8](repeating: 0x2f, count: RexecLimits.maximumPath + 1), flags: 0, offset: 0)]) == .oversized)
        // A count byte that promises more than the payload holds, and an unknown kind.
        #expect(throws: WireError.self) { try RexecMessage(Frame(type: RexecFrame.pass, stream: 3, payload: ByteBuffer(bytes: [16, 2, 0, 0, 0, 9]))) }
        #expect(throws: WireError.self) { try RexecMessage(Frame(type: RexecFrame.pass, stream: 3, payload: ByteBuffer(bytes: [1, 9, 0, 0, 0, 9]))) }
    }

    @Test func unknownTypesAreNamedAsSuch() {
        #expect { try RexecMessage(Frame(type: FrameType(rawValue: 0x7f))) } throws: { ($0 as? WireError)?.code == .unknownMessage }
        #expect { try RexecMessage(Frame(type: RexecFrame.data, stream: 1)) } throws: { ($0 as? WireError)?.code == .unknownMessage }
    }

    @Test func garbageNeverCrashesTheDecoder() {
        var generator = SystemRandomNumberGenerator()
        let types = (0x10...0x1c).map { FrameType(rawValue: UInt8($0)) }
        for _ in 0..<5000 {
            let length = Int.random(in: 0..<96, using: &generator)
            let payload = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let type = types.randomElement(using: &generator)!
            _ = try? RexecMessage(Frame(type: type, stream: UInt32.random(in: 0...2, using: &generator), payload: payload))
        }
        // Valid frames with single bytes flipped.
        for message in Self.all {
            let frame = message.frame
            for index in 0..<frame.payload.readableBytes {
                var payload = frame.payload
                let byte = payload.getInteger(at: payload.readerIndex + index, as: UInt8.self)!
                payload.setInteger(byte ^ 0xff, at: payload.readerIndex + index)
                _ = try? RexecMessage(Frame(type: frame.type, stream: frame.stream, payload: payload))
            }
        }
    }
}

@Suite struct OriginalRexecProtocol {
    /// The bytes the original client sends for `rexec /bin/echo hi` (reference/rexec.md §6.5).
    static let execHeader: [UInt8] = [
        0x5a, 0x5a, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
    static let execPayload = Array("/bin/echo\0hi\0{ \"Files\": [ ] }".utf8)

    @Test func theOriginalsExecHeaderDecodes() throws {
        var buffer = ByteBuffer(bytes: Self.execHeader)
        let header = try #require(try LegacyRexecHeader.decode(&buffer))
        #expect(header.messageType == .exec)
        #expect(header.argc == 2 && header.length == 0x1d && header.pipeFD == 0)
        let exec = try LegacyRexecExec(payload: Self.execPayload, argc: header.argc)
        #expect(exec.arguments == [Array("/bin/echo".utf8), Array("hi".utf8)])
        #expect(exec.files.isEmpty)
    }

    @Test func garbageInUnusedFieldsIsIgnored() throws {
        // PIDMAP and KILL as the original server sends them: only the named field is meaningful.
        var buffer = ByteBuffer(bytes: [
            0x5c, 0x5a, 0, 0, 0x5e, 0x5e, 0x08, 0x6b, 1, 0, 0, 0, 0, 0, 0, 0, 0x18, 0xf5, 0xfb, 0xf0, 0, 0, 0, 0,
        ])
        let header = try #require(try LegacyRexecHeader.decode(&buffer))
        #expect(header.messageType == .pipe && header.pipeFD == 1)
    }

    @Test func headersWeSendHaveTheOriginalLayout() {
        var buffer = ByteBuffer()
        LegacyRexecHeader(type: .pidMap, pid: 0x36d8).encode(into: &buffer)
        LegacyRexecHeader(type: .kill, exitStatus: 137).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [
            0x5d, 0x5a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd8, 0x36, 0, 0,
            0x5b, 0x5a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 137, 0, 0, 0, 0, 0, 0, 0,
        ])
    }

    @Test func aHeaderArrivingByteByByteWaitsUntilComplete() throws {
        var pending = ByteBuffer()
        for (index, byte) in Self.execHeader.enumerated() {
            pending.writeInteger(byte)
            let header = try LegacyRexecHeader.decode(&pending)
            #expect((header != nil) == (index == Self.execHeader.count - 1))
        }
    }

    @Test func badHeadersAreRefused() {
        func refused(_ bytes: [UInt8]) -> Bool {
            var buffer = ByteBuffer(bytes: bytes)
            return (try? LegacyRexecHeader.decode(&buffer)) == nil
        }
        var unknown = Self.execHeader
        unknown[0] = 0x99
        #expect(refused(unknown))
        var huge = Self.execHeader
        huge[12...15] = [0, 0, 0x20, 0]  // 2 MiB payload
        #expect(refused(huge))
        var noArguments = Self.execHeader
        noArguments[4] = 0
        #expect(refused(noArguments))
        var manyArguments = Self.execHeader
        manyArguments[4...7] = [0xff, 0xff, 0xff, 0x7f]
        #expect(refused(manyArguments))
        var pipeWithPayload = Self.execHeader
        pipeWithPayload[0] = 0x5c
        #expect(refused(pipeWithPayload))
    }

    @Test func theFileListIsParsedInAnyJSONFormatting() throws {
        let compact = Array("/bin/cat\0{\"Files\":[{\"Fd\":7,\"Path\":\"\\/srv\\/fd7.txt\",\"Perm\":33793,\"Offset\":12}]}".utf8)
        let spaced = Array("/bin/cat\0{ \"Files\": [ { \"Fd\": 7, \"Path\": \"\\/srv\\/fd7.txt\", \"Perm\": 33793, \"Offset\": 12 } ] }".utf8)
        for payload in [compact, spaced] {
            let exec = try LegacyRexecExec(payload: payload, argc: 1)
            #expect(exec.files == [LegacyRexecFile(fd: 7, path: Array("/srv/fd7.txt".utf8), flags: 33793, offset: 12)])
        }
    }

    @Test func aPayloadWithFewerStringsThanArgcIsRefused() {
        // The original walked argc strings without bounds.
        #expect(throws: WireError.self) { try LegacyRexecExec(payload: Array("/bin/echo\0{}".utf8), argc: 131_072) }
        #expect(throws: WireError.self) { try LegacyRexecExec(payload: Array("/bin/echo".utf8), argc: 1) }
    }

    @Test func malformedJSONIsRefused() {
        let bad = [
            "", "{", "{\"Files\":", "{\"Files\":[{\"Fd\":2,\"Path\":\"/x\",\"Perm\":0}]}", "{\"Files\":[{\"Fd\":7}]}",
            "{\"Files\":[{\"Fd\":7,\"Path\":\"relative\",\"Perm\":0}]}", "[]", "{\"Files\":{}}", "{\"Files\":[]} x",
            String(repeating: "[", count: 100),
        ]
        for json in bad {
            #expect(throws: WireError.self, "\(json)") { try LegacyRexecExec(payload: Array("/bin/cat\0\(json)".utf8), argc: 1) }
        }
    }

    @Test func garbageNeverCrashesTheParsers() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("{}[]\":,0123456789-\\/uFilesPathPermOffset \0".utf8)
        for _ in 0..<5000 {
            let length = Int.random(in: 0..<64, using: &generator)
            let bytes = (0..<length).map { _ in alphabet.randomElement(using: &generator)! }
            _ = try? LegacyRexecExec(payload: bytes, argc: Int32.random(in: 1...3, using: &generator))
            var buffer = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            _ = try? LegacyRexecHeader.decode(&buffer)
        }
    }
}

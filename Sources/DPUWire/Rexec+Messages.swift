import NIOCore

// rexec's messages: one program per connection. After the handshake the client sends EXEC; the server
// answers STARTED (or FAILED and closes), relays the program's streams as DATA frames under per-stream
// flow control, and ends with EXITED once the program's output written before it exited has been sent.
//
// ```
// client                                              server
//   HELLO, [AUTH], EXEC             ─────────►
//                                   ◄───────── STARTED(pid) | FAILED(why)
//   DATA(stdin...), SIGNAL, WINSIZE ─────────►            (any order, any time)
//   OPEN(stream, listener fd)       ─────────►            (a connection accepted on a carried listener)
//                                   ◄───────── DATA(stdout, stderr...), STOPPED, CONTINUED
//   PASS(stream, descriptors), DATA ◄────────►            (fds passed on a carried unix socket)
//                                   ◄───────── EXITED(status)
// ```
//
// PASS (only when both hellos have `RexecCapability.passDescriptors`): a program passed descriptors with
// SCM_RIGHTS on a carried unix stream socket. They are described, in a PASS on that socket's stream, just
// before the DATA frame with the bytes they came with; each travels as EXEC's descriptors do (a file by
// path, or a pipe or socket of its own on a new stream, numbered by the sender: the client below 2^31,
// the server from 2^31). The receiver makes them and hands them on with the first byte that follows.
//
// A program that daemonizes (EXEC with a daemon pid file, e.g. `qemu -daemonize -pidfile PATH`): when it
// exits 0 and PATH on the server names a live descendant of it, the server answers DAEMONIZED(daemon pid)
// instead of EXITED and follows the daemon: SIGNAL reaches the daemon, EXITED reports the daemon's end,
// and a client that goes away gets it ended (SIGTERM, then SIGKILL). The client leaves a stand-in behind.
//
// ```
//   HELLO, [AUTH], EXEC(daemon pid file) ───►
//                                   ◄───────── STARTED(pid), DATA..., DAEMONIZED(daemon pid)
//   SIGNAL                          ─────────►            (to the daemon)
//                                   ◄───────── EXITED(the daemon's status)
// ```
//
// Payload fields are big-endian; byte strings are u32 length + bytes (argv, the environment and paths are
// bytes, not text: a file name need not be UTF-8). Stream 0 is the connection; every other stream is one
// carried file descriptor (or one accepted connection), numbered by the client.

/// rexec frame types (service `Service.rexec`).
public enum RexecFrame {
    /// C→S: `RexecExecRequest`. Exactly once, first.
    public static let exec = FrameType(rawValue: 0x10)
    /// S→C: the program runs; its pid on the server and notes about fds that could not be carried.
    public static let started = FrameType(rawValue: 0x11)
    /// S→C: the program ended (`RexecExit`). Last frame of the connection.
    public static let exited = FrameType(rawValue: 0x12)
    /// S→C: the program could not be started (`RexecFailure`); the server closes the connection.
    public static let failed = FrameType(rawValue: 0x13)
    /// C→S: deliver a signal (u32 number, u8 1 = to the process group).
    public static let signal = FrameType(rawValue: 0x14)
    /// C→S: the terminal's new size (TTY mode).
    public static let windowSize = FrameType(rawValue: 0x15)
    /// Both ways: bytes of stream `stream`; flag `endStream` = end of file. Not decoded as a message
    /// (the payload is the data), see `RexecMessage`.
    public static let data = FrameType(rawValue: 0x16)
    /// C→S: a connection was accepted on the carried listening socket (u32 fd number); the stream id is
    /// the new connection's.
    public static let open = FrameType(rawValue: 0x17)
    /// S→C: the program was stopped by a signal (u32).
    public static let stopped = FrameType(rawValue: 0x18)
    /// S→C: the program was continued.
    public static let continued = FrameType(rawValue: 0x19)
    /// C→S: the start gate's word (u8, `'1'` = run), for a gated EXEC.
    public static let gate = FrameType(rawValue: 0x1a)
    /// S→C: the program exited 0 and left the daemon its pid file names (u32 pid, 0 if none could be
    /// followed; notes); the session goes on with the daemon. Only for an EXEC with a daemon pid file.
    public static let daemonized = FrameType(rawValue: 0x1b)
    /// Both ways, on a carried socket's stream: the descriptors passed with the next DATA bytes of that
    /// stream (u8 count, then each as an EXEC descriptor's kind and fields, without fd numbers). Only with
    /// `RexecCapability.passDescriptors`.
    public static let pass = FrameType(rawValue: 0x1c)
}

/// rexec's bits in `Hello.capabilities`; what both hellos have may be used on the connection.
public enum RexecCapability {
    /// PASS frames: descriptors passed with SCM_RIGHTS on a carried unix socket travel with its bytes.
    public static let passDescriptors: UInt64 = 1 << 0
    /// What this build speaks.
    public static let supported: UInt64 = passDescriptors
}

/// Hard limits on what a peer may ask for; checked before anything is allocated.
public enum RexecLimits {
    /// Arguments plus environment entries (Linux allows about as many in 2 MiB of argv+env).
    public static let maximumStrings = 131_072
    /// Carried file descriptors.
    public static let maximumDescriptors = 1024
    /// Numbers one carried object may appear under (fd 1 and 2 on one pipe...).
    public static let maximumTargets = 64
    /// Highest fd number a descriptor may be placed at.
    public static let maximumDescriptorNumber: UInt32 = 1 << 20
    /// A path (PATH_MAX).
    public static let maximumPath = 4096
    /// Notes in STARTED, and the length of each note or message.
    public static let maximumNotes = 64
    public static let maximumText = 4096
    /// Descriptors passed with one message on a carried socket (the kernel allows 253, SCM_MAX_FD; a
    /// QMP client passes one at a time).
    public static let maximumPassed = 16
    /// Passed descriptors one carried socket may hold waiting for the bytes they came with.
    public static let maximumPassedWaiting = 64
    /// Streams a side numbers from here on (the server's, for descriptors it passes); the client's are
    /// below.
    public static let serverStreams: UInt32 = 1 << 31
}

/// How one inherited fd is carried.
public enum RexecDescriptorKind: Equatable, Sendable {
    /// Reopened on the server by path, with the same status flags and offset.
    case file(path: [UInt8], flags: UInt32, offset: UInt64)
    /// A pipe the program reads (the client sends DATA on `stream`).
    case input(stream: UInt32)
    /// A pipe the program writes (the server sends DATA on `stream`).
    case output(stream: UInt32)
    /// A connected stream socket: DATA both ways on `stream`, end of stream per direction.
    case socket(stream: UInt32)
    /// A listening unix socket: the program gets its own listening socket; each connection the client
    /// accepts arrives as OPEN with a new stream.
    case listener
    /// The pseudo-terminal's terminal side (TTY mode): DATA both ways on `stream`.
    case terminal(stream: UInt32)

    fileprivate var tag: UInt8 {
        switch self {
        case .file: 1
        case .input: 2
        case .output: 3
        case .socket: 4
        case .listener: 5
        case .terminal: 6
        }
    }

    /// The stream the descriptor uses, if any.
    public var stream: UInt32? {
        switch self {
        case .input(let stream), .output(let stream), .socket(let stream), .terminal(let stream): stream
        case .file, .listener: nil
        }
    }
}

/// One carried object and the fd numbers the program sees it at.
public struct RexecDescriptor: Equatable, Sendable {
    public var targets: [Int32]
    public var kind: RexecDescriptorKind

    public init(targets: [Int32], kind: RexecDescriptorKind) {
        self.targets = targets
        self.kind = kind
    }
}

/// TTY mode: the remote program gets a pseudo-terminal with these modes and size.
public struct RexecTerminal: Equatable, Sendable {
    /// termios c_iflag, c_oflag, c_cflag, c_lflag and the 32 control characters.
    public var flags: [UInt32]
    public var controlCharacters: [UInt8]
    public var size: RexecWindowSize

    public init(flags: [UInt32], controlCharacters: [UInt8], size: RexecWindowSize) {
        precondition(flags.count == 4 && controlCharacters.count == 32)
        self.flags = flags
        self.controlCharacters = controlCharacters
        self.size = size
    }
}

public struct RexecWindowSize: Equatable, Sendable {
    public var rows: UInt16
    public var columns: UInt16
    public var width: UInt16
    public var height: UInt16

    public init(rows: UInt16, columns: UInt16, width: UInt16, height: UInt16) {
        self.rows = rows
        self.columns = columns
        self.width = width
        self.height = height
    }
}

/// What the client asks the server to run.
public struct RexecExecRequest: Equatable, Sendable {
    /// The program as given (`/usr/bin/qemu-kvm`, or a bare name resolved by the server).
    public var program: [UInt8]
    /// argv, argv[0] included.
    public var arguments: [[UInt8]]
    /// `NAME=VALUE` entries, exactly as the program gets them.
    public var environment: [[UInt8]]
    public var workingDirectory: [UInt8]
    public var umask: UInt32
    /// Hold the program before exec until a GATE frame (the original's REXEC_HANDSHAKE).
    public var gated: Bool
    public var terminal: RexecTerminal?
    public var descriptors: [RexecDescriptor]
    /// The program daemonizes and writes its daemon's pid to this absolute path (QEMU's `-daemonize
    /// -pidfile PATH`): follow the daemon once the program exits 0 (DAEMONIZED).
    public var daemonPidFile: [UInt8]?

    public init(
        program: [UInt8], arguments: [[UInt8]], environment: [[UInt8]], workingDirectory: [UInt8], umask: UInt32,
        gated: Bool = false, terminal: RexecTerminal? = nil, descriptors: [RexecDescriptor] = [],
        daemonPidFile: [UInt8]? = nil
    ) {
        self.program = program
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.umask = umask
        self.gated = gated
        self.terminal = terminal
        self.descriptors = descriptors
        self.daemonPidFile = daemonPidFile
    }
}

/// How the program ended.
public enum RexecExit: Equatable, Sendable {
    case exited(code: UInt8)
    case signaled(signal: UInt8, coreDumped: Bool)
}

/// Why the program was not started. The code picks the client's exit status.
public struct RexecFailure: Error, Equatable, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The program does not exist on the server (exit 127).
        public static let notFound = Code(rawValue: 1)
        /// It exists but cannot be executed (exit 126).
        public static let notExecutable = Code(rawValue: 2)
        /// The whitelist does not allow it (exit 126).
        public static let notAllowed = Code(rawValue: 3)
        /// The request itself is wrong (an fd that cannot be set up, a bad working directory).
        public static let badRequest = Code(rawValue: 4)
        /// The server is at a limit (sessions, fds, processes).
        public static let busy = Code(rawValue: 5)
        /// The start gate said no.
        public static let vetoed = Code(rawValue: 6)
        /// Anything else on the server.
        public static let internalError = Code(rawValue: 7)
    }

    public var code: Code
    /// The errno behind it, 0 if none.
    public var errno: UInt32
    public var message: String

    public init(_ code: Code, errno: UInt32 = 0, _ message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }
}

/// Every rexec frame except DATA, decoded and validated.
public enum RexecMessage: Equatable, Sendable {
    case exec(RexecExecRequest)
    case started(pid: Int32, notes: [String])
    case exited(RexecExit)
    case failed(RexecFailure)
    case signal(Int32, toGroup: Bool)
    case windowSize(RexecWindowSize)
    case open(stream: UInt32, listener: Int32)
    case stopped(signal: Int32)
    case continued
    case gate(UInt8)
    /// pid 0: the program exited 0 but left no daemon that can be followed (the notes say why).
    case daemonized(pid: Int32, notes: [String])
    /// Descriptors passed on the carried socket `stream` with its next DATA bytes: files, inputs,
    /// outputs and sockets only (1 to `RexecLimits.maximumPassed`, each new stream once).
    case pass(stream: UInt32, descriptors: [RexecDescriptorKind])

    /// The frame carrying this message.
    public var frame: Frame {
        var payload = ByteBuffer()
        var stream: UInt32 = 0
        let type: FrameType
        switch self {
        case .exec(let request):
            type = RexecFrame.exec
            request.encode(into: &payload)
        case .started(let pid, let notes):
            type = RexecFrame.started
            payload.writeInteger(UInt32(bitPattern: pid), endianness: .big)
            payload.writeWireByteStrings(notes.map { Array($0.utf8) })
        case .exited(let exit):
            type = RexecFrame.exited
            switch exit {
            case .exited(let code):
                payload.writeInteger(UInt8(0))
                payload.writeInteger(code)
                payload.writeInteger(UInt8(0))
            case .signaled(let signal, let core):
                payload.writeInteger(UInt8(1))
                payload.writeInteger(signal)
                payload.writeInteger(core ? UInt8(1) : 0)
            }
        case .failed(let failure):
            type = RexecFrame.failed
            payload.writeInteger(failure.code.rawValue)
            payload.writeInteger(failure.errno, endianness: .big)
            payload.writeWireBytes(Array(failure.message.utf8.prefix(RexecLimits.maximumText)))
        case .signal(let signal, let toGroup):
            type = RexecFrame.signal
            payload.writeInteger(UInt32(bitPattern: signal), endianness: .big)
            payload.writeInteger(toGroup ? UInt8(1) : 0)
        case .windowSize(let size):
            type = RexecFrame.windowSize
            size.encode(into: &payload)
        case .open(let newStream, let listener):
            type = RexecFrame.open
            stream = newStream
            payload.writeInteger(UInt32(bitPattern: listener), endianness: .big)
        case .stopped(let signal):
            type = RexecFrame.stopped
            payload.writeInteger(UInt32(bitPattern: signal), endianness: .big)
        case .continued:
            type = RexecFrame.continued
        case .gate(let word):
            type = RexecFrame.gate
            payload.writeInteger(word)
        case .daemonized(let pid, let notes):
            type = RexecFrame.daemonized
            payload.writeInteger(UInt32(bitPattern: pid), endianness: .big)
            payload.writeWireByteStrings(notes.map { Array($0.utf8) })
        case .pass(let carrier, let descriptors):
            type = RexecFrame.pass
            stream = carrier
            payload.writeInteger(UInt8(truncatingIfNeeded: descriptors.count))
            for kind in descriptors { kind.encode(into: &payload) }
        }
        return Frame(type: type, stream: stream, payload: payload)
    }

    /// Decodes a rexec frame (not DATA, not the connection's own types). Throws on anything malformed.
    public init(_ frame: Frame) throws(WireError) {
        var payload = frame.payload
        let type = frame.type
        if type != RexecFrame.open && type != RexecFrame.data && type != RexecFrame.pass && frame.stream != 0 {
            throw WireError(.malformed, "rexec control frame \(type) on stream \(frame.stream)")
        }
        switch type {
        case RexecFrame.exec:
            self = .exec(try RexecExecRequest(decoding: &payload))
        case RexecFrame.started:
            let pid = Int32(bitPattern: try payload.readWireInteger(as: UInt32.self, "STARTED pid"))
            guard pid > 0 else { throw WireError(.malformed, "STARTED with pid \(pid)") }
            let notes = try payload.readWireByteStrings(
                "STARTED notes", maximumCount: RexecLimits.maximumNotes,
                maximumTotal: RexecLimits.maximumNotes * RexecLimits.maximumText)
            self = .started(pid: pid, notes: notes.map { String(decoding: $0, as: UTF8.self) })
        case RexecFrame.exited:
            let kind: UInt8 = try payload.readWireInteger("EXITED kind")
            let value: UInt8 = try payload.readWireInteger("EXITED value")
            let core: UInt8 = try payload.readWireInteger("EXITED core flag")
            switch kind {
            case 0 where core == 0: self = .exited(.exited(code: value))
            case 1 where value > 0 && value < 65 && core <= 1:
                self = .exited(.signaled(signal: value, coreDumped: core == 1))
            default: throw WireError(.malformed, "EXITED kind \(kind) value \(value) core \(core)")
            }
        case RexecFrame.failed:
            let code = RexecFailure.Code(rawValue: try payload.readWireInteger("FAILED code"))
            let errno: UInt32 = try payload.readWireInteger("FAILED errno")
            let message = try payload.readWireBytes("FAILED message", maximum: RexecLimits.maximumText)
            self = .failed(RexecFailure(code, errno: errno, String(decoding: message, as: UTF8.self)))
        case RexecFrame.signal:
            let signal: UInt32 = try payload.readWireInteger("SIGNAL number")
            let group: UInt8 = try payload.readWireInteger("SIGNAL group flag")
            guard signal > 0, signal < 65, group <= 1 else {
                throw WireError(.malformed, "SIGNAL \(signal) (group flag \(group)) is not a signal")
            }
            self = .signal(Int32(signal), toGroup: group == 1)
        case RexecFrame.windowSize:
            self = .windowSize(try RexecWindowSize(decoding: &payload))
        case RexecFrame.open:
            guard frame.stream != 0 else { throw WireError(.malformed, "OPEN on stream 0") }
            let listener: UInt32 = try payload.readWireInteger("OPEN listener fd")
            guard listener < RexecLimits.maximumDescriptorNumber else {
                throw WireError(.malformed, "OPEN names fd \(listener)")
            }
            self = .open(stream: frame.stream, listener: Int32(listener))
        case RexecFrame.stopped:
            let signal: UInt32 = try payload.readWireInteger("STOPPED signal")
            // Only a stop signal stops a process (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: 19-22 on Linux); the
            // client stops itself with the one it gets, so another (SIGKILL) would end it without its
            // clean-up.
            guard (19...22).contains(signal) else { throw WireError(.malformed, "STOPPED by signal \(signal), which is no stop signal") }
            self = .stopped(signal: Int32(signal))
        case RexecFrame.continued:
            self = .continued
        case RexecFrame.gate:
            self = .gate(try payload.readWireInteger("GATE word"))
        case RexecFrame.daemonized:
            let pid = Int32(bitPattern: try payload.readWireInteger(as: UInt32.self, "DAEMONIZED pid"))
            guard pid >= 0 else { throw WireError(.malformed, "DAEMONIZED with pid \(pid)") }
            let notes = try payload.readWireByteStrings(
                "DAEMONIZED notes", maximumCount: RexecLimits.maximumNotes,
                maximumTotal: RexecLimits.maximumNotes * RexecLimits.maximumText)
            self = .daemonized(pid: pid, notes: notes.map { String(decoding: $0, as: UTF8.self) })
        case RexecFrame.pass:
            guard frame.stream != 0 else { throw WireError(.malformed, "PASS on stream 0") }
            let count = Int(try payload.readWireInteger(as: UInt8.self, "PASS count"))
            guard count >= 1, count <= RexecLimits.maximumPassed else {
                throw WireError(count == 0 ? .malformed : .oversized, "PASS of \(count) descriptors (1 to \(RexecLimits.maximumPassed))")
            }
            var descriptors: [RexecDescriptorKind] = []
            var streams: Set<UInt32> = [frame.stream]
            for _ in 0..<count {
                let kind = try RexecDescriptorKind(decoding: &payload, "PASS", streams: &streams)
                switch kind {
                case .file, .input, .output, .socket: descriptors.append(kind)
                case .listener, .terminal: throw WireError(.malformed, "PASS of a listener or terminal")
                }
            }
            self = .pass(stream: frame.stream, descriptors: descriptors)
        default:
            throw WireError(.unknownMessage, "unknown rexec frame \(type)")
        }
        if payload.readableBytes > 0 { try payload.expectFullyRead("rexec \(type)") }
    }
}

extension RexecDescriptorKind {
    /// The tag and the kind's fields (PASS).
    func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(tag)
        encodeFields(into: &buffer)
    }

    /// The fields after the tag (EXEC puts the fd numbers between them).
    func encodeFields(into buffer: inout ByteBuffer) {
        switch self {
        case .file(let path, let flags, let offset):
            buffer.writeWireBytes(path)
            buffer.writeInteger(flags, endianness: .big)
            buffer.writeInteger(offset, endianness: .big)
        case .input(let stream), .output(let stream), .socket(let stream), .terminal(let stream):
            buffer.writeInteger(stream, endianness: .big)
        case .listener:
            break
        }
    }

    /// Reads a tag and its fields (PASS).
    init(decoding buffer: inout ByteBuffer, _ message: StaticString, streams: inout Set<UInt32>) throws(WireError) {
        let tag: UInt8 = try buffer.readWireInteger("descriptor kind")
        try self.init(fieldsOf: tag, from: &buffer, message, streams: &streams)
    }

    /// Reads the fields of a kind with `tag`; a stream in `streams` already (or 0) is refused, a new one
    /// is added.
    init(fieldsOf tag: UInt8, from buffer: inout ByteBuffer, _ message: StaticString, streams: inout Set<UInt32>) throws(WireError) {
        switch tag {
        case 1:
            let path = try buffer.readWireBytes("descriptor file path", maximum: RexecLimits.maximumPath)
            guard path.first == UInt8(ascii: "/"), !path.contains(0) else {
                throw WireError(.malformed, "\(message) file path is not absolute")
            }
            self = .file(path: path, flags: try buffer.readWireInteger("descriptor file flags"), offset: try buffer.readWireInteger("descriptor file offset"))
        case 2, 3, 4, 6:
            let stream: UInt32 = try buffer.readWireInteger("descriptor stream")
            guard stream != 0, streams.insert(stream).inserted else {
                throw WireError(.malformed, "\(message) uses stream \(stream) twice or stream 0")
            }
            self = tag == 2 ? .input(stream: stream) : tag == 3 ? .output(stream: stream) : tag == 4 ? .socket(stream: stream) : .terminal(stream: stream)
        case 5:
            self = .listener
        default:
            throw WireError(.malformed, "\(message) descriptor kind \(tag) is unknown")
        }
    }
}

extension RexecWindowSize {
    func encode(into buffer: inout ByteBuffer) {
        for value in [rows, columns, width, height] { buffer.writeInteger(value, endianness: .big) }
    }

    init(decoding buffer: inout ByteBuffer) throws(WireError) {
        rows = try buffer.readWireInteger("window rows")
        columns = try buffer.readWireInteger("window columns")
        width = try buffer.readWireInteger("window width")
        height = try buffer.readWireInteger("window height")
    }
}

extension RexecExecRequest {
    private static let flagGated: UInt8 = 0x01
    private static let flagTerminal: UInt8 = 0x02
    /// A daemon pid file follows the descriptors (an older server refuses the unknown flag: the client
    /// learns that it cannot follow a daemon rather than leaving one behind).
    private static let flagDaemon: UInt8 = 0x04

    func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(
            (gated ? Self.flagGated : 0) | (terminal != nil ? Self.flagTerminal : 0) | (daemonPidFile != nil ? Self.flagDaemon : 0))
        buffer.writeWireBytes(program)
        buffer.writeWireByteStrings(arguments)
        buffer.writeWireByteStrings(environment)
        buffer.writeWireBytes(workingDirectory)
        buffer.writeInteger(umask, endianness: .big)
        if let terminal {
            for flag in terminal.flags { buffer.writeInteger(flag, endianness: .big) }
            buffer.writeBytes(terminal.controlCharacters)
            terminal.size.encode(into: &buffer)
        }
        buffer.writeInteger(UInt32(descriptors.count), endianness: .big)
        for descriptor in descriptors {
            buffer.writeInteger(descriptor.kind.tag)
            buffer.writeInteger(UInt32(descriptor.targets.count), endianness: .big)
            for target in descriptor.targets { buffer.writeInteger(UInt32(bitPattern: target), endianness: .big) }
            descriptor.kind.encodeFields(into: &buffer)
        }
        if let daemonPidFile { buffer.writeWireBytes(daemonPidFile) }
    }

    init(decoding buffer: inout ByteBuffer) throws(WireError) {
        let flags: UInt8 = try buffer.readWireInteger("EXEC flags")
        guard flags & ~(Self.flagGated | Self.flagTerminal | Self.flagDaemon) == 0 else {
            throw WireError(.malformed, "EXEC has unknown flags \(flags)")
        }
        program = try buffer.readWireBytes("EXEC program", maximum: RexecLimits.maximumPath)
        guard !program.isEmpty, !program.contains(0) else { throw WireError(.malformed, "EXEC program is empty or has a NUL byte") }
        let total = Frame.maximumPayload
        arguments = try buffer.readWireByteStrings("EXEC arguments", maximumCount: RexecLimits.maximumStrings, maximumTotal: total)
        guard !arguments.isEmpty else { throw WireError(.malformed, "EXEC has no argv[0]") }
        environment = try buffer.readWireByteStrings("EXEC environment", maximumCount: RexecLimits.maximumStrings, maximumTotal: total)
        guard arguments.count + environment.count <= RexecLimits.maximumStrings else {
            throw WireError(.oversized, "EXEC has \(arguments.count + environment.count) strings, over \(RexecLimits.maximumStrings)")
        }
        for string in arguments + environment where string.contains(0) {
            throw WireError(.malformed, "EXEC argument or environment entry contains a NUL byte")
        }
        for entry in environment where !entry.contains(UInt8(ascii: "=")) {
            throw WireError(.malformed, "EXEC environment entry without `=`")
        }
        workingDirectory = try buffer.readWireBytes("EXEC working directory", maximum: RexecLimits.maximumPath)
        guard workingDirectory.first == UInt8(ascii: "/"), !workingDirectory.contains(0) else {
            throw WireError(.malformed, "EXEC working directory is not an absolute path")
        }
        umask = try buffer.readWireInteger("EXEC umask")
        guard umask <= 0o777 else { throw WireError(.malformed, "EXEC umask \(umask) is over 0777") }
        gated = flags & Self.flagGated != 0
        if flags & Self.flagTerminal != 0 {
            var modeFlags: [UInt32] = []
            for _ in 0..<4 { modeFlags.append(try buffer.readWireInteger("EXEC terminal modes")) }
            guard let characters = buffer.readBytes(length: 32) else {
                throw WireError(.truncated, "truncated EXEC terminal control characters")
            }
            terminal = RexecTerminal(flags: modeFlags, controlCharacters: characters, size: try RexecWindowSize(decoding: &buffer))
        } else {
            terminal = nil
        }
        let count = Int(try buffer.readWireInteger(as: UInt32.self, "EXEC descriptor count"))
        guard count <= RexecLimits.maximumDescriptors else {
            throw WireError(.oversized, "EXEC carries \(count) descriptors, over \(RexecLimits.maximumDescriptors)")
        }
        guard count * 5 <= buffer.readableBytes else { throw WireError(.truncated, "truncated EXEC descriptors") }
        descriptors = []
        var seenTargets = Set<Int32>()
        var seenStreams = Set<UInt32>()
        for _ in 0..<count {
            let tag: UInt8 = try buffer.readWireInteger("EXEC descriptor kind")
            let targetCount = Int(try buffer.readWireInteger(as: UInt32.self, "EXEC descriptor targets"))
            guard targetCount >= 1, targetCount <= RexecLimits.maximumTargets else {
                throw WireError(.malformed, "EXEC descriptor with \(targetCount) fd numbers")
            }
            var targets: [Int32] = []
            for _ in 0..<targetCount {
                let target: UInt32 = try buffer.readWireInteger("EXEC descriptor fd")
                guard target < RexecLimits.maximumDescriptorNumber, seenTargets.insert(Int32(target)).inserted else {
                    throw WireError(.malformed, "EXEC places fd \(target) twice or out of range")
                }
                targets.append(Int32(target))
            }
            let kind = try RexecDescriptorKind(fieldsOf: tag, from: &buffer, "EXEC", streams: &seenStreams)
            if case .terminal = kind, terminal == nil {
                throw WireError(.malformed, "EXEC places a terminal without asking for TTY mode")
            }
            descriptors.append(RexecDescriptor(targets: targets, kind: kind))
        }
        if flags & Self.flagDaemon != 0 {
            let path = try buffer.readWireBytes("EXEC daemon pid file", maximum: RexecLimits.maximumPath)
            guard path.first == UInt8(ascii: "/"), !path.contains(0) else {
                throw WireError(.malformed, "EXEC daemon pid file is not an absolute path")
            }
            daemonPidFile = path
        } else {
            daemonPidFile = nil
        }
    }
}

import NIOCore

// udsproxy speaks two protocols:
//
// - between the two udsproxyd peers, DPUWire frames after a `Service.udsproxy` handshake. Each proxied
//   unix connection (and each pipe passed inside one) is a stream; the side that opens a stream picks its
//   id: odd on the link's dialing side, even on the accepting side. Frame types from 0x10 below; flow
//   control, resets and go-away are the connection-level frames (`ConnectionMessage`).
// - between a local process (libudsproxy.so, `UDSProxyClient`) and its udsproxyd, on the control socket:
//   `UDSProxyControlRequest` / `UDSProxyControlReply`, and the original's 112-byte request
//   (`LegacyUDSProxyRequest`) for the original preload library and the qtfs kernel hook.

// MARK: - Peer link

extension FrameType {
    /// Opens stream `stream`: connect to the unix socket `path` on the receiver's machine.
    public static let udsOpen = FrameType(rawValue: 0x10)
    /// The answer to `udsOpen`: i32 errno of the receiver's connect, 0 = connected.
    public static let udsOpenResult = FrameType(rawValue: 0x11)
    /// Bytes of a stream, relayed as they are (never decoded into a message). `endStream` says the sender
    /// will send nothing more in this direction: the unix socket's shutdown(SHUT_WR), or a pipe's EOF.
    public static let udsData = FrameType(rawValue: 0x12)
    /// File descriptors that travel with the last byte of the stream's next `udsData` frame (the one byte
    /// surely written with them: see udsproxy's `Stream.passDescriptors`).
    public static let udsDescriptors = FrameType(rawValue: 0x13)
}

/// Flags of a file passed by path. Not the raw O_* numbers: those differ between architectures (x86's
/// O_LARGEFILE is arm64's O_NOFOLLOW), and the two machines need not share one.
public struct PassedFileFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let readable = PassedFileFlags(rawValue: 1 << 0)
    public static let writable = PassedFileFlags(rawValue: 1 << 1)
    public static let append = PassedFileFlags(rawValue: 1 << 2)
    public static let nonBlocking = PassedFileFlags(rawValue: 1 << 3)
    public static let sync = PassedFileFlags(rawValue: 1 << 4)
    public static let dataSync = PassedFileFlags(rawValue: 1 << 5)
    public static let direct = PassedFileFlags(rawValue: 1 << 6)
    public static let noAccessTime = PassedFileFlags(rawValue: 1 << 7)

    public static let all: PassedFileFlags = [
        .readable, .writable, .append, .nonBlocking, .sync, .dataSync, .direct, .noAccessTime,
    ]
}

/// Which end of a pipe the receiving process gets.
public enum PipeEnd: UInt8, Sendable {
    /// It reads: the sender's machine streams what is written into its end.
    case read = 0
    /// It writes: what it writes is streamed to the sender's machine.
    case write = 1
}

/// A file descriptor passed with SCM_RIGHTS inside a proxied connection, as it crosses the link.
public enum PassedDescriptor: Equatable, Sendable {
    /// A regular file: reopened on the receiver's machine by path (whitelist permitting) with these flags,
    /// and positioned at `offset`.
    case file(path: [UInt8], flags: PassedFileFlags, offset: UInt64)
    /// A pipe or FIFO end: the receiver makes a new pipe, gives `end` of it to its process and relays the
    /// other end over `stream`, which this message opens.
    case pipe(stream: UInt32, end: PipeEnd, nonBlocking: Bool)
}

/// The decoded udsproxy messages of the peer link (everything but `udsData`).
public enum UDSProxyMessage: Equatable, Sendable {
    case open(stream: UInt32, path: [UInt8])
    case openResult(stream: UInt32, errno: Int32)
    case descriptors(stream: UInt32, [PassedDescriptor])

    /// A unix socket path: what fits `sockaddr_un.sun_path` with its NUL.
    public static let maximumSocketPath = 107
    /// A file path (PATH_MAX without the NUL).
    public static let maximumFilePath = 4095
    /// SCM_MAX_FD: the kernel passes at most this many descriptors in one message.
    public static let maximumDescriptors = 253

    public var frame: Frame {
        var payload = ByteBuffer()
        switch self {
        case .open(let stream, let path):
            payload.writeWireBytes(path)
            return Frame(type: .udsOpen, stream: stream, payload: payload)
        case .openResult(let stream, let errno):
            payload.writeInteger(errno, endianness: .big)
            return Frame(type: .udsOpenResult, stream: stream, payload: payload)
        case .descriptors(let stream, let descriptors):
            payload.writeInteger(UInt8(descriptors.count))
            for descriptor in descriptors {
                switch descriptor {
                case .file(let path, let flags, let offset):
                    payload.writeInteger(UInt8(1))
                    payload.writeInteger(flags.rawValue, endianness: .big)
                    payload.writeInteger(offset, endianness: .big)
                    payload.writeWireBytes(path)
                case .pipe(let pipeStream, let end, let nonBlocking):
                    payload.writeInteger(UInt8(2))
                    payload.writeInteger(pipeStream, endianness: .big)
                    payload.writeInteger(end.rawValue)
                    payload.writeInteger(nonBlocking ? UInt8(1) : UInt8(0))
                }
            }
            return Frame(type: .udsDescriptors, stream: stream, payload: payload)
        }
    }

    /// Decodes a udsproxy frame other than `udsData`. Every field is checked; a path is an absolute path
    /// of bounded length without NUL bytes.
    public init(_ frame: Frame) throws(WireError) {
        var payload = frame.payload
        guard frame.stream != 0 else { throw WireError(.malformed, "\(frame.type) on stream 0") }
        switch frame.type {
        case .udsOpen:
            let path = try payload.readWireBytes("OPEN path", maximum: UDSProxyMessage.maximumSocketPath)
            try UDSProxyMessage.checkPath(path, "OPEN path")
            self = .open(stream: frame.stream, path: path)
        case .udsOpenResult:
            let errno: Int32 = try payload.readWireInteger("OPEN_RESULT errno")
            guard errno >= 0, errno < 4096 else { throw WireError(.malformed, "OPEN_RESULT errno \(errno) is out of range") }
            self = .openResult(stream: frame.stream, errno: errno)
        case .udsDescriptors:
            let count = Int(try payload.readWireInteger(as: UInt8.self, "DESCRIPTORS count"))
            guard count > 0, count <= UDSProxyMessage.maximumDescriptors else {
                throw WireError(.malformed, "DESCRIPTORS with \(count) descriptors (1 to \(UDSProxyMessage.maximumDescriptors))")
            }
            var descriptors: [PassedDescriptor] = []
            for _ in 0..<count {
                switch try payload.readWireInteger(as: UInt8.self, "descriptor kind") {
                case 1:
                    let flags = PassedFileFlags(rawValue: try payload.readWireInteger("file flags"))
                    guard PassedFileFlags.all.isSuperset(of: flags) else {
                        throw WireError(.malformed, "unknown file flags 0x\(String(flags.rawValue, radix: 16))")
                    }
                    let offset: UInt64 = try payload.readWireInteger("file offset")
                    guard offset <= UInt64(Int64.max) else { throw WireError(.malformed, "file offset \(offset) is out of range") }
                    let path = try payload.readWireBytes("file path", maximum: UDSProxyMessage.maximumFilePath)
                    try UDSProxyMessage.checkPath(path, "file path")
                    descriptors.append(.file(path: path, flags: flags, offset: offset))
                case 2:
                    let stream: UInt32 = try payload.readWireInteger("pipe stream")
                    guard stream != 0 else { throw WireError(.malformed, "pipe on stream 0") }
                    guard let end = PipeEnd(rawValue: try payload.readWireInteger("pipe end")) else {
                        throw WireError(.malformed, "unknown pipe end")
                    }
                    let options: UInt8 = try payload.readWireInteger("pipe flags")
                    guard options <= 1 else { throw WireError(.malformed, "unknown pipe flags \(options)") }
                    descriptors.append(.pipe(stream: stream, end: end, nonBlocking: options == 1))
                case let kind:
                    throw WireError(.malformed, "unknown descriptor kind \(kind)")
                }
            }
            self = .descriptors(stream: frame.stream, descriptors)
        default:
            throw WireError(.unknownMessage, "unexpected udsproxy frame \(frame.type)")
        }
        try payload.expectFullyRead("\(frame.type)")
    }

    static func checkPath(_ path: [UInt8], _ field: StaticString) throws(WireError) {
        guard path.first == UInt8(ascii: "/") else { throw WireError(.malformed, "\(field) is not an absolute path") }
        guard !path.contains(0) else { throw WireError(.malformed, "\(field) contains a NUL byte") }
    }
}

// MARK: - Local control socket

/// Which protocol a control-socket client speaks, told from its first bytes.
public enum UDSProxyControlProtocol: Sendable, Equatable {
    /// `UDSProxyControlRequest`: libudsproxy.so and `UDSProxyClient` of dpuctl.
    case current
    /// `LegacyUDSProxyRequest`: the original's libudsproxy.so and the qtfs kernel hook.
    case legacy

    /// Decides from the first bytes (nil: not enough yet). Anything that is not our magic is taken as the
    /// original's request, whose decoder then validates it.
    public static func identify(_ prefix: some Collection<UInt8>) -> UDSProxyControlProtocol? {
        let magic = UDSProxyControlRequest.magic
        if prefix.count < magic.count { return prefix.elementsEqual(magic.prefix(prefix.count)) ? nil : .legacy }
        return prefix.prefix(magic.count).elementsEqual(magic) ? .current : .legacy
    }
}

/// A local process asks its udsproxyd for a socket connected to `path` on the peer.
///
/// Layout (`headerSize` bytes, then the path):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `UDSP` |
/// | 4 | 1 | version, 1 |
/// | 5 | 1 | flags: bit 0 = non-blocking (answer at once; see `nonBlocking`) |
/// | 6 | 2 | path length, big-endian, 1 to 107 |
/// | 8 | n | absolute path, no NUL |
///
/// The reply is `UDSProxyControlReply`.
public struct UDSProxyControlRequest: Equatable, Sendable {
    public static let magic: [UInt8] = Array("UDSP".utf8)
    public static let version: UInt8 = 1
    public static let headerSize = 8
    public static let maximumSize = headerSize + UDSProxyMessage.maximumSocketPath

    public var path: [UInt8]
    /// The daemon answers before the peer has connected, with a socket that stays unwritable until it has
    /// (writable with SO_ERROR 0), or is reset if the peer fails: what a non-blocking connect() expects.
    public var nonBlocking: Bool

    public init(path: [UInt8], nonBlocking: Bool = false) {
        self.path = path
        self.nonBlocking = nonBlocking
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeBytes(UDSProxyControlRequest.magic)
        buffer.writeInteger(UDSProxyControlRequest.version)
        buffer.writeInteger(nonBlocking ? UInt8(1) : UInt8(0))
        buffer.writeInteger(UInt16(path.count), endianness: .big)
        buffer.writeBytes(path)
    }

    /// Takes a request from the front of `buffer`; nil until all of it has arrived.
    public static func decode(_ buffer: inout ByteBuffer) throws(WireError) -> UDSProxyControlRequest? {
        let view = buffer.readableBytesView
        guard UDSProxyControlProtocol.identify(view.prefix(magic.count)) != .legacy else {
            throw WireError(.badMagic, "the request does not start with UDSP")
        }
        guard view.count >= headerSize else { return nil }
        let start = buffer.readerIndex
        let version = buffer.getInteger(at: start + 4, as: UInt8.self)!
        guard version == UDSProxyControlRequest.version else {
            throw WireError(.unsupportedVersion, "control request version \(version); this udsproxyd speaks \(UDSProxyControlRequest.version)")
        }
        let flags = buffer.getInteger(at: start + 5, as: UInt8.self)!
        guard flags & ~1 == 0 else { throw WireError(.malformed, "unknown control request flags 0x\(String(flags, radix: 16))") }
        let length = Int(buffer.getInteger(at: start + 6, endianness: .big, as: UInt16.self)!)
        guard length > 0, length <= UDSProxyMessage.maximumSocketPath else {
            throw WireError(.oversized, "control request path of \(length) bytes (1 to \(UDSProxyMessage.maximumSocketPath))")
        }
        guard view.count >= headerSize + length else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        let path = buffer.readBytes(length: length)!
        try UDSProxyMessage.checkPath(path, "control request path")
        return UDSProxyControlRequest(path: path, nonBlocking: flags & 1 != 0)
    }
}

/// The answer on the control socket: an i32 (big-endian), 0 with the socket attached (SCM_RIGHTS), or
/// the errno that says why not (EACCES: not allowed, EHOSTUNREACH: no peer link, else the peer's connect
/// error).
public enum UDSProxyControlReply {
    public static let size = 4

    public static func encode(errno: Int32) -> [UInt8] {
        withUnsafeBytes(of: errno.bigEndian) { Array($0) }
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(WireError) -> Int32 {
        guard bytes.count == size else { throw WireError(.truncated, "control reply of \(bytes.count) bytes, expected \(size)") }
        return bytes.reduce(Int32(0)) { ($0 << 8) | Int32($1) }
    }
}

/// The original's control request (`struct uds_proxy_remote_conn_req`, 112 bytes, host byte order =
/// little-endian on the machines it runs on): u16 socket type, u16 unused, char sun_path[108]. The reply is
/// an i32, 1 = the `<path>.proxy` listener is ready, 0 = failed; the client then connects there.
public struct LegacyUDSProxyRequest: Equatable, Sendable {
    public static let size = 112
    /// The suffix the original client appends to the path it then connects to.
    public static let rendezvousSuffix: [UInt8] = Array(".proxy".utf8)
    /// The original's limit: the path and the suffix must fit sun_path.
    public static let maximumPath = 108 - 6 - 1

    /// SO_TYPE of the client's socket: 1 = SOCK_STREAM, 2 = SOCK_DGRAM.
    public var socketType: UInt16
    public var path: [UInt8]

    public init(socketType: UInt16, path: [UInt8]) {
        self.socketType = socketType
        self.path = path
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(socketType, endianness: .little)
        buffer.writeInteger(UInt16(0), endianness: .little)
        buffer.writeBytes(path)
        buffer.writeRepeatingByte(0, count: 108 - path.count)
    }

    /// Takes a request from the front of `buffer`; nil until all 112 bytes have arrived. The unused field
    /// is ignored (the original clients fill it with stack garbage).
    public static func decode(_ buffer: inout ByteBuffer) throws(WireError) -> LegacyUDSProxyRequest? {
        guard buffer.readableBytes >= size else { return nil }
        let socketType = buffer.readInteger(endianness: .little, as: UInt16.self)!
        buffer.moveReaderIndex(forwardBy: 2)
        let field = buffer.readBytes(length: 108)!
        guard socketType == 1 || socketType == 2 else {
            throw WireError(.malformed, "original control request with socket type \(socketType) (1 or 2)")
        }
        guard let end = field.firstIndex(of: 0) else { throw WireError(.malformed, "original control request path is not terminated") }
        let path = Array(field[..<end])
        guard !path.isEmpty, path.count <= maximumPath else {
            throw WireError(.oversized, "original control request path of \(path.count) bytes (1 to \(maximumPath))")
        }
        return LegacyUDSProxyRequest(socketType: socketType, path: path)
    }

    /// The reply: 1 = ready, 0 = failed, little-endian.
    public static func reply(_ success: Bool) -> [UInt8] { success ? [1, 0, 0, 0] : [0, 0, 0, 0] }
}

import NIOCore

/// One frame: the unit everything after the hello travels in.
///
/// Layout (big-endian), 12 bytes of header then the payload:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | payload length (≤ `Frame.maximumPayload`) |
/// | 4 | 1 | type (`FrameType`) |
/// | 5 | 1 | flags (meaning per type; `Frame.Flags`) |
/// | 6 | 2 | reserved, must be 0 |
/// | 8 | 4 | stream or request id (0 = the connection itself) |
public struct Frame: Equatable, Sendable {
    /// Bytes of header before the payload.
    public static let headerSize = 12
    /// The hard maximum payload: 1 MiB of data plus room for a message header around it. No frame is
    /// larger, whatever the peer says; a connection may set a lower limit on its decoder.
    public static let maximumPayload = (1 << 20) + 4096

    public var type: FrameType
    public var flags: Flags
    public var stream: UInt32
    public var payload: ByteBuffer

    public init(type: FrameType, flags: Flags = [], stream: UInt32 = 0, payload: ByteBuffer = ByteBuffer()) {
        self.type = type
        self.flags = flags
        self.stream = stream
        self.payload = payload
    }

    /// Frame flags. `endStream` is common to every stream-carrying type; the others are per type.
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The sender will send nothing more on this stream (half-close).
        public static let endStream = Flags(rawValue: 0x01)
        /// Per-type flags.
        public static let bit1 = Flags(rawValue: 0x02)
        public static let bit2 = Flags(rawValue: 0x04)
        public static let bit3 = Flags(rawValue: 0x08)
    }

    /// Appends the frame to `buffer`. The payload must be within `maximumPayload` (a bug otherwise).
    public func encode(into buffer: inout ByteBuffer) {
        precondition(payload.readableBytes <= Frame.maximumPayload, "frame payload over the hard maximum")
        buffer.writeInteger(UInt32(payload.readableBytes), endianness: .big)
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(UInt16(0), endianness: .big)
        buffer.writeInteger(stream, endianness: .big)
        var payload = payload
        buffer.writeBuffer(&payload)
    }

    /// Writes a header for a payload the caller appends itself (avoids a copy of large data).
    public static func encodeHeader(
        type: FrameType, flags: Flags = [], stream: UInt32, payloadLength: Int, into buffer: inout ByteBuffer
    ) {
        precondition(payloadLength <= Frame.maximumPayload, "frame payload over the hard maximum")
        buffer.writeInteger(UInt32(payloadLength), endianness: .big)
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(UInt16(0), endianness: .big)
        buffer.writeInteger(stream, endianness: .big)
    }
}

/// Frame types. 0x00–0x0f are the connection's own (authentication, liveness, flow control, shutdown);
/// each service numbers its messages from 0x10 (the hello says which service a connection speaks).
public struct FrameType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// 32-byte HMAC proof during the handshake.
    public static let authProof = FrameType(rawValue: 0x01)
    /// The server's verdict on the client's proof: u8 0 = accepted, else refused + UTF-8 reason.
    public static let authResult = FrameType(rawValue: 0x02)
    /// Liveness probe; payload echoed in `pong`.
    public static let ping = FrameType(rawValue: 0x03)
    public static let pong = FrameType(rawValue: 0x04)
    /// The sender is shutting down: u32 code + UTF-8 reason. No new streams after it.
    public static let goAway = FrameType(rawValue: 0x05)
    /// Flow-control credit for `stream`: u32 bytes.
    public static let windowUpdate = FrameType(rawValue: 0x06)
    /// Abort `stream`: u32 code + UTF-8 reason.
    public static let resetStream = FrameType(rawValue: 0x07)

    /// The first type a service may use.
    public static let firstServiceType: UInt8 = 0x10

    public var isConnectionLevel: Bool { rawValue < FrameType.firstServiceType }

    public var description: String {
        switch self {
        case .authProof: "AUTH_PROOF"
        case .authResult: "AUTH_RESULT"
        case .ping: "PING"
        case .pong: "PONG"
        case .goAway: "GOAWAY"
        case .windowUpdate: "WINDOW_UPDATE"
        case .resetStream: "RESET_STREAM"
        default: "0x" + String(rawValue, radix: 16)
        }
    }
}

/// Splits a byte stream into frames. Feed it whatever arrived; it returns complete frames and keeps
/// the rest. The length is checked against the limit as soon as the header is in, so a peer cannot make
/// us wait for (or allocate) a frame larger than allowed.
public struct FrameDecoder: Sendable {
    /// The largest payload accepted (at most `Frame.maximumPayload`).
    public let maximumPayload: Int

    public init(maximumPayload: Int = Frame.maximumPayload) {
        precondition(maximumPayload <= Frame.maximumPayload)
        self.maximumPayload = maximumPayload
    }

    /// Takes one frame from the front of `buffer`, or returns nil if it is not complete yet.
    public func decode(_ buffer: inout ByteBuffer) throws(WireError) -> Frame? {
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        let header = try buffer.readableBytesView.withUnsafeBytes { (raw) throws(WireError) -> FrameHeader in
            try decodeHeader(UnsafeRawBufferPointer(rebasing: raw.prefix(Frame.headerSize)))
        }
        guard buffer.readableBytes >= Frame.headerSize + header.length else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: header.length)!
        return Frame(type: header.type, flags: header.flags, stream: header.stream, payload: payload)
    }

    /// Checks and decodes the `Frame.headerSize` bytes of a header, so that a reader can take the payload
    /// straight from its socket into a buffer of exactly the right size.
    public func decodeHeader(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> FrameHeader {
        precondition(bytes.count >= Frame.headerSize)
        let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        guard length <= maximumPayload else {
            throw WireError(.oversized, "frame of \(length) bytes is over the limit of \(maximumPayload)")
        }
        guard bytes[6] == 0, bytes[7] == 0 else { throw WireError(.malformed, "frame header has non-zero reserved bits") }
        return FrameHeader(
            length: length, type: FrameType(rawValue: bytes[4]), flags: Frame.Flags(rawValue: bytes[5]),
            stream: UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
    }

    /// Decodes every complete frame in `buffer`.
    public func decodeAll(_ buffer: inout ByteBuffer) throws(WireError) -> [Frame] {
        var frames: [Frame] = []
        while let frame = try decode(&buffer) { frames.append(frame) }
        return frames
    }
}

/// A decoded frame header: what follows is `length` bytes of payload.
public struct FrameHeader: Equatable, Sendable {
    public var length: Int
    public var type: FrameType
    public var flags: Frame.Flags
    public var stream: UInt32
}

// MARK: - Connection-level messages

/// GOAWAY / RESET_STREAM codes.
public struct CloseCode: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let normal = CloseCode(rawValue: 0)
    public static let shuttingDown = CloseCode(rawValue: 1)
    public static let protocolError = CloseCode(rawValue: 2)
    public static let refused = CloseCode(rawValue: 3)
    public static let internalError = CloseCode(rawValue: 4)
    public static let cancelled = CloseCode(rawValue: 5)
}

/// The messages every connection understands, whatever its service.
public enum ConnectionMessage: Equatable, Sendable {
    case ping(UInt64)
    case pong(UInt64)
    case goAway(CloseCode, reason: String)
    case windowUpdate(stream: UInt32, increment: UInt32)
    case resetStream(stream: UInt32, CloseCode, reason: String)

    /// Longest reason text accepted.
    public static let maximumReason = 1024

    public var frame: Frame {
        var payload = ByteBuffer()
        switch self {
        case .ping(let value):
            payload.writeInteger(value, endianness: .big)
            return Frame(type: .ping, payload: payload)
        case .pong(let value):
            payload.writeInteger(value, endianness: .big)
            return Frame(type: .pong, payload: payload)
        case .goAway(let code, let reason):
            payload.writeInteger(code.rawValue, endianness: .big)
            payload.writeWireString(String(reason.utf8.prefix(Self.maximumReason)) ?? "")
            return Frame(type: .goAway, payload: payload)
        case .windowUpdate(let stream, let increment):
            payload.writeInteger(increment, endianness: .big)
            return Frame(type: .windowUpdate, stream: stream, payload: payload)
        case .resetStream(let stream, let code, let reason):
            payload.writeInteger(code.rawValue, endianness: .big)
            payload.writeWireString(String(reason.utf8.prefix(Self.maximumReason)) ?? "")
            return Frame(type: .resetStream, stream: stream, payload: payload)
        }
    }

    /// Decodes a connection-level frame (type < 0x10, other than the handshake's).
    public init(_ frame: Frame) throws(WireError) {
        var payload = frame.payload
        switch frame.type {
        case .ping: self = .ping(try payload.readWireInteger("PING payload"))
        case .pong: self = .pong(try payload.readWireInteger("PONG payload"))
        case .goAway:
            let code = CloseCode(rawValue: try payload.readWireInteger("GOAWAY code"))
            self = .goAway(code, reason: try payload.readWireString("GOAWAY reason", maximum: Self.maximumReason))
        case .windowUpdate:
            let increment: UInt32 = try payload.readWireInteger("WINDOW_UPDATE increment")
            guard increment > 0 else { throw WireError(.malformed, "WINDOW_UPDATE of 0 bytes") }
            self = .windowUpdate(stream: frame.stream, increment: increment)
        case .resetStream:
            let code = CloseCode(rawValue: try payload.readWireInteger("RESET_STREAM code"))
            let reason = try payload.readWireString("RESET_STREAM reason", maximum: Self.maximumReason)
            self = .resetStream(stream: frame.stream, code, reason: reason)
        default:
            throw WireError(.unknownMessage, "unexpected connection frame \(frame.type)")
        }
        try payload.expectFullyRead("\(frame.type)")
    }
}

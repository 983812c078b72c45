import NIOCore

/// Which dpuctl service a connection speaks. A client that dials the wrong port is told so.
public struct Service: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let rexec = Service(rawValue: 1)
    public static let udsproxy = Service(rawValue: 2)
    public static let qtfs = Service(rawValue: 3)

    public var description: String {
        switch self {
        case .rexec: "rexec"
        case .udsproxy: "udsproxy"
        case .qtfs: "qtfs"
        default: "service \(rawValue)"
        }
    }
}

/// How a connection authenticates.
public enum AuthMethod: UInt8, Sendable {
    /// No proof: only for unix sockets (checked with SO_PEERCRED) and explicitly insecure listeners.
    case none = 0
    /// Mutual challenge–response with a pre-shared key (HMAC-SHA256 over both hellos).
    case presharedKey = 1
}

/// The first bytes each side sends, unframed, so that the magic is the very first thing on the wire
/// (the rexec server tells dpuctl clients from the original C client by it).
///
/// Layout (big-endian), `Hello.size` bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `DPUW` |
/// | 4 | 2 | highest protocol version spoken |
/// | 6 | 2 | lowest protocol version spoken |
/// | 8 | 1 | role: 0 client, 1 server |
/// | 9 | 1 | service (`Service`) |
/// | 10 | 1 | auth method (`AuthMethod`) |
/// | 11 | 1 | reserved, 0 |
/// | 12 | 8 | capabilities (bits, per service) |
/// | 20 | 32 | random nonce |
public struct Hello: Equatable, Sendable {
    public static let magic: [UInt8] = Array("DPUW".utf8)
    public static let size = 52
    public static let nonceSize = 32
    /// The protocol versions this build speaks.
    public static let currentVersion: UInt16 = 1
    public static let oldestVersion: UInt16 = 1

    public enum Role: UInt8, Sendable { case client = 0, server = 1 }

    public var maximumVersion: UInt16
    public var minimumVersion: UInt16
    public var role: Role
    public var service: Service
    public var auth: AuthMethod
    public var capabilities: UInt64
    public var nonce: [UInt8]

    public init(
        role: Role, service: Service, auth: AuthMethod, capabilities: UInt64, nonce: [UInt8],
        maximumVersion: UInt16 = Hello.currentVersion, minimumVersion: UInt16 = Hello.oldestVersion
    ) {
        precondition(nonce.count == Hello.nonceSize)
        self.maximumVersion = maximumVersion
        self.minimumVersion = minimumVersion
        self.role = role
        self.service = service
        self.auth = auth
        self.capabilities = capabilities
        self.nonce = nonce
    }

    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeBytes(Hello.magic)
        buffer.writeInteger(maximumVersion, endianness: .big)
        buffer.writeInteger(minimumVersion, endianness: .big)
        buffer.writeInteger(role.rawValue)
        buffer.writeInteger(service.rawValue)
        buffer.writeInteger(auth.rawValue)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(capabilities, endianness: .big)
        buffer.writeBytes(nonce)
    }

    public var bytes: [UInt8] {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// Whether `prefix` (the first bytes of a connection) can be the start of a hello. Lets a server
    /// that also speaks an older protocol on the same socket decide after reading a few bytes.
    public static func hasMagic(_ prefix: some Collection<UInt8>) -> Bool {
        prefix.prefix(4).elementsEqual(magic.prefix(prefix.count))
    }

    /// Takes a hello from the front of `buffer`; nil until all of it has arrived.
    public static func decode(_ buffer: inout ByteBuffer) throws(WireError) -> Hello? {
        let available = buffer.readableBytesView.prefix(4)
        guard hasMagic(available) else {
            throw WireError(.badMagic, "the peer does not speak the dpuctl protocol (no DPUW magic)")
        }
        guard buffer.readableBytes >= size else { return nil }
        var slice = buffer.readSlice(length: size)!
        slice.moveReaderIndex(forwardBy: 4)
        let maximum: UInt16 = try slice.readWireInteger("hello version")
        let minimum: UInt16 = try slice.readWireInteger("hello version")
        guard minimum <= maximum else { throw WireError(.malformed, "hello version range \(minimum)–\(maximum) is empty") }
        guard let role = Role(rawValue: try slice.readWireInteger("hello role")) else {
            throw WireError(.malformed, "hello role is neither client nor server")
        }
        let service = Service(rawValue: try slice.readWireInteger("hello service"))
        guard let auth = AuthMethod(rawValue: try slice.readWireInteger("hello auth method")) else {
            throw WireError(.malformed, "hello names an unknown authentication method")
        }
        let reserved: UInt8 = try slice.readWireInteger("hello reserved")
        guard reserved == 0 else { throw WireError(.malformed, "hello reserved byte is not 0") }
        let capabilities: UInt64 = try slice.readWireInteger("hello capabilities")
        let nonce = slice.readBytes(length: nonceSize)!
        return Hello(
            role: role, service: service, auth: auth, capabilities: capabilities, nonce: nonce,
            maximumVersion: maximum, minimumVersion: minimum)
    }

    /// The highest version both `self` and `peer` speak, or an error saying which ranges did not meet.
    public func negotiateVersion(with peer: Hello) throws(WireError) -> UInt16 {
        let version = min(maximumVersion, peer.maximumVersion)
        guard version >= max(minimumVersion, peer.minimumVersion) else {
            throw WireError(
                .unsupportedVersion,
                "protocol versions do not meet: we speak \(minimumVersion)–\(maximumVersion), the peer \(peer.minimumVersion)–\(peer.maximumVersion); upgrade the older side")
        }
        return version
    }
}

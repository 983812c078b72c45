/// Where a daemon listens or a client connects: `tcp://HOST:PORT`, `unix:///PATH` or `vsock://CID:PORT`.
///
/// The same spelling is used by every applet's `--listen` / `--connect`, by `CMD_NET_ADDR` and by the
/// config file. `HOST` may be an IPv4 address, a bracketed IPv6 address or a name.
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)
    case vsock(cid: UInt32, port: UInt32)

    /// The longest path that fits `sockaddr_un.sun_path` with its terminating NUL.
    public static let maximumUnixPathLength = 107

    /// Parses an endpoint URL. The error says what was wrong and what is expected.
    public init(parsing text: String) throws(EndpointError) {
        func fail(_ why: String) -> EndpointError { EndpointError(text: text, reason: why) }
        // Byte scanning rather than String.split: the rexec client parses CMD_NET_ADDR on every remote
        // exec, and the generic string algorithms cost it a run-time conformance lookup each.
        let bytes = Array(text.utf8)
        guard let separator = bytes.indices.dropLast(2).first(where: {
            bytes[$0] == UInt8(ascii: ":") && bytes[$0 + 1] == UInt8(ascii: "/") && bytes[$0 + 2] == UInt8(ascii: "/")
        }) else {
            throw fail("expected tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT")
        }
        let scheme = String(decoding: bytes[..<separator], as: UTF8.self)
        let rest = String(decoding: bytes[(separator + 3)...], as: UTF8.self)
        switch scheme {
        case "unix":
            guard rest.hasPrefix("/") else { throw fail("a unix socket path must be absolute (unix:///PATH)") }
            guard rest.utf8.count <= Endpoint.maximumUnixPathLength else {
                throw fail("the socket path is longer than \(Endpoint.maximumUnixPathLength) bytes")
            }
            guard !rest.utf8.contains(0) else { throw fail("the socket path contains a NUL byte") }
            self = .unix(path: rest)
        case "tcp":
            let (host, portText) = try Endpoint.splitHostPort(rest, fail)
            guard let port = UInt16(portText), port > 0 else {
                throw fail("the port must be a number from 1 to 65535")
            }
            guard !host.isEmpty else { throw fail("the host is missing") }
            self = .tcp(host: host, port: port)
        case "vsock":
            let (cidText, portText) = try Endpoint.splitHostPort(rest, fail)
            guard let cid = Endpoint.parseCID(cidText) else {
                throw fail("the CID must be a number or one of any, local, host")
            }
            guard let port = UInt32(portText) else { throw fail("the port must be a number") }
            self = .vsock(cid: cid, port: port)
        default:
            throw fail("unknown scheme `\(scheme)`; expected tcp, unix or vsock")
        }
    }

    private static func splitHostPort(
        _ text: String, _ fail: (String) -> EndpointError
    ) throws(EndpointError) -> (String, String) {
        let bytes = Array(text.utf8)
        let colonByte = UInt8(ascii: ":")
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { throw fail("missing `]` after the IPv6 address") }
            guard close + 1 < bytes.count, bytes[close + 1] == colonByte else { throw fail("missing `:PORT`") }
            return (String(decoding: bytes[1..<close], as: UTF8.self), String(decoding: bytes[(close + 2)...], as: UTF8.self))
        }
        guard let colon = bytes.lastIndex(of: colonByte) else { throw fail("missing `:PORT`") }
        guard !bytes[..<colon].contains(colonByte) else { throw fail("an IPv6 address must be in brackets: [ADDR]:PORT") }
        return (String(decoding: bytes[..<colon], as: UTF8.self), String(decoding: bytes[(colon + 1)...], as: UTF8.self))
    }

    private static func parseCID(_ text: String) -> UInt32? {
        switch text {
        case "any": return UInt32.max  // VMADDR_CID_ANY
        case "local": return 1  // VMADDR_CID_LOCAL
        case "host": return 2  // VMADDR_CID_HOST
        default: return UInt32(text)
        }
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix://\(path)"
        case .vsock(let cid, let port): "vsock://\(cid == UInt32.max ? "any" : String(cid)):\(port)"
        }
    }

    /// Whether a listener here can only be reached from this machine: a unix socket, or TCP on a loopback
    /// address. Anything else needs a key (or `--insecure`).
    public var isLocalOnly: Bool {
        switch self {
        case .unix: return true
        case .vsock: return false
        case .tcp(let host, _):
            return host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }
}

/// A malformed endpoint URL.
public struct EndpointError: Error, CustomStringConvertible, Equatable, Sendable {
    public var text: String
    public var reason: String
    public var description: String { "invalid address `\(text)`: \(reason)" }
}

import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// Asks the local udsproxyd for a connection to a unix socket on the peer machine: the same control
/// protocol libudsproxy.so speaks, for Swift code in other dpuctl components (the qtfs FUSE client relays
/// connections to host sockets with it). Stable API: see Sources/UDSProxy/README.md.
public enum UDSProxyClient {
    /// Connects to the unix socket at `path` (absolute) on the peer machine through the udsproxyd whose
    /// control socket is `control`, and returns a socket connected to it: blocking, close-on-exec, owned
    /// by the caller. Blocks until the peer has connected or refused (udsproxyd bounds that to 15 s).
    ///
    /// Bytes, half-close (shutdown(SHUT_WR)) and SCM_RIGHTS behave as on the peer's socket (regular files
    /// and pipes cross; see the README). The peer's server sees udsproxyd as its client.
    public static func connect(
        toPeerPath path: String, control: String = UDSProxySettings.defaultControlPath
    ) throws(UDSProxyClientError) -> SystemPackage.FileDescriptor {
        let bytes = Array(path.utf8)
        guard bytes.first == UInt8(ascii: "/"), bytes.count <= UDSProxyMessage.maximumSocketPath, !bytes.contains(0) else {
            throw UDSProxyClientError(.invalidArgument, path: path, "the path must be absolute, at most \(UDSProxyMessage.maximumSocketPath) bytes")
        }
        let socket: FileDescriptor
        do {
            socket = try Socket.connect(to: .unix(path: control))
        } catch {
            throw UDSProxyClientError(error.errno, path: path, "udsproxyd is not reachable at \(control) (\(error.errno))")
        }
        defer { socket.closeQuietly() }
        var request = ByteBuffer()
        UDSProxyControlRequest(path: bytes).encode(into: &request)
        do {
            try request.withUnsafeReadableBytes { (raw) throws(SystemError) in
                var sent = 0
                while sent < raw.count {
                    sent += try socket.send(UnsafeRawBufferPointer(rebasing: raw[sent...])) ?? 0
                }
            }
        } catch {
            throw UDSProxyClientError(error.errno, path: path, "cannot send the request to udsproxyd: \(error.errno)")
        }
        var reply = [UInt8](repeating: 0, count: UDSProxyControlReply.size)
        var have = 0
        var connected: FileDescriptor?
        while have < reply.count {
            let received = reply.withUnsafeMutableBytes { raw in
                Result { () throws(SystemError) in
                    try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: raw[have...]), maxFDs: 1)
                }
            }
            guard case .success(let result) = received else {
                connected?.closeQuietly()
                let errno = (try? received.get()).map { _ in Errno.ioError } ?? received.errno
                throw UDSProxyClientError(errno, path: path, "no answer from udsproxyd: \(errno)")
            }
            guard let (count, fds, _) = result, count > 0 else { break }
            for fd in fds {
                if connected == nil { connected = fd } else { fd.closeQuietly() }
            }
            have += count
        }
        guard have == reply.count, let status = try? UDSProxyControlReply.decode(reply) else {
            connected?.closeQuietly()
            throw UDSProxyClientError(.connectionReset, path: path, "udsproxyd closed the connection without an answer")
        }
        guard status == 0, let connected else {
            connected?.closeQuietly()
            let errno = Errno(rawValue: status == 0 ? Errno.connectionReset.rawValue : status)
            throw UDSProxyClientError(errno, path: path, UDSProxyClientError.explain(errno))
        }
        do {
            try connected.setNonBlocking(false)
        } catch {
            connected.closeQuietly()
            throw UDSProxyClientError(error.errno, path: path, "cannot use the socket udsproxyd passed: \(error.errno)")
        }
        return connected
    }
}

/// Why udsproxyd gave no connection. `errno` is what a connect(2) in its place would report.
public struct UDSProxyClientError: Error, CustomStringConvertible, Equatable, Sendable {
    public var errno: Errno
    public var path: String
    public var reason: String

    public init(_ errno: Errno, path: String, _ reason: String) {
        self.errno = errno
        self.path = path
        self.reason = reason
    }

    public var description: String { "connect `\(path)` through udsproxyd: \(reason)" }

    static func explain(_ errno: Errno) -> String {
        switch errno {
        case .permissionDenied: "not allowed (the path is outside the whitelist, or this user is not in allow-users)"
        case .noRouteToHost: "udsproxyd has no link to its peer"
        case .connectionAbort: "the link to the peer dropped while connecting"
        case .timedOut: "the peer did not connect in time"
        default: "the peer could not connect: \(errno)"
        }
    }
}

extension Result where Failure == SystemError {
    fileprivate var errno: Errno {
        if case .failure(let error) = self { return error.errno }
        return .ioError
    }
}

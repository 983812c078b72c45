import CDPUSystem
import Glibc
import SystemPackage

/// A socket address in its kernel form, with a readable description for errors.
public struct SocketAddress: Sendable, CustomStringConvertible {
    public var storage: sockaddr_storage
    public var length: socklen_t
    public var description: String

    /// `sockaddr_un` for a filesystem path.
    public init(unixPath path: String) throws(SystemError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count <= Endpoint.maximumUnixPathLength, !bytes.isEmpty else {
            throw SystemError(.fileNameTooLong, "socket address", path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &address) { target.copyMemory(from: $0) } }
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        description = path
    }

    /// `sockaddr_vm`.
    public init(vsockCID cid: UInt32, port: UInt32) {
        var address = sockaddr_vm()
        address.svm_family = sa_family_t(AF_VSOCK)
        address.svm_cid = cid
        address.svm_port = port
        storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &address) { target.copyMemory(from: $0) } }
        length = socklen_t(MemoryLayout<sockaddr_vm>.size)
        description = "vsock://\(cid):\(port)"
    }

    /// Wraps an address the kernel returned (accept, getsockname).
    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
        self.description = SocketAddress.describe(storage, length)
    }

    public var family: Int32 { Int32(storage.ss_family) }

    /// The TCP/UDP port of an inet address, 0 otherwise.
    public var port: UInt16 {
        var copy = storage
        return withUnsafeBytes(of: &copy) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET: UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
            case AF_INET6: UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
            default: 0
            }
        }
    }

    /// Resolves `host` (a numeric address or a name) for TCP.
    public static func resolveTCP(host: String, port: UInt16) throws(SystemError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            throw SystemError(.noSuchAddressOrDevice, "resolve (\(cString(gai_strerror(status))))", host)
        }
        defer { freeaddrinfo(list) }
        var result: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.copyMemory(from: UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(info.pointee.ai_addrlen)))
            }
            result.append(SocketAddress(storage: storage, length: info.pointee.ai_addrlen))
            entry = info.pointee.ai_next
        }
        return result
    }

    static func describe(_ storage: sockaddr_storage, _ length: socklen_t) -> String {
        var copy = storage
        return withUnsafeBytes(of: &copy) { raw -> String in
            switch Int32(storage.ss_family) {
            case AF_UNIX:
                let pathBytes = raw.dropFirst(MemoryLayout<sa_family_t>.size).prefix(Int(length) - MemoryLayout<sa_family_t>.size)
                let path = pathBytes.prefix { $0 != 0 }
                return path.isEmpty ? "unix:(unnamed)" : String(decoding: path, as: UTF8.self)
            case AF_INET:
                var address = raw.load(as: sockaddr_in.self)
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(text.count))
                return "\(cString(text)):\(UInt16(bigEndian: address.sin_port))"
            case AF_INET6:
                var address = raw.load(as: sockaddr_in6.self)
                var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                inet_ntop(AF_INET6, &address.sin6_addr, &text, socklen_t(text.count))
                return "[\(cString(text))]:\(UInt16(bigEndian: address.sin6_port))"
            case AF_VSOCK:
                let address = raw.load(as: sockaddr_vm.self)
                return "vsock://\(address.svm_cid):\(address.svm_port)"
            default:
                return "family \(storage.ss_family)"
            }
        }
    }
}

/// The credentials of the process at the other end of a unix socket (SO_PEERCRED).
public struct PeerCredentials: Equatable, Sendable {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t
}

/// How to shut down a socket: `shutdown(2)`'s SHUT_RD, SHUT_WR, SHUT_RDWR.
public enum ShutdownDirection: Int32, Sendable {
    case read = 0, write = 1, both = 2
}

extension FileDescriptor {
    /// `socket(2)`, always with SOCK_CLOEXEC.
    public static func socket(
        domain: Int32, type: Int32, protocol proto: Int32 = 0, nonBlocking: Bool = false
    ) throws(SystemError) -> FileDescriptor {
        let flags = Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        return FileDescriptor(rawValue: try syscall("socket") { Glibc.socket(domain, type | flags, proto) })
    }

    /// `socketpair(AF_UNIX, type)`, both ends close-on-exec.
    public static func socketPair(
        type: Int32 = Int32(SOCK_STREAM.rawValue), nonBlocking: Bool = false
    ) throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        let flags = Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        _ = try syscall("socketpair") { Glibc.socketpair(AF_UNIX, type | flags, 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// `bind(2)`.
    public func bind(_ address: SocketAddress) throws(SystemError) {
        var storage = address.storage
        _ = try syscall("bind", address.description) {
            withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(rawValue, $0, address.length) }
            }
        }
    }

    /// `listen(2)`.
    public func listen(backlog: Int32 = 128) throws(SystemError) {
        _ = try syscall("listen") { Glibc.listen(rawValue, backlog) }
    }

    /// `connect(2)`. A non-blocking socket returns false for EINPROGRESS (wait for POLLOUT, then call
    /// `pendingError()`), true when connected.
    @discardableResult
    public func connect(_ address: SocketAddress) throws(SystemError) -> Bool {
        var storage = address.storage
        do throws(SystemError) {
            // EINTR on connect does not abort the connection attempt; retrying would give EALREADY.
            _ = try syscall("connect", address.description, retryOnInterrupt: false) {
                withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        Glibc.connect(rawValue, $0, address.length)
                    }
                }
            }
            return true
        } catch where error.errno == .nowInProgress || error.errno == .interrupted {
            return false
        }
    }

    /// `accept4(2)` with SOCK_CLOEXEC. Returns nil when a non-blocking listener has no connection queued.
    public func accept(nonBlocking: Bool = false) throws(SystemError) -> FileDescriptor? {
        let flags = Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        do throws(SystemError) {
            return FileDescriptor(rawValue: try syscall("accept") { cdpu_accept4(rawValue, flags) })
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }

    /// `shutdown(2)`.
    public func shutdown(_ direction: ShutdownDirection) throws(SystemError) {
        _ = try syscall("shutdown") { Glibc.shutdown(rawValue, direction.rawValue) }
    }

    /// `getsockopt(SOL_SOCKET, SO_PEERCRED)`.
    public func peerCredentials() throws(SystemError) -> PeerCredentials {
        var credentials = PeerCredentials(pid: 0, uid: 0, gid: 0)
        _ = try syscall("getsockopt(SO_PEERCRED)") {
            cdpu_peer_credentials(rawValue, &credentials.pid, &credentials.uid, &credentials.gid)
        }
        return credentials
    }

    /// `getsockopt(2)` of an integer option.
    public func socketOption(level: Int32, _ name: Int32) throws(SystemError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try syscall("getsockopt") { getsockopt(rawValue, level, name, &value, &length) }
        return value
    }

    /// `setsockopt(2)` of an integer option.
    public func setSocketOption(level: Int32, _ name: Int32, _ value: Int32) throws(SystemError) {
        var value = value
        _ = try syscall("setsockopt") {
            setsockopt(rawValue, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// The error of a finished non-blocking connect (SO_ERROR); nil when it succeeded.
    public func pendingError() throws(SystemError) -> Errno? {
        let value = try socketOption(level: SOL_SOCKET, SO_ERROR)
        return value == 0 ? nil : Errno(rawValue: value)
    }

    /// Turns on TCP keep-alive with the given idle time, probe interval and probe count, so that a peer
    /// that vanished (cable pulled, machine reset) is noticed.
    public func enableKeepAlive(idleSeconds: Int32, intervalSeconds: Int32, probes: Int32) throws(SystemError) {
        try setSocketOption(level: SOL_SOCKET, SO_KEEPALIVE, 1)
        try setSocketOption(level: Int32(IPPROTO_TCP), TCP_KEEPIDLE, idleSeconds)
        try setSocketOption(level: Int32(IPPROTO_TCP), TCP_KEEPINTVL, intervalSeconds)
        try setSocketOption(level: Int32(IPPROTO_TCP), TCP_KEEPCNT, probes)
    }

    /// `getsockname(2)`.
    public func localAddress() throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try syscall("getsockname") {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(rawValue, $0, &length) }
            }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// `getpeername(2)`.
    public func peerAddress() throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try syscall("getpeername") {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(rawValue, $0, &length) }
            }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// Sends all of `buffers` on a blocking stream socket (`sendmsg(2)` with MSG_NOSIGNAL, retrying short
    /// sends): a peer that has gone, or this side's own shutdown, is an EPIPE error for the caller, never a
    /// SIGPIPE that kills a process which did not ignore it.
    public func sendAll(_ buffers: [UnsafeRawBufferPointer]) throws(SystemError) {
        try writeVectors(buffers) { (vectors, count) throws(SystemError) in
            var message = msghdr()
            message.msg_iov = vectors
            message.msg_iovlen = Int(count)
            return try syscall("sendmsg") { sendmsg(rawValue, &message, Int32(MSG_NOSIGNAL)) }
        }
    }

    /// Sends `bytes` with `fds` attached as one SCM_RIGHTS message (`sendmsg(2)`, MSG_NOSIGNAL, plus
    /// `flags`: MSG_DONTWAIT for a socket whose open file description is shared). Returns the number of
    /// bytes sent; nil when a non-blocking socket is full.
    public func send(
        _ bytes: UnsafeRawBufferPointer, fds: [FileDescriptor] = [], flags: Int32 = 0
    ) throws(SystemError) -> Int? {
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        var message = msghdr()
        let rawFDs = fds.map(\.rawValue)
        let control = UnsafeMutableRawPointer.allocate(
            byteCount: max(1, cdpu_cmsg_space_fds(rawFDs.count)), alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        do throws(SystemError) {
            return try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(SystemError) -> Int in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                rawFDs.withUnsafeBufferPointer { cdpu_cmsg_put_fds(&message, control, $0.baseAddress, rawFDs.count) }
                return try syscall("sendmsg") { sendmsg(rawValue, &message, Int32(MSG_NOSIGNAL) | flags) }
            }
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }

    /// Receives into `buffer` and up to `maxFDs` SCM_RIGHTS descriptors (installed close-on-exec;
    /// `flags` adds to `recvmsg(2)`'s, MSG_DONTWAIT say). Returns nil when a non-blocking socket has
    /// nothing; `bytes == 0` with no fds is end of stream. Descriptors beyond `maxFDs` are closed (by the
    /// kernel, or here) and reported through `truncated`.
    public func receive(
        into buffer: UnsafeMutableRawBufferPointer, maxFDs: Int = 0, flags: Int32 = 0
    ) throws(SystemError) -> (bytes: Int, fds: [FileDescriptor], truncated: Bool)? {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var message = msghdr()
        let space = cdpu_cmsg_space_fds(max(maxFDs, 0))
        let control = UnsafeMutableRawPointer.allocate(
            byteCount: max(1, space), alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        do throws(SystemError) {
            let count = try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(SystemError) -> Int in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = space > 0 ? control : nil
                message.msg_controllen = space
                return try syscall("recvmsg") { recvmsg(rawValue, &message, Int32(MSG_CMSG_CLOEXEC) | flags) }
            }
            var raw = [Int32](repeating: -1, count: max(maxFDs, 1))
            var truncated: Int32 = 0
            let received = raw.withUnsafeMutableBufferPointer {
                cdpu_cmsg_get_fds(&message, $0.baseAddress, maxFDs, &truncated)
            }
            return (count, raw.prefix(received).map(FileDescriptor.init(rawValue:)), truncated != 0)
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }
}

/// Opening listeners and connections by `Endpoint`.
public enum Socket {
    /// Creates a listening socket for `endpoint`. A unix socket path left behind by a dead daemon is
    /// removed; a path where something still accepts connections is an error (EADDRINUSE), never stolen.
    /// The new socket node gets `mode` (default 0600: root only).
    public static func listen(
        on endpoint: Endpoint, backlog: Int32 = 128, unixMode: mode_t = 0o600, nonBlocking: Bool = false
    ) throws(SystemError) -> FileDescriptor {
        switch endpoint {
        case .unix(let path):
            let address = try SocketAddress(unixPath: path)
            try removeStaleUnixSocket(path)
            let fd = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue), nonBlocking: nonBlocking)
            do throws(SystemError) {
                // bind creates the node with ~umask; tighten it before anyone can connect.
                try fd.bind(address)
                _ = try syscall("chmod", path) { chmod(path, unixMode) }
                try fd.listen(backlog: backlog)
            } catch {
                fd.closeQuietly()
                throw error
            }
            return fd
        case .tcp(let host, let port):
            let addresses = try SocketAddress.resolveTCP(host: host, port: port)
            var lastError = SystemError(.noSuchAddressOrDevice, "resolve", host)
            for address in addresses {
                let fd = try FileDescriptor.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue), nonBlocking: nonBlocking)
                do throws(SystemError) {
                    try fd.setSocketOption(level: SOL_SOCKET, SO_REUSEADDR, 1)
                    try fd.bind(address)
                    try fd.listen(backlog: backlog)
                    return fd
                } catch {
                    fd.closeQuietly()
                    lastError = SystemError(error.errno, error.operation, endpoint.description)
                }
            }
            throw lastError
        case .vsock(let cid, let port):
            let fd = try FileDescriptor.socket(domain: AF_VSOCK, type: Int32(SOCK_STREAM.rawValue), nonBlocking: nonBlocking)
            do throws(SystemError) {
                try fd.bind(SocketAddress(vsockCID: cid, port: port))
                try fd.listen(backlog: backlog)
            } catch {
                fd.closeQuietly()
                throw SystemError(error.errno, error.operation, endpoint.description)
            }
            return fd
        }
    }

    /// Connects to `endpoint` (blocking). TCP connections get TCP_NODELAY: every protocol here is
    /// request/response or already batches its writes, and Nagle's delay is what made the original slow.
    public static func connect(to endpoint: Endpoint) throws(SystemError) -> FileDescriptor {
        let addresses: [SocketAddress]
        let type = Int32(SOCK_STREAM.rawValue)
        switch endpoint {
        case .unix(let path): addresses = [try SocketAddress(unixPath: path)]
        case .tcp(let host, let port): addresses = try SocketAddress.resolveTCP(host: host, port: port)
        case .vsock(let cid, let port): addresses = [SocketAddress(vsockCID: cid, port: port)]
        }
        var lastError = SystemError(.noSuchAddressOrDevice, "connect", endpoint.description)
        for address in addresses {
            let fd = try FileDescriptor.socket(domain: address.family, type: type)
            do throws(SystemError) {
                if try !fd.connect(address) {
                    // Interrupted: wait for the attempt to finish.
                    var set = [pollfd(fd: fd.rawValue, events: Int16(POLLOUT), revents: 0)]
                    _ = try poll(&set, timeoutMilliseconds: -1, retryOnInterrupt: true)
                    if let error = try fd.pendingError() { throw SystemError(error, "connect", endpoint.description) }
                }
                if case .tcp = endpoint { try fd.setSocketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
                return fd
            } catch {
                fd.closeQuietly()
                lastError = SystemError(error.errno, "connect", endpoint.description)
            }
        }
        throw lastError
    }

    /// Removes `path` if it is a unix socket nobody listens on. Leaves anything else alone and says so.
    public static func removeStaleUnixSocket(_ path: String) throws(SystemError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError(.fileExists, "bind (not a socket, left alone)", path)
        }
        let probe = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue))
        defer { probe.closeQuietly() }
        do throws(SystemError) {
            try probe.connect(try SocketAddress(unixPath: path))
            throw SystemError(.addressInUse, "bind (another process listens there)", path)
        } catch where error.errno == .connectionRefused {
            _ = try syscall("unlink", path) { unlink(path) }
        }
    }
}

/// Decodes a NUL-terminated C string (best effort: invalid UTF-8 is replaced, never fatal).
func cString(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
}

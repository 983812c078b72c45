import CDPUSystem
import Glibc

extension SocketAddress {
    /// An IPv4 or IPv6 literal with a port, without a resolver round trip (getaddrinfo asks netlink for
    /// the machine's addresses even for a literal, which a client on every remote exec's path can skip).
    /// Nil when `host` is not a literal.
    public init?(numericHost host: String, port: UInt16) {
        var storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = v4
            withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &address) { target.copyMemory(from: $0) } }
            self.init(storage: storage, length: socklen_t(MemoryLayout<sockaddr_in>.size))
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_addr = v6
            withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &address) { target.copyMemory(from: $0) } }
            self.init(storage: storage, length: socklen_t(MemoryLayout<sockaddr_in6>.size))
        } else {
            return nil
        }
    }
}

/// `getrandom(2)`: `count` bytes from the kernel's generator in one call (nonces, not keys: keys come
/// from swift-crypto).
public func randomBytes(_ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var filled = 0
    while filled < count {
        let got = bytes.withUnsafeMutableBytes { getrandom($0.baseAddress! + filled, count - filled, 0) }
        if got > 0 { filled += got } else if errno != EINTR { break }
    }
    if filled < count {
        var generator = SystemRandomNumberGenerator()
        for index in filled..<count { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
    }
    return bytes
}

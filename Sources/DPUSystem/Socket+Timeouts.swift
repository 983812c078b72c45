import Glibc
import SystemPackage

extension FileDescriptor {
    /// SO_RCVTIMEO: a blocking receive fails with EAGAIN after `seconds`; 0 turns the limit off. Bounds
    /// how long a peer can make a thread wait in a handshake.
    public func setReceiveTimeout(seconds: Int) throws(SystemError) {
        var value = timeval(tv_sec: seconds, tv_usec: 0)
        _ = try syscall("setsockopt(SO_RCVTIMEO)") {
            setsockopt(rawValue, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }
}

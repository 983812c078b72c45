import Glibc
import SystemPackage

extension FileDescriptor {
    /// SO_RCVTIMEO: a blocking receive fails with EAGAIN after `milliseconds`; 0 turns the limit off. Bounds
    /// how long a peer can make a thread wait in a handshake.
    public func setReceiveTimeout(milliseconds: Int) throws(SystemError) {
        var value = Self.timeval(milliseconds: milliseconds)
        _ = try syscall("setsockopt(SO_RCVTIMEO)") {
            setsockopt(rawValue, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    public func setReceiveTimeout(seconds: Int) throws(SystemError) {
        try setReceiveTimeout(milliseconds: seconds * 1000)
    }

    /// SO_SNDTIMEO: a blocking send (sendfile too) that can move nothing for `seconds` fails with EAGAIN;
    /// 0 turns the limit off. Bounds how long a peer that stops reading can hold a thread answering it.
    public func setSendTimeout(seconds: Int) throws(SystemError) {
        var value = Self.timeval(milliseconds: seconds * 1000)
        _ = try syscall("setsockopt(SO_SNDTIMEO)") {
            setsockopt(rawValue, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    private static func timeval(milliseconds: Int) -> Glibc.timeval {
        Glibc.timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    }
}

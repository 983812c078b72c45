import CDPUSystem
import Glibc
import SystemPackage

extension FileDescriptor {
    /// `splice(2)` from this fd (a pipe) to `target` (a socket or pipe): the kernel moves up to `count`
    /// bytes without copying them through user space. Returns the bytes moved, 0 at end of file, nil when
    /// the target is full (or the pipe empty). Non-blocking whatever the fds' flags.
    public func splice(to target: FileDescriptor, count: Int) throws(SystemError) -> Int? {
        do throws(SystemError) {
            return try syscall("splice") { cdpu_splice(rawValue, target.rawValue, count) }
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }

    /// Bytes waiting to be read (`ioctl(FIONREAD)`): for a pipe, what is in it now; for a socket, what is
    /// queued for reading.
    public func bytesAvailable() -> Int {
        var count: Int32 = 0
        guard cdpu_ioctl_ptr(rawValue, UInt(FIONREAD), &count) == 0 else { return 0 }
        return Int(count)
    }
}

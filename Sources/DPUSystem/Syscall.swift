import CDPUSystem
import Glibc
import SystemPackage

// One place decides how a raw libc result becomes a value or an error, and whether EINTR is retried.
// Every wrapper in this module goes through `syscall(_:_:retryOnInterrupt:_:)`; nothing else in the
// project calls these libc functions directly.

/// The current thread's errno.
@inline(__always)
var currentErrno: Errno { Errno(rawValue: cdpu_errno()) }

/// Runs `body`, a libc call that returns -1 and sets errno on failure, and turns the result into a value
/// or a `SystemError` naming `operation` and `subject`. EINTR is retried unless `retryOnInterrupt` is
/// false (a caller that must notice signals, such as a wait that should wake for SIGTERM, says so).
@inline(__always)
func syscall<I: FixedWidthInteger>(
    _ operation: StaticString, _ subject: @autoclosure () -> String? = nil,
    retryOnInterrupt: Bool = true, _ body: () -> I
) throws(SystemError) -> I {
    while true {
        #if ENABLE_MOCKING
        if let forced = SyscallMock.current?.intercept(operation.description) {
            if forced == .interrupted && retryOnInterrupt { continue }
            throw SystemError(forced, operation.description, subject())
        }
        #endif
        let result = body()
        if result != -1 { return result }
        let error = currentErrno
        if error == .interrupted && retryOnInterrupt { continue }
        throw SystemError(error, operation.description, subject())
    }
}

#if ENABLE_MOCKING
/// Test hook (debug builds only): record the calls made through `syscall` and force errors before the
/// real call runs, so that tests can check EINTR retries and error context without breaking the system.
public final class SyscallMock: @unchecked Sendable {
    @TaskLocal public static var current: SyscallMock?

    /// Operations seen, in order.
    public private(set) var trace: [String] = []
    private var forced: [(operation: String, errno: Errno, remaining: Int)] = []

    public init() {}

    /// Makes the next `count` calls of `operation` fail with `errno` before reaching the kernel.
    public func force(_ errno: Errno, on operation: String, count: Int = 1) {
        forced.append((operation, errno, count))
    }

    func intercept(_ operation: String) -> Errno? {
        trace.append(operation)
        guard let index = forced.firstIndex(where: { $0.operation == operation && $0.remaining > 0 }) else {
            return nil
        }
        forced[index].remaining -= 1
        return forced[index].errno
    }
}
#endif

extension FileDescriptor {
    /// `close(2)` that never throws. EINTR counts as success: on Linux the fd is released before the
    /// interruption (see close(2), "Dealing with error returns from close()"), and retrying could close
    /// an fd another thread just received. EBADF means the caller closed something it did not own.
    public func closeQuietly() {
        let result = Glibc.close(rawValue)
        precondition(result == 0 || currentErrno != .badFileDescriptor, "close of a file descriptor we do not own")
    }

    /// `fcntl(F_GETFL)`: the open file description's status flags (O_NONBLOCK, O_APPEND, access mode).
    public func statusFlags() throws(SystemError) -> Int32 {
        try syscall("fcntl(F_GETFL)") { cdpu_fcntl_int(rawValue, F_GETFL, 0) }
    }

    /// `fcntl(F_SETFL)`.
    public func setStatusFlags(_ flags: Int32) throws(SystemError) {
        _ = try syscall("fcntl(F_SETFL)") { cdpu_fcntl_int(rawValue, F_SETFL, flags) }
    }

    /// Sets or clears O_NONBLOCK.
    public func setNonBlocking(_ on: Bool = true) throws(SystemError) {
        let flags = try statusFlags()
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { try setStatusFlags(wanted) }
    }

    /// Whether FD_CLOEXEC is set.
    public func isCloseOnExec() throws(SystemError) -> Bool {
        try syscall("fcntl(F_GETFD)") { cdpu_fcntl_int(rawValue, F_GETFD, 0) } & FD_CLOEXEC != 0
    }

    /// Sets or clears FD_CLOEXEC.
    public func setCloseOnExec(_ on: Bool) throws(SystemError) {
        let flags = try syscall("fcntl(F_GETFD)") { cdpu_fcntl_int(rawValue, F_GETFD, 0) }
        let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
        _ = try syscall("fcntl(F_SETFD)") { cdpu_fcntl_int(rawValue, F_SETFD, wanted) }
    }

    /// `fcntl(F_DUPFD_CLOEXEC)`: a close-on-exec duplicate numbered at least `minimum`.
    public func duplicateCloseOnExec(minimum: Int32 = 0) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("fcntl(F_DUPFD_CLOEXEC)") {
            cdpu_fcntl_int(rawValue, F_DUPFD_CLOEXEC, minimum)
        })
    }

    /// `openat(2)` relative to this directory fd, always with O_CLOEXEC.
    public func openAt(
        _ path: String, flags: Int32, mode: mode_t = 0o666
    ) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("open", path) {
            cdpu_openat(rawValue, path, flags | O_CLOEXEC, UInt32(mode))
        })
    }

    /// `open(2)`, always with O_CLOEXEC.
    public static func openPath(
        _ path: String, flags: Int32, mode: mode_t = 0o666
    ) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("open", path) { cdpu_open(path, flags | O_CLOEXEC, UInt32(mode)) })
    }

    /// A close-on-exec pipe: (read end, write end).
    public static func makePipe(nonBlocking: Bool = false) throws(SystemError) -> (
        read: FileDescriptor, write: FileDescriptor
    ) {
        var fds: [Int32] = [-1, -1]
        _ = try syscall("pipe2") { cdpu_pipe2(&fds, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// Reads into `buffer`; returns 0 at end of file and nil when a non-blocking fd has nothing to read.
    public func readSome(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int? {
        do throws(SystemError) {
            return try syscall("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }

    /// Writes part of `buffer`; returns nil when a non-blocking fd cannot take anything now.
    public func writeSome(_ buffer: UnsafeRawBufferPointer) throws(SystemError) -> Int? {
        do throws(SystemError) {
            return try syscall("write") { Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
        } catch where error.errno == .wouldBlock {
            return nil
        }
    }
}

/// `poll(2)` on a set of descriptors. Returns the number ready; 0 on timeout. EINTR is returned as an
/// error unless `retryOnInterrupt`, because a poll loop usually wants to look at its signals.
public func poll(
    _ fds: inout [pollfd], timeoutMilliseconds: Int32, retryOnInterrupt: Bool = false
) throws(SystemError) -> Int {
    let count = fds.count
    return Int(try fds.withUnsafeMutableBufferPointer { (buffer) throws(SystemError) -> Int32 in
        try syscall("poll", retryOnInterrupt: retryOnInterrupt) {
            Glibc.poll(buffer.baseAddress, nfds_t(count), timeoutMilliseconds)
        }
    })
}

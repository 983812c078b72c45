import CDPUSystem
import Glibc
import SystemPackage

/// An epoll(7) instance: the readiness source of a single-threaded event loop. Close-on-exec.
///
/// Registrations carry a 64-bit token chosen by the caller (an index into its own table), never a
/// pointer, so a stale event for a closed fd can be recognised and dropped.
public final class Epoll {
    public let fd: FileDescriptor
    private var events: [epoll_event]

    /// Readiness bits (`EPOLLIN`, ...), spelled once here so callers need no Glibc casts.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: EPOLLIN.rawValue)
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        /// The peer shut down its writing side (a socket) — reported with `readable`.
        public static let peerClosed = Events(rawValue: EPOLLRDHUP.rawValue)
        /// Error or hang-up: always reported, whatever was asked for.
        public static let error = Events(rawValue: EPOLLERR.rawValue)
        public static let hangUp = Events(rawValue: EPOLLHUP.rawValue)
        /// Edge-triggered: one event per change of state; the owner reads or writes until EAGAIN.
        public static let edgeTriggered = Events(rawValue: EPOLLET.rawValue)
    }

    /// `epoll_create1(EPOLL_CLOEXEC)`. `capacity` bounds the events returned by one `wait`.
    public init(capacity: Int = 64) throws(SystemError) {
        fd = FileDescriptor(rawValue: try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
        events = [epoll_event](repeating: epoll_event(), count: max(capacity, 1))
    }

    deinit { fd.closeQuietly() }

    /// `epoll_ctl(EPOLL_CTL_ADD)`. Regular files and directories cannot be watched (EPERM): the caller
    /// treats them as always ready.
    public func add(_ watched: FileDescriptor, _ interest: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_ADD, watched, interest, token)
    }

    /// `epoll_ctl(EPOLL_CTL_MOD)`.
    public func modify(_ watched: FileDescriptor, _ interest: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_MOD, watched, interest, token)
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`. Must be called before closing an fd whose open file description may
    /// live on elsewhere (a dup, a child's copy): closing alone does not remove it from the interest list.
    public func remove(_ watched: FileDescriptor) {
        var event = epoll_event()
        _ = epoll_ctl(fd.rawValue, EPOLL_CTL_DEL, watched.rawValue, &event)
    }

    private func control(_ operation: Int32, _ watched: FileDescriptor, _ interest: Events, _ token: UInt64) throws(SystemError) {
        var event = epoll_event()
        event.events = interest.rawValue
        event.data.u64 = token
        _ = try syscall("epoll_ctl", String(watched.rawValue)) { epoll_ctl(fd.rawValue, operation, watched.rawValue, &event) }
    }

    /// `epoll_wait(2)`: calls `body` for each ready registration. Returns the number of events; 0 on
    /// timeout (-1 waits forever). EINTR returns 0 so the loop can look at its state.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ body: (UInt64, Events) -> Void) throws(SystemError) -> Int {
        let capacity = Int32(events.count)
        let count: Int32
        do throws(SystemError) {
            count = try events.withUnsafeMutableBufferPointer { (buffer) throws(SystemError) -> Int32 in
                try syscall("epoll_wait", retryOnInterrupt: false) {
                    epoll_wait(fd.rawValue, buffer.baseAddress, capacity, timeoutMilliseconds)
                }
            }
        } catch where error.errno == .interrupted {
            return 0
        }
        for index in 0..<Int(count) {
            body(events[index].data.u64, Events(rawValue: events[index].events))
        }
        return Int(count)
    }
}

/// An eventfd(2) used to wake an event loop from another thread. Close-on-exec, non-blocking.
public struct EventFD: Sendable {
    public let fd: FileDescriptor

    public init() throws(SystemError) {
        fd = FileDescriptor(rawValue: try syscall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) })
    }

    /// Makes the fd readable (wakes the loop). Never blocks; a full counter already means "awake".
    public func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
    }

    /// Resets the counter after a wake-up.
    public func drain() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(fd.rawValue, $0.baseAddress, 8) }
    }

    public func close() { fd.closeQuietly() }
}

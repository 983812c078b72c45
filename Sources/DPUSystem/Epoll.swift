import CDPUSystem
import Glibc
import SystemPackage

/// An epoll(7) instance: readiness of many descriptors, waited for on one thread.
public struct Epoll: Sendable {
    public let fd: FileDescriptor
    /// Most events returned by one wait.
    public let capacity: Int

    /// EPOLLONESHOT: report once, then disable until modified again. (The readiness bits are poll(2)'s.)
    public static let oneShot: UInt32 = 1 << 30

    /// Interest and readiness bits, by name.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: EPOLLIN.rawValue)
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        /// EPOLLRDHUP: the peer shut down its writing side.
        public static let peerClosed = Events(rawValue: EPOLLRDHUP.rawValue)
        public static let error = Events(rawValue: EPOLLERR.rawValue)
        public static let hangUp = Events(rawValue: EPOLLHUP.rawValue)
        /// EPOLLET.
        public static let edgeTriggered = Events(rawValue: EPOLLET.rawValue)
        public static let oneShot = Events(rawValue: Epoll.oneShot)
    }

    /// `epoll_create1(EPOLL_CLOEXEC)`.
    public init(capacity: Int = 64) throws(SystemError) {
        self.capacity = capacity
        fd = FileDescriptor(rawValue: try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
    }

    /// EPOLL_CTL_ADD with named events.
    public func add(_ target: FileDescriptor, _ interest: Events, token: UInt64) throws(SystemError) {
        try add(target, events: interest.rawValue, data: token)
    }

    /// EPOLL_CTL_MOD with named events.
    public func modify(_ target: FileDescriptor, _ interest: Events, token: UInt64) throws(SystemError) {
        try modify(target, events: interest.rawValue, data: token)
    }

    /// Waits and calls `body` with the token and events of each ready descriptor; returns how many. A
    /// signal handled on this thread ends the wait early with none: a caller that waits for a deadline
    /// works out the time left again (waiting the whole timeout anew after each signal, a stream of them
    /// — SIGCHLD from a server's programs — would put its timers off for as long as the stream lasts).
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ body: (UInt64, Events) -> Void) throws(SystemError) -> Int {
        let ready: [(events: UInt32, data: UInt64)]
        do {
            ready = try wait(maximum: capacity, timeoutMilliseconds: timeoutMilliseconds, retryOnInterrupt: false)
        } catch where error.errno == .interrupted {
            return 0
        }
        for (events, data) in ready { body(data, Events(rawValue: events)) }
        return ready.count
    }

    /// EPOLL_CTL_ADD of `target` for `events`, with `data` given back when it is ready.
    public func add(_ target: FileDescriptor, events: UInt32, data: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_ADD, target, events, data)
    }

    /// EPOLL_CTL_MOD.
    public func modify(_ target: FileDescriptor, events: UInt32, data: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_MOD, target, events, data)
    }

    /// EPOLL_CTL_DEL; a descriptor that is not registered is not an error.
    public func remove(_ target: FileDescriptor) {
        var event = epoll_event()
        _ = epoll_ctl(fd.rawValue, EPOLL_CTL_DEL, target.rawValue, &event)
    }

    private func control(_ operation: Int32, _ target: FileDescriptor, _ events: UInt32, _ data: UInt64) throws(SystemError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        _ = try syscall("epoll_ctl") { epoll_ctl(fd.rawValue, operation, target.rawValue, &event) }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) and returns (events, data) of what is ready.
    public func wait(maximum: Int = 64, timeoutMilliseconds: Int32, retryOnInterrupt: Bool = true) throws(SystemError) -> [(events: UInt32, data: UInt64)] {
        var events = [epoll_event](repeating: epoll_event(), count: maximum)
        let count = try syscall("epoll_wait", retryOnInterrupt: retryOnInterrupt) {
            events.withUnsafeMutableBufferPointer { epoll_wait(fd.rawValue, $0.baseAddress, Int32(maximum), timeoutMilliseconds) }
        }
        return events.prefix(Int(count)).map { ($0.events, $0.data.u64) }
    }

    public func close() { fd.closeQuietly() }
}

/// An eventfd(2) counter, to wake a thread that waits in poll or epoll.
public struct EventCounter: Sendable {
    public let fd: FileDescriptor

    public init() throws(SystemError) {
        fd = FileDescriptor(rawValue: try syscall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) })
    }

    /// Adds one (wakes the waiter).
    public func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd.rawValue, &one, 8)
    }

    /// Resets the counter to zero.
    public func drain() {
        var value: UInt64 = 0
        _ = Glibc.read(fd.rawValue, &value, 8)
    }

    public func close() { fd.closeQuietly() }
}

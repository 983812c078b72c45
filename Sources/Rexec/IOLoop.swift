import DPUSystem
import Glibc
import Synchronization
import SystemPackage

/// A single-threaded, edge-triggered epoll loop: the client runs one on its main thread (no thread pool
/// to start: the client's start-up is on every remote exec's path), the server one on its own thread.
///
/// Every fd is registered once for everything (readable, writable, peer closed; one that is only ever
/// read, for readability alone) edge-triggered; its owner remembers what the last event said and works
/// until EAGAIN. Handlers run on the loop's thread only. Other threads talk to the loop with `execute`,
/// which wakes it through an eventfd.
final class IOLoop {
    typealias Handler = (Epoll.Events) -> Void

    private let epoll: Epoll
    /// Handlers by slot; a token is slot + 1 in its low half and the slot's generation in its high half,
    /// so an event fetched for an fd that was replaced in the same batch finds no handler. (An array, not
    /// a dictionary: the client's start-up must not pay for generic metadata it can avoid.)
    private var slots: [(generation: UInt32, handler: Handler?)] = []
    private var freeSlots: [Int] = []
    private var timers = TimerQueue()
    /// Timers not yet fired or cancelled (tests: finished sessions leave none behind).
    var pendingTimers: Int { timers.count }
    private let wake: EventCounter
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    /// Work to run after the current batch of events (deferred so a handler never re-enters another).
    private var deferred: [() -> Void] = []
    private(set) var stopped = false

    struct Registration: Hashable {
        fileprivate let token: UInt64
    }

    typealias TimerID = DPUSystem.TimerID

    init() throws(SystemError) {
        epoll = try Epoll(capacity: 128)
        wake = try EventCounter()
        try epoll.add(wake.fd, [.readable, .edgeTriggered], token: 0)
    }

    deinit { wake.close() }

    /// Watches `fd` for every event, edge-triggered. Throws EPERM for regular files and directories (the
    /// caller treats those as always ready). `readOnly`: not for writability (an eventfd that is only read
    /// would otherwise report a writable edge after every read: one more turn of the loop each time).
    func register(_ fd: FileDescriptor, readOnly: Bool = false, _ handler: @escaping Handler) throws(SystemError) -> Registration {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = slots.count
            slots.append((0, nil))
        }
        let token = UInt64(slots[slot].generation) << 32 | UInt64(slot + 1)
        do {
            try epoll.add(fd, readOnly ? [.readable, .edgeTriggered] : [.readable, .writable, .peerClosed, .edgeTriggered], token: token)
        } catch {
            freeSlots.append(slot)
            throw error
        }
        slots[slot].handler = handler
        return Registration(token: token)
    }

    /// Stops (or resumes) reporting `fd` readable: a reader that may not read for a while (a stream
    /// without credit) is not woken by every write into it. Resuming reports it at once if it is readable
    /// (EPOLL_CTL_MOD looks again). Hang-ups and errors are reported either way.
    func watchReading(_ registration: Registration, _ fd: FileDescriptor, _ on: Bool) {
        let interest: Epoll.Events = on ? [.readable, .writable, .peerClosed, .edgeTriggered] : [.writable, .edgeTriggered]
        try? epoll.modify(fd, interest, token: registration.token)
    }

    /// Stops watching. Call before closing the fd.
    func unregister(_ registration: Registration, _ fd: FileDescriptor) {
        epoll.remove(fd)
        let slot = Int(registration.token & 0xffff_ffff) - 1
        guard slot >= 0, slot < slots.count, UInt64(slots[slot].generation) == registration.token >> 32 else { return }
        slots[slot].handler = nil
        slots[slot].generation &+= 1
        freeSlots.append(slot)
    }

    private func handler(for token: UInt64) -> Handler? {
        let slot = Int(token & 0xffff_ffff) - 1
        guard slot >= 0, slot < slots.count, UInt64(slots[slot].generation) == token >> 32 else { return nil }
        return slots[slot].handler
    }

    /// Runs `action` on the loop after `delay`.
    @discardableResult
    func schedule(after delay: Duration, _ action: @escaping () -> Void) -> TimerID {
        timers.add(deadline: Self.now() + delay.nanoseconds, action)
    }

    /// Forgets a timer that has not fired.
    func cancel(_ timer: TimerID) { timers.cancel(timer) }

    /// Runs `work` after the handlers of the current batch.
    func later(_ work: @escaping () -> Void) { deferred.append(work) }

    /// Runs `work` on the loop's thread; callable from any thread.
    func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        wake.signal()
    }

    /// Makes `run` return after the current batch.
    func stop() { stopped = true }

    /// Runs until `stop()`.
    func run() throws(SystemError) {
        while !stopped {
            try runOnce(timeoutMilliseconds: -1)
        }
    }

    /// Waits for events once (at most until the next timer or `timeoutMilliseconds`) and handles them.
    func runOnce(timeoutMilliseconds: Int32) throws(SystemError) {
        var timeout = timeoutMilliseconds
        if !timers.isEmpty {
            let untilTimer = timers.timeoutMilliseconds(now: Self.now())
            if untilTimer >= 0 { timeout = timeout < 0 ? untilTimer : min(timeout, untilTimer) }
        }
        if !deferred.isEmpty { timeout = 0 }
        try epoll.wait(timeoutMilliseconds: timeout) { token, events in
            if token == 0 {
                wake.drain()
                let work = inbox.withLock { pending in
                    defer { pending.removeAll() }
                    return pending
                }
                for item in work { item() }
                return
            }
            handler(for: token)?(events)
        }
        runDeferred()
        if !timers.isEmpty {
            let now = Self.now()
            while let action = timers.takeDue(now: now) {
                action()
                runDeferred()
            }
        }
    }

    private func runDeferred() {
        while !deferred.isEmpty {
            let work = deferred
            deferred.removeAll()
            for item in work { item() }
        }
    }

    static func now() -> UInt64 { monotonicNanoseconds() }
}

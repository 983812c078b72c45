import DPUSystem
import Glibc
import Synchronization
import SystemPackage

/// Something registered with the reactor: told which epoll events arrived for its descriptor.
protocol ReactorSource: AnyObject {
    func handle(events: UInt32)
}

/// The event loop of udsproxyd: one OS thread waiting in epoll, with timers and work deferred to the end
/// of the current round. Every object of the proxy lives on this thread; other threads talk to it only
/// through `submit`, which queues a closure and wakes the loop through an eventfd.
///
/// One thread is plenty: the work per event is a read or write of a socket, and a single thread has no
/// locks on the data path. No call on this thread blocks (all descriptors are non-blocking), and nothing
/// polls: the loop sleeps in epoll_wait until a descriptor, a timer or `submit` wakes it.
final class Reactor: @unchecked Sendable {
    // Sendability: everything below except `inbox` and `wakeup` is touched only by the reactor thread
    // (`run`), after `init` returned on the thread that created it.

    static let input: UInt32 = 0x001  // EPOLLIN
    static let output: UInt32 = 0x004  // EPOLLOUT
    static let error: UInt32 = 0x008  // EPOLLERR
    static let hangUp: UInt32 = 0x010  // EPOLLHUP
    static let readHangUp: UInt32 = 0x2000  // EPOLLRDHUP
    static let edgeTriggered: UInt32 = 1 << 31  // EPOLLET
    /// What a connected socket or pipe registers for: everything, edge-triggered, so a registration never
    /// changes while the connection lives (no epoll_ctl on the data path).
    static let stream = input | output | readHangUp | edgeTriggered

    private let epoll: Epoll
    private let wakeup: EventCounter
    private let inbox = Mutex<[@Sendable () -> Void]>([])

    private var sources: [UInt64: ReactorSource] = [:]
    private var nextToken: UInt64 = 1
    private var deferred: [() -> Void] = []
    private var flushes: [() -> Void] = []
    private var timers = TimerQueue()
    private var running = true

    init() throws(SystemError) {
        epoll = try Epoll()
        do {
            wakeup = try EventCounter()
        } catch {
            epoll.close()
            throw error
        }
        try epoll.add(wakeup.fd, events: Reactor.input, data: 0)
    }

    // MARK: Registration (reactor thread)

    /// Registers `fd` for `events`; `source` is told when they happen. Returns the token to unregister with.
    func register(_ fd: FileDescriptor, events: UInt32, _ source: ReactorSource) throws(SystemError) -> UInt64 {
        let token = nextToken
        nextToken += 1
        try epoll.add(fd, events: events, data: token)
        sources[token] = source
        return token
    }

    func modify(_ fd: FileDescriptor, token: UInt64, events: UInt32) {
        do {
            try epoll.modify(fd, events: events, data: token)
        } catch {
            // Only a descriptor we closed by mistake can fail here: a bug, never the peer's doing.
            preconditionFailure("epoll_ctl(MOD) of a registered descriptor failed: \(error)")
        }
    }

    /// Forgets `token`. Call before closing the descriptor; events already collected for it are dropped.
    func unregister(_ fd: FileDescriptor, token: UInt64) {
        epoll.remove(fd)
        sources[token] = nil
    }

    // MARK: Work and timers (reactor thread)

    /// Runs `work` after the events of this round, before waiting again.
    func later(_ work: @escaping () -> Void) { deferred.append(work) }

    /// Runs `work` after all `later` work of this round: where links write what the round produced.
    func atEndOfRound(_ work: @escaping () -> Void) { flushes.append(work) }

    /// Runs `action` once after `delay`. The returned id cancels it.
    @discardableResult
    func schedule(after delay: Duration, _ action: @escaping () -> Void) -> TimerID {
        timers.add(deadline: Reactor.now() + delay.nanoseconds, action)
    }

    func cancel(_ timer: TimerID?) {
        if let timer { timers.cancel(timer) }
    }

    static func now() -> UInt64 { monotonicNanoseconds() }

    /// Ends `run` after the current round.
    func stop() { running = false }

    // MARK: Other threads

    /// Queues `work` to run on the reactor thread, from any thread.
    func submit(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        wakeup.signal()
    }

    // MARK: The loop

    /// Runs until `stop`; then closes the epoll and eventfd descriptors (registered sources must have
    /// been closed by their owners).
    func run() {
        while running {
            let timeout: Int32 = deferred.isEmpty && flushes.isEmpty ? timers.timeoutMilliseconds(now: Reactor.now()) : 0
            let ready: [(events: UInt32, data: UInt64)]
            do {
                ready = try epoll.wait(maximum: 128, timeoutMilliseconds: timeout, retryOnInterrupt: false)
            } catch where error.errno == .interrupted {
                ready = []
            } catch {
                preconditionFailure("epoll_wait failed: \(error)")
            }
            for (events, token) in ready {
                if token == 0 {
                    wakeup.drain()
                    let work = inbox.withLock { queue in
                        defer { queue.removeAll() }
                        return queue
                    }
                    for item in work { item() }
                    continue
                }
                // A source closed earlier in this round is gone from the table: its events are stale.
                sources[token]?.handle(events: events)
            }
            // Work deferred by deferred work runs in the next round, after new events: fairness.
            let work = deferred
            deferred.removeAll(keepingCapacity: true)
            for item in work { item() }
            let pending = flushes
            flushes.removeAll(keepingCapacity: true)
            for item in pending { item() }
            // One at a time: an action may add timers, or cancel one that is due too.
            let now = Reactor.now()
            while let action = timers.takeDue(now: now) { action() }
        }
        wakeup.close()
        epoll.close()
    }
}

// NIOCore has types of these names too; this module means swift-system's and DPUSystem's everywhere.
typealias FileDescriptor = SystemPackage.FileDescriptor
typealias SocketAddress = DPUSystem.SocketAddress

import CDPUSystem
import Glibc

// Plain OS threads and the lock + condition pair they wait on. For loops that block in system calls
// (a FUSE session, a file server's workers): Swift concurrency's cooperative threads must never block.

/// A thread of the OS (pthread), detached.
public struct OSThread: Sendable, Hashable {
    public let handle: pthread_t

    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new detached thread named `name` (at most 15 bytes are kept). The thread can be
    /// interrupted (`ThreadInterruption`) even when it was started from a thread that blocks signals, as
    /// Dispatch's worker threads (where async code runs) do. It runs at the process's nice value, not at
    /// the one Dispatch gives its worker for the task's priority (-2 and below), which it would otherwise
    /// inherit and pass on to every program it starts.
    @discardableResult
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> OSThread {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { argument in
            let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()
            cdpu_set_thread_name(start.name)
            // getpriority may return -1 as a value; errno tells.
            errno = 0
            let nice = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(getpid()))
            if errno == 0 { setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(cdpu_gettid()), nice) }
            Signals.unblock([ThreadInterruption.signal])
            start.body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw SystemError(.init(rawValue: result), "pthread_create", name)
        }
        pthread_detach(handle)
        return OSThread(handle: handle)
    }

    /// Runs `body`, which blocks, on a thread of its own and hands its result to the awaiting task: async
    /// code must not block one of Swift concurrency's few cooperative threads (two on a two-core machine,
    /// where every other task then waits).
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<T, Error>) in
            do {
                try start(name: name) { done.resume(with: Result { try body() }) }
            } catch {
                done.resume(throwing: error)
            }
        }
    }

    public static var current: OSThread { OSThread(handle: pthread_self()) }

    /// The kernel's id of the calling thread (gettid(2)).
    public static var currentID: pid_t { cdpu_gettid() }
}

/// Interrupting a thread blocked in a system call: the thread gets `signal`, whose handler does nothing
/// and is installed without SA_RESTART, so the call fails with EINTR. Calls made through the funnel with
/// `retryOnInterrupt: false` see it.
public enum ThreadInterruption {
    /// SIGURG: ignored by default, so a stray one harms no process that did not install the handler.
    public static let signal = SIGURG

    /// Installs the no-op handler (once per process; idempotent).
    public static func install() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(signal, &action, nil)
    }

    /// Sends the signal to `thread`.
    public static func interrupt(_ thread: OSThread) {
        pthread_kill(thread.handle, signal)
    }
}

/// A mutex and condition variable guarding `State`: for threads that wait until the state changes.
public final class ConditionLock<State>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Runs `body` with the lock held.
    public func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }

    /// Waits (lock held) until `ready` returns non-nil, then returns it; nil if `timeout` passed first.
    public func wait<R>(timeout: Duration? = nil, until ready: (inout State) -> R?) -> R? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var deadline = timespec()
        if let timeout {
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            let (seconds, attoseconds) = timeout.components
            var nanoseconds = Int(deadline.tv_nsec) + Int(attoseconds / 1_000_000_000)
            deadline.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
            nanoseconds %= 1_000_000_000
            deadline.tv_nsec = nanoseconds
        }
        while true {
            if let result = ready(&state) { return result }
            if timeout != nil {
                if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { return ready(&state) }
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
    }

    /// Wakes one waiter.
    public func signal() { pthread_cond_signal(condition) }
    /// Wakes every waiter.
    public func broadcast() { pthread_cond_broadcast(condition) }
}

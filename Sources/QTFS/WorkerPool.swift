import DPUSystem
import NIOCore

/// OS threads that run submitted jobs. `minimum` threads live for good; up to `maximum` are started when
/// every thread is busy and retire after `idle` without work. The engine has two: a fixed pool for fast
/// file operations and an elastic one for operations that may wait indefinitely (FIFOs, /proc/kmsg), so
/// that waiting never starves the rest.
final class WorkerPool: Sendable {
    typealias Job = @Sendable () -> Void

    private struct State {
        var queue = CircularBuffer<Job>()
        var threads = 0
        var idle = 0
        var stopping = false
    }

    let name: String
    let minimum: Int
    let maximum: Int
    let idle: Duration
    private let state = ConditionLock(State())

    init(name: String, minimum: Int, maximum: Int, idle: Duration = .seconds(10)) {
        precondition(maximum >= max(minimum, 1))
        self.name = name
        self.minimum = minimum
        self.maximum = maximum
        self.idle = idle
    }

    /// Queues `job`; starts a thread if none is idle and the pool may grow.
    func submit(_ job: @escaping Job) {
        let grow = state.withLock { state -> Bool in
            state.queue.append(job)
            if state.idle > 0 { return false }
            guard state.threads < maximum else { return false }
            state.threads += 1
            return true
        }
        if grow {
            do {
                try OSThread.start(name: name) { [self] in work() }
            } catch {
                state.withLock { $0.threads -= 1 }
            }
        } else {
            state.signal()
        }
    }

    private func work() {
        while true {
            var counted = false
            let job: Job?? = state.wait(timeout: idle) { state in
                if let job = state.queue.popFirst() {
                    if counted { state.idle -= 1 }
                    return .some(job)
                }
                if state.stopping {
                    if counted { state.idle -= 1 }
                    state.threads -= 1
                    return .some(nil)
                }
                if !counted {
                    state.idle += 1
                    counted = true
                }
                return nil
            }
            switch job {
            case .some(.some(let job)):
                job()
            case .some(.none):
                return
            case .none:
                // Idle for `idle`: leave if the pool is above its minimum. The queue is looked at under
                // the same lock as `submit` uses, so a job queued for this (idle) thread is never stranded.
                let leave = state.withLock { state -> Bool in
                    guard state.queue.isEmpty, state.threads > minimum else { return false }
                    state.idle -= 1
                    state.threads -= 1
                    return true
                }
                if leave { return }
                state.withLock { $0.idle -= 1 }
            }
        }
    }

    /// Lets idle threads end; queued jobs still run.
    func stop() {
        state.withLock { $0.stopping = true }
        state.broadcast()
    }
}

import Glibc

/// A timer's identity, for cancelling it.
public struct TimerID: Hashable, Sendable {
    fileprivate let value: UInt64
}

/// The timers of a single-threaded event loop (udsproxyd's reactor, rexec's loop), by deadline: a binary
/// heap of (deadline, id) and the actions by id. Cancelling drops the action at once (nothing it holds
/// outlives the cancel); its heap entry is skipped when it comes up. Adding and taking a due timer cost
/// O(log n), cancelling O(1).
public struct TimerQueue {
    private struct Entry {
        var deadline: UInt64
        var id: UInt64
    }
    private var heap: [Entry] = []
    private var actions: [UInt64: () -> Void] = [:]
    private var nextID: UInt64 = 1

    public init() {}

    /// Timers neither fired nor cancelled.
    public var count: Int { actions.count }
    public var isEmpty: Bool { actions.isEmpty }

    /// Runs `action` once `deadline` (`monotonicNanoseconds()`) has passed.
    public mutating func add(deadline: UInt64, _ action: @escaping () -> Void) -> TimerID {
        let id = nextID
        nextID += 1
        actions[id] = action
        heap.append(Entry(deadline: deadline, id: id))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].deadline < heap[parent].deadline else { break }
            heap.swapAt(child, parent)
            child = parent
        }
        return TimerID(value: id)
    }

    /// Forgets a timer; one that fired or was cancelled already is no error.
    public mutating func cancel(_ timer: TimerID) {
        actions[timer.value] = nil
    }

    /// Milliseconds until the next deadline (rounded up), -1 when there is none.
    public mutating func timeoutMilliseconds(now: UInt64) -> Int32 {
        dropCancelled()
        guard let first = heap.first else { return -1 }
        guard first.deadline > now else { return 0 }
        return Int32(clamping: (first.deadline - now + 999_999) / 1_000_000)
    }

    /// Takes the next timer whose deadline is at or before `now` and returns its action (run it after
    /// this returns: it may add or cancel timers, and a timer it cancels is not returned after it).
    public mutating func takeDue(now: UInt64) -> (() -> Void)? {
        dropCancelled()
        guard let first = heap.first, first.deadline <= now else { return nil }
        removeFirst()
        return actions.removeValue(forKey: first.id)
    }

    private mutating func dropCancelled() {
        while let first = heap.first, actions[first.id] == nil { removeFirst() }
    }

    private mutating func removeFirst() {
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && heap[left].deadline < heap[smallest].deadline { smallest = left }
            if right < heap.count && heap[right].deadline < heap[smallest].deadline { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: deadlines and timeouts.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

extension Duration {
    /// The duration in nanoseconds (0 for a negative one).
    public var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }
}

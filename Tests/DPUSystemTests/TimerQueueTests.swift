import DPUSystem
import Testing

/// The timers of rexec's and udsproxyd's event loops.
@Suite struct TimerQueueTests {
    /// Runs every timer due at `now`, as the loops do.
    private func runDue(_ queue: inout TimerQueue, now: UInt64) {
        while let action = queue.takeDue(now: now) { action() }
    }

    @Test func timersFireInDeadlineOrderAndCancelledOnesNever() {
        var queue = TimerQueue()
        var fired: [Int] = []
        _ = queue.add(deadline: 30) { fired.append(3) }
        let cancelled = queue.add(deadline: 10) { fired.append(1) }
        _ = queue.add(deadline: 20) { fired.append(2) }
        _ = queue.add(deadline: 5) { fired.append(0) }
        queue.cancel(cancelled)
        #expect(queue.count == 3)
        #expect(queue.timeoutMilliseconds(now: 0) == 1)
        runDue(&queue, now: 25)
        #expect(fired == [0, 2])
        #expect(queue.timeoutMilliseconds(now: 25) == 1)
        runDue(&queue, now: 100)
        #expect(fired == [0, 2, 3])
        #expect(queue.timeoutMilliseconds(now: 100) == -1)
        #expect(queue.isEmpty)
    }

    @Test func aDueTimerMayScheduleAnother() {
        var queue = TimerQueue()
        var count = 0
        _ = queue.add(deadline: 1) {
            count += 1
        }
        while let action = queue.takeDue(now: 1) {
            action()
            _ = queue.add(deadline: 2) { count += 10 }
        }
        runDue(&queue, now: 2)
        #expect(count == 11)
    }

    @Test func aTimerCancelledByAnotherDueOneDoesNotRun() {
        // A session's kill timer and flush timer can come due in the same turn of the loop; the first to
        // run ends the session and cancels the other, which must then not run on an ended session.
        var queue = TimerQueue()
        var fired: [String] = []
        var second: TimerID?
        _ = queue.add(deadline: 5) {
            fired.append("first")
            if let second { queue.cancel(second) }
        }
        second = queue.add(deadline: 6) { fired.append("second") }
        while let action = queue.takeDue(now: 10) { action() }
        #expect(fired == ["first"])
        #expect(queue.isEmpty)
    }

    @Test func aCancelledTimerNoLongerShortensTheWait() {
        var queue = TimerQueue()
        let soon = queue.add(deadline: 1_000_000) {}
        _ = queue.add(deadline: 50_000_000) {}
        queue.cancel(soon)
        #expect(queue.timeoutMilliseconds(now: 0) == 50)
    }
}

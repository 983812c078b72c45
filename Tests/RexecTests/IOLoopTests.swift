import DPUSystem
import Glibc
import Synchronization
import Testing

@testable import Rexec

@Suite struct IOLoopTests {
    /// rexec_server's loop thread takes SIGCHLD (one per program that exits or stops). A loop that waited
    /// its whole timeout anew after each signal would not run a due timer (a kill grace period, a
    /// handshake limit) for as long as programs kept ending faster than the timer's delay.
    @Test func aTimerFiresWhileSignalsKeepComing() throws {
        ThreadInterruption.install()
        let fired = Atomic(false)
        let loopEnded = Atomic(false)
        let ready = ConditionLock<OSThread?>(nil)
        _ = try OSThread.start(name: "ioloop-test") {
            guard let loop = try? IOLoop() else { return }
            loop.schedule(after: .milliseconds(300)) {
                fired.store(true, ordering: .sequentiallyConsistent)
                loop.stop()
            }
            ready.withLock { $0 = OSThread.current }
            ready.signal()
            try? loop.run()
            loopEnded.store(true, ordering: .sequentiallyConsistent)
        }
        let loopThread = ready.wait { $0 }!
        // A signal every 50 ms, for up to 4 s or until the loop has ended.
        var sent = 0
        while !loopEnded.load(ordering: .sequentiallyConsistent) && sent < 80 {
            ThreadInterruption.interrupt(loopThread)
            sent += 1
            usleep(50_000)
        }
        let firedWhileSignalled = fired.load(ordering: .sequentiallyConsistent)
        // Let a loop that is still waiting end, so the thread does not outlive the test (but do not wait
        // for ever on one whose timer never fires).
        for _ in 0..<1000 where !loopEnded.load(ordering: .sequentiallyConsistent) { usleep(10_000) }
        #expect(firedWhileSignalled, "the timer waited until the signals stopped (\(sent) sent)")
    }
}

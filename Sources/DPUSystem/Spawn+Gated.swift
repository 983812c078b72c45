import CDPUSystem
import Glibc
import SystemPackage

/// A child started with `Spawn.startGated`: it exists (its pid can be reported, its cgroup or affinity
/// set) but waits just before running the program until `release()`.
public struct GatedChild: Sendable {
    public let pid: pid_t
    /// Our end of the gate (write '1' to run the program).
    public let gate: FileDescriptor
    /// Our end of the report pipe: a set-up or execve failure arrives here; end of file means the
    /// program runs. Non-blocking, close-on-exec.
    public let report: FileDescriptor

    /// Lets the program run. The gate is closed afterwards.
    public func release() {
        var word: UInt8 = UInt8(ascii: "1")
        _ = Glibc.write(gate.rawValue, &word, 1)
        gate.closeQuietly()
    }

    /// Ends the child without running the program (it exits 125).
    public func veto() { gate.closeQuietly() }

    /// What the report pipe says now: nil while nothing is known yet, `.running` once the program was
    /// exec'd, `.failed` with the step and errno otherwise. The report fd is closed once an answer is in.
    public func outcome() -> GatedOutcome? {
        var error: Int32 = 0
        var step: UnsafePointer<CChar>? = nil
        let result = cdpu_spawn_report_read(report.rawValue, &error, &step)
        switch result {
        case 1:
            return .failed(SystemError(Errno(rawValue: error), step.map { cString($0) } ?? "spawn"))
        case 0:
            return .running
        default:
            if currentErrno == .wouldBlock { return nil }
            return .failed(SystemError(currentErrno, "read (spawn report)"))
        }
    }
}

public enum GatedOutcome: Sendable, Equatable {
    case running
    case failed(SystemError)
}

extension Spawn {
    /// Starts `request` behind a gate (see `GatedChild`). fork, not vfork: slower for a large parent, so
    /// only for callers that need the program's pid before it runs.
    public static func startGated(_ request: SpawnRequest) throws(SystemError) -> GatedChild {
        var pid: pid_t = 0
        var gate: Int32 = -1
        var report: Int32 = -1
        var step: UnsafePointer<CChar>? = nil
        let error = withAttributes(request) { attr in cdpu_spawn_gated(&attr, &pid, &gate, &report, &step) }
        if error != 0 {
            throw SystemError(Errno(rawValue: error), step.map { cString($0) } ?? "spawn", request.path)
        }
        let reportFD = FileDescriptor(rawValue: report)
        try? reportFD.setNonBlocking()
        return GatedChild(pid: pid, gate: FileDescriptor(rawValue: gate), report: reportFD)
    }
}

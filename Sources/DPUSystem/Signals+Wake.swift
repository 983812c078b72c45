import CDPUSystem
import Glibc
import SystemPackage

extension Signals {
    /// Makes `signal` write to `eventFD` (an `EventCounter`): a loop watching it learns of the signal, whatever
    /// the other threads of the process block. The handler only writes; the loop does the work.
    public static func wake(_ eventFD: EventCounter, on signal: Int32) throws(SystemError) {
        _ = try syscall("sigaction", Signals.name(of: signal)) { cdpu_wake_on_signal(signal, eventFD.fd.rawValue) }
    }
}

/// A child of ours that stopped or continued (`waitid(P_ALL, WSTOPPED|WCONTINUED|WNOHANG)`; exits are
/// not reported here and stay for their pidfd).
public enum ChildStateChange: Equatable, Sendable {
    case stopped(pid: pid_t, signal: Int32)
    case continued(pid: pid_t)

    /// The next pending change, or nil when there is none.
    public static func next() -> ChildStateChange? {
        var info = siginfo_t()
        let result = waitid(P_ALL, 0, &info, WSTOPPED | WCONTINUED | WNOHANG)
        guard result == 0 else { return nil }
        let pid = withUnsafeBytes(of: &info) { $0.load(fromByteOffset: 16, as: pid_t.self) }
        guard pid != 0 else { return nil }
        let status = withUnsafeBytes(of: &info) { $0.load(fromByteOffset: 24, as: Int32.self) }
        if info.si_code == Int32(CLD_CONTINUED) { return .continued(pid: pid) }
        return .stopped(pid: pid, signal: status)
    }
}

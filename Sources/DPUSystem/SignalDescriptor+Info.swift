import CDPUSystem
import Glibc
import SystemPackage

/// A signal as signalfd(2) reports it: the number, who sent it and how.
public struct SignalInfo: Equatable, Sendable {
    public var signal: Int32
    /// `si_code`: SI_USER for kill(2), SI_KERNEL for a terminal's keys (^C, ^Z), SI_QUEUE...
    public var code: Int32
    /// The sender's pid for kill(2)/sigqueue(3); 0 from the kernel.
    public var senderPID: pid_t

    public init(signal: Int32, code: Int32, senderPID: pid_t) {
        self.signal = signal
        self.code = code
        self.senderPID = senderPID
    }

    /// Sent to the whole foreground process group by the terminal (^C, ^\, ^Z) rather than to this
    /// process alone by kill(2).
    public var fromTerminal: Bool { code == SI_KERNEL }
}

extension SignalDescriptor {
    /// Reads the pending signals with their origin, oldest first; empty when none are pending.
    public func readInfo() throws(SystemError) -> [SignalInfo] {
        var result: [SignalInfo] = []
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        while true {
            let count = try withUnsafeMutableBytes(of: &info) { raw throws(SystemError) -> Int? in
                try fd.readSome(into: raw)
            }
            guard let count, count == size else { return result }
            result.append(SignalInfo(signal: Int32(info.ssi_signo), code: info.ssi_code, senderPID: pid_t(info.ssi_pid)))
        }
    }
}

extension Signals {
    /// Stops this process with `signal` (TSTP, TTIN, TTOU or STOP) the way the default action would, so
    /// that a parent's waitpid sees WIFSTOPPED with that signal; returns once it is continued. Used by a
    /// stand-in process whose remote program stopped.
    public static func stopWith(_ signal: Int32) {
        var previous = sigaction()
        var defaultAction = sigaction()
        defaultAction.__sigaction_handler.sa_handler = SIG_DFL
        sigaction(signal, &defaultAction, &previous)
        let old = unblock([signal])
        raise(signal)  // stops here until SIGCONT
        setMask(old)
        sigaction(signal, &previous, nil)
    }
}

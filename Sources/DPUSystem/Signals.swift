import CDPUSystem
import Glibc
import SystemPackage

/// Signal names and sets, and signalfd for loops that want signals as readable events.
public enum Signals {
    private static let names: [(Int32, String)] = [
        (SIGHUP, "HUP"), (SIGINT, "INT"), (SIGQUIT, "QUIT"), (SIGILL, "ILL"), (SIGTRAP, "TRAP"),
        (SIGABRT, "ABRT"), (SIGBUS, "BUS"), (SIGFPE, "FPE"), (SIGKILL, "KILL"), (SIGUSR1, "USR1"),
        (SIGSEGV, "SEGV"), (SIGUSR2, "USR2"), (SIGPIPE, "PIPE"), (SIGALRM, "ALRM"), (SIGTERM, "TERM"),
        (SIGCHLD, "CHLD"), (SIGCONT, "CONT"), (SIGSTOP, "STOP"), (SIGTSTP, "TSTP"), (SIGTTIN, "TTIN"),
        (SIGTTOU, "TTOU"), (SIGURG, "URG"), (SIGXCPU, "XCPU"), (SIGXFSZ, "XFSZ"), (SIGVTALRM, "VTALRM"),
        (SIGPROF, "PROF"), (SIGWINCH, "WINCH"), (SIGIO, "IO"), (SIGPWR, "PWR"), (SIGSYS, "SYS"),
    ]

    /// "TERM" for 15; "SIG34" style for signals without a name.
    public static func name(of signal: Int32) -> String {
        names.first { $0.0 == signal }?.1 ?? "SIG\(signal)"
    }

    /// Parses "TERM", "SIGTERM", "term" or "15".
    public static func number(named text: String) -> Int32? {
        if let value = Int32(text), value > 0, value < 65 { return value }
        var upper = text.uppercased()
        if upper.hasPrefix("SIG") { upper.removeFirst(3) }
        return names.first { $0.1 == upper }?.0
    }

    /// Blocks `signals` in the calling thread (and in threads it creates afterwards). Returns the old mask.
    @discardableResult
    public static func block(_ signals: [Int32]) -> sigset_t { changeMask(SIG_BLOCK, signals) }

    /// Unblocks `signals` in the calling thread. Returns the old mask.
    @discardableResult
    public static func unblock(_ signals: [Int32]) -> sigset_t { changeMask(SIG_UNBLOCK, signals) }

    private static func changeMask(_ how: Int32, _ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        var old = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(how, &set, &old)
        return old
    }

    /// Restores a mask returned by `block` or `unblock`.
    public static func setMask(_ mask: sigset_t) {
        var mask = mask
        pthread_sigmask(SIG_SETMASK, &mask, nil)
    }

    /// Sets `signal`'s disposition to ignored (SIGPIPE for a daemon: a write to a closed socket must be an
    /// EPIPE error, not death) or back to the default.
    public static func ignore(_ signal: Int32, _ ignored: Bool = true) {
        Glibc.signal(signal, ignored ? SIG_IGN : SIG_DFL)
    }

    /// Dies of `signal` the way the default action would, so that a parent's waitpid sees WIFSIGNALED.
    /// Used by a stand-in process that must reproduce the remote program's death.
    public static func dieOf(_ signal: Int32) -> Never {
        Glibc.signal(signal, SIG_DFL)
        unblock([signal])
        // Do not dump core on our side: the remote one already did (or chose not to).
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        raise(signal)
        // Signals whose default action is not to terminate (CHLD, WINCH, CONT...): report 128+n.
        exit(128 + signal)
    }
}

/// A signalfd(2): blocked signals become readable records. Close-on-exec and non-blocking.
public struct SignalDescriptor: Sendable {
    public let fd: FileDescriptor

    /// Creates a signalfd for `signals`. The caller must have blocked them (`Signals.block`) in every
    /// thread, or they are delivered the old way instead.
    public init(_ signals: [Int32]) throws(SystemError) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        fd = FileDescriptor(rawValue: try syscall("signalfd") {
            signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        })
    }

    /// Reads the pending signals (numbers), oldest first; empty when none are pending.
    public func read() throws(SystemError) -> [Int32] { try readInfo().map(\.signal) }

    public func close() { fd.closeQuietly() }
}

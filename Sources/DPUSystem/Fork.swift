import Glibc

/// `fork(2)` without exec, for the one case that wants a copy of the running process (the rexec client
/// leaving a stand-in behind). Only safe while the process has a single thread: a lock held by another
/// thread (malloc's, the Swift runtime's) would stay locked forever in the child. So this checks
/// `/proc/self/status` first and refuses otherwise.
public enum Fork {
    /// The number of threads of this process.
    public static func threadCount() -> Int? {
        guard let status = try? readTextFile("/proc/self/status", limit: 16384) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
            return line.dropFirst("Threads:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) }
        }
        return nil
    }

    /// Forks a single-threaded process: returns 0 in the child and the child's pid in the parent.
    /// Throws when `fork` fails, or (EBUSY) when more than one thread runs.
    public static func singleThreaded() throws(SystemError) -> pid_t {
        guard let threads = threadCount(), threads == 1 else {
            throw SystemError(.resourceBusy, "fork", "a process with \(threadCount().map(String.init) ?? "an unknown number of") threads")
        }
        return try syscall("fork") { Glibc.fork() }
    }
}

extension ProcessHandle {
    /// Whether the process has not exited yet (its pidfd is not readable).
    public var isRunning: Bool {
        var entry = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
        return ((try? poll(&entry, timeoutMilliseconds: 0, retryOnInterrupt: true)) ?? 1) == 0
    }
}

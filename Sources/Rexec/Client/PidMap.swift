import DPUSystem
import Glibc
import SystemPackage

/// Reading the map `PidFile` writes: which local rexec client stands in for which remote process. Other
/// tools on the client's machine use it (qtfs's proc mode shows the remote process at the client's pid,
/// and translates the client's pid written into a host cgroup).
public enum RexecPidMap {
    /// The remote pid that the live rexec client `pid` stands in for: the contents of `directory/<pid>`,
    /// provided that file holds a pid and its lock is held (a client that died leaves a file nobody
    /// locks). nil otherwise, and for a client that has not written its file yet.
    public static func remotePID(of pid: pid_t, directory: String = RexecDefaults.pidDirectory) -> pid_t? {
        // O_NONBLOCK: whatever sits at that name, the reader (a FUSE worker) must not wait for it.
        guard pid > 0, let fd = try? FileDescriptor.openPath("\(directory)/\(pid)", flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
        else { return nil }
        defer { fd.closeQuietly() }
        var buffer = [UInt8](repeating: 0, count: 16)
        guard let count = try? buffer.withUnsafeMutableBytes({ try fd.read(at: 0, into: $0) }),
            let remote = parse(buffer[..<count])
        else { return nil }
        // Getting the lock (shared: it only tests) means that no client holds it: the map is stale.
        guard (try? fd.lock(exclusive: false, nonBlocking: true)) == false else { return nil }
        return remote
    }

    /// Decimal digits (the client writes no newline; one is tolerated), a positive pid_t.
    static func parse(_ text: ArraySlice<UInt8>) -> pid_t? {
        var digits = text
        if digits.last == UInt8(ascii: "\n") { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let value = Int64(String(decoding: digits, as: UTF8.self)), value > 0, value <= Int64(Int32.max)
        else { return nil }
        return pid_t(value)
    }
}

import DPUSystem
import Glibc
import SystemPackage

/// Finding the daemon a program left behind (`qemu -daemonize -pidfile PATH`) from the pid file the
/// client named, and deciding whether the server may follow it.
///
/// Following means signalling: the client's SIGNAL frames go to that process, and when the client goes
/// away the server sends it SIGTERM and SIGKILL. The path and the program are the client's choice, so the
/// server (root) must not be talked into signalling a process it did not start: a client could name
/// `/run/sshd.pid` and run `/bin/true`. The daemon of a double fork (QEMU's) has been reparented by the
/// time its program exits, so the parent chain proves nothing; instead the process must
/// - have started no earlier than the program did (`/proc/PID/stat` start time: no process that existed
///   before the request, whatever file names it),
/// - run as the program's user (the server's),
/// - not be the server itself, pid 1, or a program or daemon of another session.
/// The checks are made through a pidfd opened first, and the pidfd is checked to be still running after
/// them, so they cannot be about a recycled pid. What is left is a process started during the program's
/// life whose number the program wrote into the file: something a whitelisted program can do anyway.
enum DaemonPidFile {
    /// At most this many bytes are read ("4194304\n" is 8).
    static let readLimit = 32

    enum Outcome {
        case follow(ProcessHandle)
        /// Why not (one line for the client; the file's content is never echoed).
        case refused(String)
    }

    /// Parses a pid file's content: decimal digits, optionally followed by whitespace (QEMU writes
    /// "PID\n"). Nil for anything else, 0, or more digits than a pid has.
    static func parse(_ bytes: some Collection<UInt8>) -> pid_t? {
        let digits = bytes.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        let rest = bytes.dropFirst(digits.count)
        guard !digits.isEmpty, digits.count <= 10,
            rest.allSatisfy({ [UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\t"), UInt8(ascii: "\r")].contains($0) }),
            let value = Int64(String(decoding: digits, as: UTF8.self)), value > 0, value <= Int64(Int32.max)
        else { return nil }
        return pid_t(value)
    }

    /// Reads at most `readLimit` bytes of a regular file, without following a final symbolic link and
    /// without blocking on a FIFO.
    static func read(_ path: String) throws(SystemError) -> [UInt8]? {
        let fd = try FileDescriptor.openPath(path, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        defer { fd.closeQuietly() }
        guard try fd.descriptorStatus().kind == .regularFile else { return nil }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readLimit + 1, alignment: 1)
        defer { buffer.deallocate() }
        var count = 0
        while count < buffer.count {
            let got = try fd.readSome(into: UnsafeMutableRawBufferPointer(rebasing: buffer[count...])) ?? 0
            if got == 0 { break }
            count += got
        }
        return count > readLimit ? nil : Array(buffer[..<count])
    }

    /// The process start time in clock ticks since boot and the real uid, from /proc.
    static func identity(_ pid: pid_t) -> (start: UInt64, uid: uid_t)? {
        guard let stat = try? readTextFile("/proc/\(pid)/stat", limit: 4096),
            let status = try? readTextFile("/proc/\(pid)/status", limit: 16384),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state is field 3, starttime field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("Uid:") {
            if let real = line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).first, let uid = uid_t(real) {
                return (start, uid)
            }
        }
        return nil
    }

    /// Finds and checks the daemon `path` names for a program that started at `programStart` (ticks).
    /// `taken` says whether another session owns a pid.
    static func follow(path: String, programStart: UInt64, taken: (pid_t) -> Bool) -> Outcome {
        let bytes: [UInt8]?
        do { bytes = try read(path) } catch {
            return .refused("the server cannot read the daemon's pid file \(path) (\(error.errno))")
        }
        guard let bytes, let pid = parse(bytes) else {
            return .refused("the daemon's pid file \(path) does not hold a pid")
        }
        guard pid != 1, pid != getpid(), !taken(pid) else {
            return .refused("the daemon's pid file \(path) names pid \(pid), which is not the program's daemon")
        }
        let handle: ProcessHandle
        do { handle = try ProcessHandle(pid: pid) } catch {
            return .refused("the daemon's pid file \(path) names pid \(pid), which is not running (\(error.errno))")
        }
        guard let identity = identity(pid), identity.start >= programStart, identity.uid == getuid(), handle.isRunning else {
            handle.close()
            return .refused("the daemon's pid file \(path) names pid \(pid), which was not started by the program")
        }
        return .follow(handle)
    }

    /// The start time of a process (ticks since boot), for `follow`.
    static func startTime(_ pid: pid_t) -> UInt64? { identity(pid)?.start }
}

import Glibc
import SystemPackage

/// Runs helper programs (mount.qtfs, qemu-img, qemu-nbd) to completion, with a time limit, the way a
/// shell would: same environment, stdin from /dev/null, stdout where asked, stderr shared so that the
/// helper's own message reaches the operator.
public enum ChildProcess {
    /// The helper did not finish in time and was killed.
    public struct Timeout: Error, Sendable, CustomStringConvertible {
        public var program: String
        public var seconds: Int32
        public var description: String { "\(program) did not finish within \(seconds) s and was killed" }
    }

    /// This process's environment, as `NAME=value` strings.
    public static var currentEnvironment: [String] {
        var result: [String] = []
        var pointer = environ
        while let entry = pointer.pointee {
            result.append(String(cString: entry))
            pointer += 1
        }
        return result
    }

    /// Runs `path` with `arguments` (argv[0] included) and waits up to `timeoutSeconds` for it to exit;
    /// past that it is killed (SIGKILL) and `Timeout` is thrown. `output` becomes its stdout (default
    /// /dev/null); stderr is ours.
    public static func run(
        _ path: String, arguments: [String], output: FileDescriptor? = nil, timeoutSeconds: Int32
    ) throws -> ExitStatus {
        let null = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        defer { null.closeQuietly() }
        let pid = try Spawn.start(SpawnRequest(
            path: path, arguments: arguments, environment: currentEnvironment,
            fileDescriptors: [0: null, 1: output ?? null, 2: FileDescriptor.standardError]))
        let handle = try ProcessHandle(pid: pid)
        defer { handle.close() }
        var fds = [pollfd(fd: handle.fd.rawValue, events: Int16(POLLIN), revents: 0)]
        let deadline = timeoutSeconds * 1000
        var waited: Int32 = 0
        while waited < deadline {
            let slice: Int32 = min(500, deadline - waited)
            if try poll(&fds, timeoutMilliseconds: slice, retryOnInterrupt: true) > 0 { break }
            waited += slice
        }
        if let status = try handle.wait(nonBlocking: true) { return status }
        try handle.signal(SIGKILL)
        _ = try handle.wait()
        throw Timeout(program: arguments.first ?? path, seconds: timeoutSeconds)
    }

    /// Runs a program and returns its stdout (at most `limit` bytes kept), for short outputs such as
    /// `qemu-img info`.
    public static func capture(
        _ path: String, arguments: [String], timeoutSeconds: Int32, limit: Int = 1 << 20
    ) throws -> (ExitStatus, String) {
        // A regular temporary file rather than a pipe: the child cannot block on a full pipe while we wait.
        // O_TMPFILE: a file with no name, gone when closed.
        let file = try FileDescriptor.openPath("/tmp", flags: 0o20200000 | O_RDWR, mode: 0o600)
        defer { file.closeQuietly() }
        let status = try run(path, arguments: arguments, output: file, timeoutSeconds: timeoutSeconds)
        var bytes = [UInt8](repeating: 0, count: limit)
        var count = 0
        while count < limit {
            let got = try bytes.withUnsafeMutableBytes { (raw) throws(SystemError) -> Int in
                try file.read(at: Int64(count), into: UnsafeMutableRawBufferPointer(rebasing: raw[count...]))
            }
            if got == 0 { break }
            count += got
        }
        return (status, String(decoding: bytes[..<count], as: UTF8.self))
    }
}

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
    /// /dev/null), `errorOutput` its stderr (default ours).
    public static func run(
        _ path: String, arguments: [String], output: FileDescriptor? = nil, errorOutput: FileDescriptor? = nil,
        timeoutSeconds: Int32
    ) throws -> ExitStatus {
        let null = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        defer { null.closeQuietly() }
        let pid = try Spawn.start(SpawnRequest(
            path: path, arguments: arguments, environment: currentEnvironment,
            fileDescriptors: [0: null, 1: output ?? null, 2: errorOutput ?? FileDescriptor.standardError]))
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

    /// A file with no name in /tmp (O_TMPFILE), gone when closed: somewhere for a child's output that
    /// cannot fill up and block it the way a pipe can.
    public static func anonymousFile() throws(SystemError) -> FileDescriptor {
        try FileDescriptor.openPath("/tmp", flags: 0o20200000 | O_RDWR, mode: 0o600)
    }

    /// What a child wrote into `file` (at most `limit` bytes, from the start).
    public static func contents(of file: FileDescriptor, limit: Int = 1 << 20) throws(SystemError) -> String {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: limit, alignment: 8)
        defer { buffer.deallocate() }
        var count = 0
        while count < limit {
            let got = try file.read(at: Int64(count), into: UnsafeMutableRawBufferPointer(rebasing: buffer[count...]))
            if got == 0 { break }
            count += got
        }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }
}

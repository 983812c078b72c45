import CDPUSystem
import Glibc
import SystemPackage

/// How a process ended.
public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32, coreDumped: Bool)

    /// The shell's view: the exit code, or 128 + signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal, _): 128 + signal
        }
    }

    /// Decodes a `waitpid` status word.
    public init(waitStatus status: Int32) {
        let signal = status & 0x7f
        if signal == 0 {
            self = .exited((status >> 8) & 0xff)
        } else {
            self = .signaled(signal, coreDumped: status & 0x80 != 0)
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal, let core):
            "killed by signal \(signal) (\(Signals.name(of: signal)))" + (core ? ", core dumped" : "")
        }
    }
}

/// A process file descriptor (`pidfd_open(2)`): signals and waits that cannot hit a recycled pid.
public struct ProcessHandle: Sendable {
    public let pid: pid_t
    public let fd: FileDescriptor

    /// `pidfd_open(2)` (close-on-exec by definition).
    public init(pid: pid_t) throws(SystemError) {
        self.pid = pid
        self.fd = FileDescriptor(rawValue: try syscall("pidfd_open", String(pid)) { cdpu_pidfd_open(pid, 0) })
    }

    /// `pidfd_send_signal(2)`. ESRCH (already exited) is not an error: there is nobody left to signal.
    public func signal(_ signal: Int32) throws(SystemError) {
        do throws(SystemError) {
            _ = try syscall("pidfd_send_signal", String(pid)) { cdpu_pidfd_send_signal(fd.rawValue, signal, 0) }
        } catch where error.errno == .noSuchProcess {}
    }

    /// Sends `signal` to the process group this process leads (`kill(-pid)`). Safe from pid reuse only
    /// while the leader is unreaped, which holds for our children until `wait` returns.
    public func signalGroup(_ signal: Int32) throws(SystemError) {
        do throws(SystemError) {
            _ = try syscall("kill", String(-pid)) { kill(-pid, signal) }
        } catch where error.errno == .noSuchProcess {}
    }

    /// Reaps the process if it has exited. Returns nil if it is still running (`nonBlocking`), else waits.
    public func wait(nonBlocking: Bool = false) throws(SystemError) -> ExitStatus? {
        var info = siginfo_t()
        // waitid(P_PIDFD, ...): P_PIDFD = 3.
        let options = WEXITED | (nonBlocking ? WNOHANG : 0)
        _ = try syscall("waitid", String(pid)) { waitid(idtype_t(rawValue: 3), id_t(fd.rawValue), &info, options) }
        let childPid = withUnsafeBytes(of: &info) { $0.load(fromByteOffset: 16, as: pid_t.self) }
        if childPid == 0 { return nil }  // WNOHANG and still running
        let status = withUnsafeBytes(of: &info) { $0.load(fromByteOffset: 24, as: Int32.self) }
        switch info.si_code {
        case Int32(CLD_EXITED): return .exited(status)
        case Int32(CLD_DUMPED): return .signaled(status, coreDumped: true)
        default: return .signaled(status, coreDumped: false)
        }
    }

    public func close() { fd.closeQuietly() }
}

/// What to start and with what: the complete environment of a child process.
///
/// The path, argv, environment and working directory are kept as bytes: a remote caller's arguments
/// need not be UTF-8, and they are passed on exactly. The `String` views are for callers that build
/// requests from text.
public struct SpawnRequest: Sendable {
    /// Path of the program (no PATH search here; see `Spawn.resolve`).
    public var pathBytes: [UInt8]
    public var argumentBytes: [[UInt8]]
    public var environmentBytes: [[UInt8]]
    public var workingDirectoryBytes: [UInt8]?
    public var umask: mode_t?
    /// The child's fd table: child number -> our fd. Every other fd is closed in the child.
    public var fileDescriptors: [Int32: FileDescriptor]
    public var newSession: Bool
    public var newProcessGroup: Bool
    /// The child fd to make the controlling terminal (requires `newSession`).
    public var controllingTerminal: Int32?
    /// Signal the child gets when the spawning thread exits (PR_SET_PDEATHSIG).
    public var parentDeathSignal: Int32?

    public var path: String {
        get { String(decoding: pathBytes, as: UTF8.self) }
        set { pathBytes = Array(newValue.utf8) }
    }
    public var arguments: [String] {
        get { argumentBytes.map { String(decoding: $0, as: UTF8.self) } }
        set { argumentBytes = newValue.map { Array($0.utf8) } }
    }
    public var environment: [String] {
        get { environmentBytes.map { String(decoding: $0, as: UTF8.self) } }
        set { environmentBytes = newValue.map { Array($0.utf8) } }
    }
    public var workingDirectory: String? {
        get { workingDirectoryBytes.map { String(decoding: $0, as: UTF8.self) } }
        set { workingDirectoryBytes = newValue.map { Array($0.utf8) } }
    }

    public init(
        path: String, arguments: [String], environment: [String], workingDirectory: String? = nil,
        umask: mode_t? = nil, fileDescriptors: [Int32: FileDescriptor] = [:], newSession: Bool = false,
        newProcessGroup: Bool = false, controllingTerminal: Int32? = nil, parentDeathSignal: Int32? = nil
    ) {
        self.init(
            pathBytes: Array(path.utf8), argumentBytes: arguments.map { Array($0.utf8) },
            environmentBytes: environment.map { Array($0.utf8) }, workingDirectoryBytes: workingDirectory.map { Array($0.utf8) },
            umask: umask, fileDescriptors: fileDescriptors, newSession: newSession, newProcessGroup: newProcessGroup,
            controllingTerminal: controllingTerminal, parentDeathSignal: parentDeathSignal)
    }

    public init(
        pathBytes: [UInt8], argumentBytes: [[UInt8]], environmentBytes: [[UInt8]], workingDirectoryBytes: [UInt8]? = nil,
        umask: mode_t? = nil, fileDescriptors: [Int32: FileDescriptor] = [:], newSession: Bool = false,
        newProcessGroup: Bool = false, controllingTerminal: Int32? = nil, parentDeathSignal: Int32? = nil
    ) {
        self.pathBytes = pathBytes
        self.argumentBytes = argumentBytes
        self.environmentBytes = environmentBytes
        self.workingDirectoryBytes = workingDirectoryBytes
        self.umask = umask
        self.fileDescriptors = fileDescriptors
        self.newSession = newSession
        self.newProcessGroup = newProcessGroup
        self.controllingTerminal = controllingTerminal
        self.parentDeathSignal = parentDeathSignal
    }
}

public enum Spawn {
    /// Starts `request`. Failures before the program runs (chdir, a missing program, a bad fd) are thrown
    /// with the step that failed and the errno, never reported as an exit status.
    public static func start(_ request: SpawnRequest) throws(SystemError) -> pid_t {
        var pid: pid_t = 0
        var step: UnsafePointer<CChar>? = nil
        let error = withAttributes(request) { attr in cdpu_spawn(&attr, &pid, &step) }
        if error != 0 {
            let operation = step.map { cString($0) } ?? "spawn"
            throw SystemError(Errno(rawValue: error), operation, request.path)
        }
        return pid
    }

    /// Calls `body` with the C spawn attributes for `request` (valid only during the call).
    static func withAttributes(_ request: SpawnRequest, _ body: (inout cdpu_spawn_attr) -> Int32) -> Int32 {
        let mappings = request.fileDescriptors.sorted { $0.key < $1.key }.map {
            cdpu_fd_mapping(child_fd: $0.key, parent_fd: $0.value.rawValue)
        }
        return withCStrings(request.argumentBytes) { argv in
            withCStrings(request.environmentBytes) { envp in
                mappings.withUnsafeBufferPointer { fds in
                    withOptionalCString(request.workingDirectoryBytes) { cwd in
                        var attr = cdpu_spawn_attr(
                            path: nil, argv: argv, envp: envp, cwd: cwd,
                            umask: request.umask.map { Int32($0) } ?? -1,
                            fds: fds.baseAddress, fd_count: fds.count,
                            new_session: request.newSession ? 1 : 0,
                            new_process_group: request.newProcessGroup ? 1 : 0,
                            controlling_tty_fd: request.controllingTerminal ?? -1,
                            parent_death_signal: request.parentDeathSignal ?? 0, signal_mask: nil)
                        return withOptionalCString(request.pathBytes) { path in
                            attr.path = path
                            return body(&attr)
                        }
                    }
                }
            }
        }
    }

    /// Finds `program` the way execvp(3) does: a name with a slash is used as is, otherwise each `PATH`
    /// entry is tried. Returns nil if nothing executable was found.
    public static func resolve(_ program: String, path: String?) -> String? {
        if program.contains("/") { return program }
        let directories = (path ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .split(separator: ":", omittingEmptySubsequences: false)
        for directory in directories {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + program
            var info = stat()
            if stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }
}

/// Calls `body` with a NUL-terminated copy of `bytes` (nil stays nil).
private func withOptionalCString<R>(_ bytes: [UInt8]?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return (bytes + [0]).withUnsafeBufferPointer { buffer in
        buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress) }
    }
}

/// Calls `body` with a NULL-terminated `char *const *` made from `strings` (byte strings without NULs).
/// One block holds every string (a program's environment is dozens of them, on every start).
func withCStrings<R>(_ strings: [[UInt8]], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var total = 0
    for bytes in strings { total += bytes.count + 1 }
    let block = UnsafeMutablePointer<CChar>.allocate(capacity: max(total, 1))
    defer { block.deallocate() }
    let pointers = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: strings.count + 1)
    defer { pointers.deallocate() }
    var next = block
    for (index, bytes) in strings.enumerated() {
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { UnsafeMutableRawPointer(next).copyMemory(from: base, byteCount: raw.count) }
        }
        next[bytes.count] = 0
        pointers[index] = next
        next += bytes.count + 1
    }
    pointers[strings.count] = nil
    return body(pointers)
}

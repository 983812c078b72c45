import DPUSystem
import DPUWire
import Glibc
import SystemPackage

/// Starting a program for a client: the whitelist, the program's path, reopening files by path, and the
/// spawn itself (own session and process group, the fd map, the client's environment, cwd and umask).
/// Shared by the native protocol and the original's.
enum Launcher {
    struct Request {
        var program: [UInt8]
        var arguments: [[UInt8]]
        var environment: [[UInt8]]
        var workingDirectory: [UInt8]?
        var umask: mode_t?
        /// The program's fd table (our fds, placed at the keys).
        var descriptors: [Int32: FileDescriptor]
        var controllingTerminal: Int32?
        var gated: Bool
    }

    struct Started {
        var process: ProcessHandle
        /// Set for a gated start until the gate is opened or closed.
        var gate: GatedChild?
    }

    /// Checks `program` against the whitelist and finds it: a name with a slash is used as is, a bare
    /// name is looked up in the server's own PATH (never the client's: the client chooses the
    /// environment, not which binary a whitelisted name means).
    static func resolve(_ program: [UInt8], whitelist: Whitelist) throws(RexecFailure) -> [UInt8] {
        let name = String(decoding: program, as: UTF8.self)
        guard whitelist.allows(program) else {
            if !whitelist.exists {
                throw RexecFailure(.notAllowed, "not allowed: the server has no whitelist (\(whitelist.path)), so it runs nothing")
            }
            throw RexecFailure(.notAllowed, "not allowed by the server's whitelist (\(whitelist.path))")
        }
        if program.contains(UInt8(ascii: "/")) { return program }
        guard let path = Spawn.resolve(name, path: nil) else {
            throw RexecFailure(.notFound, errno: UInt32(ENOENT), "not found in the server's PATH")
        }
        return Array(path.utf8)
    }

    static func start(_ request: Request, path: [UInt8]) throws(RexecFailure) -> Started {
        let spawn = SpawnRequest(
            pathBytes: path, argumentBytes: request.arguments, environmentBytes: request.environment,
            workingDirectoryBytes: request.workingDirectory, umask: request.umask, fileDescriptors: request.descriptors,
            newSession: true, controllingTerminal: request.controllingTerminal)
        let pid: pid_t
        var gate: GatedChild?
        do {
            if request.gated {
                let child = try Spawn.startGated(spawn)
                pid = child.pid
                gate = child
            } else {
                pid = try Spawn.start(spawn)
            }
        } catch {
            throw failure(error, request)
        }
        do {
            return Started(process: try ProcessHandle(pid: pid), gate: gate)
        } catch {
            // Cannot watch it: do not leave it running unobserved.
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw RexecFailure(.internalError, errno: UInt32(error.errno.rawValue), "cannot watch the started program: \(error)")
        }
    }

    /// The client-facing reason for a failed start.
    static func failure(_ error: SystemError, _ request: Request) -> RexecFailure {
        let code = UInt32(error.errno.rawValue)
        switch (error.operation, error.errno) {
        case ("execve", .noSuchFileOrDirectory), ("execve", .notDirectory):
            return RexecFailure(.notFound, errno: code, "not found on the server (\(error.errno))")
        case ("execve", _) where [EACCES, ENOEXEC, EISDIR, EPERM, ETXTBSY, E2BIG, ELOOP].contains(error.errno.rawValue):
            return RexecFailure(.notExecutable, errno: code, "cannot be executed on the server: \(error.errno)")
        case ("chdir", _):
            let directory = request.workingDirectory.map { String(decoding: $0, as: UTF8.self) } ?? "?"
            return RexecFailure(
                .badRequest, errno: code,
                "the working directory \(directory) is not usable on the server (\(error.errno)); run from a shared directory or give one with --cwd")
        case (_, .tooManyOpenFiles), (_, .resourceTemporarilyUnavailable), (_, .noMemory):
            return RexecFailure(.busy, errno: code, "the server is out of resources: \(error)")
        default:
            return RexecFailure(.internalError, errno: code, "the server could not start it: \(error)")
        }
    }

    /// Reopens a file the client has open, by path, with its status flags (creation flags are not among
    /// them) and offset. Returns nil and a note when that is not possible here.
    static func reopen(path: [UInt8], flags: Int32, offset: Int64, target: Int32) -> (FileDescriptor?, String?) {
        do {
            return (try open(path: path, flags: flags, offset: offset), nil)
        } catch {
            return (nil, "fd \(target) (\(String(decoding: path, as: UTF8.self))) is not carried: the server cannot open it (\(error.errno)); the program runs without it")
        }
    }

    /// Opens a file the client has open (at exec or passed on a carried socket) by path, with its status
    /// flags and offset. A regular file or the null device only (what the client sends by path): the path
    /// is looked at first without opening it (O_PATH), since opening a FIFO there would wait for a peer,
    /// and a device may act on being opened, in the server's one event loop.
    static func open(path: [UInt8], flags: Int32, offset: Int64) throws(SystemError) -> FileDescriptor {
        let name = String(decoding: path, as: UTF8.self)
        let allowed = flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC) | O_NOCTTY
        // Every program's stdio that is /dev/null on the client comes this way: opened as it is.
        if name == "/dev/null" { return try FileDescriptor.openPath(name, flags: allowed) }
        let node = try FileDescriptor.openPath(name, flags: O_PATH)
        defer { node.closeQuietly() }
        let status = try node.descriptorStatus()
        guard status.kind == .regularFile || status.isNullDevice else {
            throw SystemError(.noSuchAddressOrDevice, "open (neither a regular file nor the null device)", name)
        }
        let fd = try node.reopen(flags: allowed)
        if offset > 0, status.kind == .regularFile { try? fd.seek(to: offset) }
        return fd
    }
}

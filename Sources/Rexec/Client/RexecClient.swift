import DPUConfig
import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// The client: runs a program on the peer and stands in for it here. Single-threaded (one epoll loop over
/// the connection, the carried fds and a signalfd), so its start-up costs no thread pool.
public enum RexecClient {
    /// Signals forwarded to the remote program (blocked here and read from a signalfd).
    static let forwarded: [Int32] = [
        SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGALRM,
        SIGPWR,
    ]
    /// Of those, the ones whose default action ends a process.
    static let terminating: Set<Int32> = [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGPWR]

    /// How long a connection attempt may take.
    static let connectTimeoutMilliseconds: Int32 = 10_000

    /// Runs `options.command` on the peer. Returns how this process must end to look like the remote
    /// program did; throws for rexec's own failures. `warn` prints one line (the caller's stderr).
    public static func run(_ options: RexecClientOptions, warn: @escaping (String) -> Void) throws(RexecError) -> RexecOutcome {
        guard let program = options.command.first, !program.isEmpty else {
            throw RexecError(.usage, "missing the program to run")
        }
        let gate = try StartGate.fromEnvironment()
        var excluded = options.excludedDescriptors
        if let gate { excluded += [gate.read.rawValue, gate.write.rawValue] }
        var plan = try InheritedDescriptors.plan(tty: options.tty, excluded: excluded, excludeAll: options.excludeAllDescriptors)
        // From here on, every way out (a bad key, an unreachable server) gives shared descriptions back
        // their flags.
        defer { for (fd, flags) in plan.restoreFlags { try? fd.setStatusFlags(flags) } }
        for note in plan.notes { warn(note) }

        // Signals become events from here on; SIGPIPE becomes EPIPE on the write that caused it.
        Signals.block(forwarded)
        Signals.ignore(SIGPIPE)
        let signals: SignalDescriptor
        do { signals = try SignalDescriptor(forwarded) } catch { throw RexecError(.local, "signalfd: \(error)") }

        let endpoint = try options.endpoint()
        let key: PreSharedKey?
        do { key = try PeerAuthentication.clientKey(for: endpoint, keyPath: options.keyPath) } catch {
            throw RexecError(.authentication, "\(error)")
        }
        let directory: [UInt8]
        if let given = options.workingDirectory { directory = given } else { directory = try workingDirectory() }
        if let given = options.daemonPidFile, given.isEmpty || given.contains(0) {
            throw RexecError(.usage, "--daemon-pidfile: expected a path")
        }
        // The same path on both sides (qtfs): made absolute against the program's working directory.
        let daemonPidFile = options.daemonPidFile.map { $0.first == UInt8(ascii: "/") ? $0 : directory + [UInt8(ascii: "/")] + $0 }
        let request = RexecExecRequest(
            program: program, arguments: options.command, environment: environment(options),
            workingDirectory: directory, umask: UInt32(currentUmask()),
            gated: gate != nil, terminal: terminalRequest(plan.terminal), descriptors: plan.descriptors,
            daemonPidFile: daemonPidFile)
        var exec = ByteBuffer()
        let execFrame = RexecMessage.exec(request).frame
        guard execFrame.payload.readableBytes <= Frame.maximumPayload else {
            throw RexecError(
                .notExecutable,
                "the arguments and environment take \(execFrame.payload.readableBytes) bytes; at most \(Frame.maximumPayload) can be sent (leave variables out with -u NAME)")
        }
        execFrame.encode(into: &exec)

        let connection: FileDescriptor
        switch try Connector.connect(endpoint, signals: signals, timeoutMilliseconds: connectTimeoutMilliseconds) {
        case .connected(let fd): connection = fd
        case .signaled(let signal): return .signal(signal)
        }
        let leftover: ByteBuffer
        let capabilities: UInt64
        switch try Connector.handshake(connection, endpoint: endpoint, key: key, exec: exec, signals: signals) {
        case .opened(let bytes, let both):
            leftover = bytes
            capabilities = both
        case .signaled(let signal):
            connection.closeQuietly()
            return .signal(signal)
        }
        let session: ClientSession
        do {
            session = try ClientSession(
                connection: connection, leftover: leftover, capabilities: capabilities, endpoint: endpoint, plan: plan, signals: signals,
                gate: gate, program: String(decoding: program, as: UTF8.self), daemonPidFile: daemonPidFile, warn: warn)
        } catch {
            throw RexecError(.local, "\(error)")
        }
        plan.streams = []
        return try session.run()
    }

    /// Our environment, edited as the options say. rexec's own variables (the address, the start gate's
    /// fds) are not the program's and are left out.
    static func environment(_ options: RexecClientOptions) -> [[UInt8]] {
        var entries: [[UInt8]] = []
        if !options.clearEnvironment, let environ = Glibc.environ as UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? {
            var index = 0
            while let entry = environ[index] {
                entries.append(Array(UnsafeRawBufferPointer(start: entry, count: strlen(entry))))
                index += 1
            }
        }
        func name(_ entry: [UInt8]) -> ArraySlice<UInt8> { entry.prefix { $0 != UInt8(ascii: "=") } }
        let own: [[UInt8]] = [Array("CMD_NET_ADDR".utf8), Array("REXEC_HANDSHAKE_RD".utf8), Array("REXEC_HANDSHAKE_WR".utf8)]
        entries.removeAll { entry in !entry.contains(UInt8(ascii: "=")) || own.contains { $0[...] == name(entry) } }
        for edit in options.environmentEdits {
            switch edit {
            case .set(let assignment):
                let key = name(assignment)
                entries.removeAll { name($0) == key }
                entries.append(assignment)
            case .unset(let key):
                entries.removeAll { name($0) == key[...] }
            }
        }
        return entries
    }

    static func workingDirectory() throws(RexecError) -> [UInt8] {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else {
            throw RexecError(.local, "cannot tell the working directory (\(Errno(rawValue: errno))); give one with --cwd")
        }
        return buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    }

    static func terminalRequest(_ terminal: DescriptorPlan.PlannedTerminal?) -> RexecTerminal? {
        guard let terminal else { return nil }
        guard let local = terminal.local, let modes = try? Terminal.modes(local) else {
            // Forced TTY mode without a local terminal: all-zero modes keep the peer's defaults.
            return RexecTerminal(
                flags: [0, 0, 0, 0], controlCharacters: [UInt8](repeating: 0, count: 32),
                size: RexecWindowSize(rows: 24, columns: 80, width: 0, height: 0))
        }
        let size = (try? Terminal.windowSize(local)) ?? WindowSize(rows: 24, columns: 80)
        return RexecTerminal(
            flags: [modes.inputFlags, modes.outputFlags, modes.controlFlags, modes.localFlags],
            controlCharacters: modes.controlCharacters,
            size: RexecWindowSize(rows: size.rows, columns: size.columns, width: size.width, height: size.height))
    }
}

/// The original's start gate: with `REXEC_HANDSHAKE_RD` and `REXEC_HANDSHAKE_WR` naming two inherited
/// FIFOs, the client writes `1` to WR once the pid file exists, then forwards the byte it reads from RD;
/// the remote program runs only if that byte is `1`.
struct StartGate {
    let read: FileDescriptor
    let write: FileDescriptor

    static func fromEnvironment() throws(RexecError) -> StartGate? {
        guard let readText = getenv("REXEC_HANDSHAKE_RD"), let writeText = getenv("REXEC_HANDSHAKE_WR") else { return nil }
        func fd(_ text: UnsafeMutablePointer<CChar>, _ name: String) throws(RexecError) -> FileDescriptor {
            let string = String(decoding: UnsafeRawBufferPointer(start: text, count: strlen(text)), as: UTF8.self)
            guard let number = Int32(string), number > 2, let status = try? FileDescriptor(rawValue: number).descriptorStatus(),
                status.kind == .fifo
            else {
                throw RexecError(.local, "\(name)=\(string) must name an inherited FIFO above fd 2")
            }
            return FileDescriptor(rawValue: number)
        }
        return StartGate(read: try fd(readText, "REXEC_HANDSHAKE_RD"), write: try fd(writeText, "REXEC_HANDSHAKE_WR"))
    }
}

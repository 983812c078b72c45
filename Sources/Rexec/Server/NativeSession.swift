import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage

/// One dpuctl client and its program: EXEC → STARTED, the streams, signals, window sizes, connections to
/// carried listeners, and EXITED once the program's output is out. If the client disappears first, the
/// program gets SIGTERM and, after the grace period, SIGKILL (its whole process group).
final class NativeSession: ServerSession {
    unowned let core: ServerCore
    private let id: UInt64
    private let mux: Multiplexer
    private let peer: String
    private let via: Endpoint

    private enum State {
        case awaitingRequest
        case running
        /// The program exited 0 and left a daemon that this session now stands for.
        case following
        case ended
    }
    private var state = State.awaitingRequest
    private var program = ""
    private var process: ProcessHandle?
    private var processRegistration: IOLoop.Registration?
    private var gate: GatedChild?
    private var gateReport: LocalEnd?
    private var exitStatus: ExitStatus?
    private var exitedSent = false
    private var clientGone = false
    private var closeWhenFlushed = false
    private var killTimer: IOLoop.TimerID?
    /// The bound on closeAfterFlush's wait; cancelled when the session ends first (it always does when the
    /// client reads): left to fire, every finished session would keep one for 30 s.
    private var flushTimer: IOLoop.TimerID?
    /// The bound on the wait for EXEC after the handshake; cancelled when it comes.
    private var requestTimer: IOLoop.TimerID?
    private var listenerPaths: [Int32: String] = [:]
    private var terminalController: FileDescriptor?
    private var finished = false
    /// `qemu -daemonize -pidfile PATH`: the pid file to read when the program exits 0, and when the
    /// program started (no process older than that is taken for its daemon).
    private var daemonPidFile: String?
    private var programStart = UInt64.max
    private var daemon: ProcessHandle?
    private var daemonRegistration: IOLoop.Registration?
    private var daemonStatus: ExitStatus?
    private var daemonizedSent = false

    var pid: pid_t? { process?.pid }

    init(core: ServerCore, end: LocalEnd, leftover: ByteBuffer, greeting: ByteBuffer, capabilities: UInt64, peer: String, via: Endpoint) {
        self.core = core
        id = core.sessionID()
        self.peer = peer
        self.via = via
        mux = Multiplexer(loop: core.loop, link: end, leftover: leftover)
        mux.sendRaw(greeting)
        mux.discardSourcesAfterClose = true
        mux.spliceLink = Multiplexer.splices(over: via)
        // The carried fds, plus connections on carried listeners at once: each may hold a window of data.
        mux.maximumStreams = RexecLimits.maximumDescriptors + 256
        mux.onControl = { [unowned self] frame throws(WireError) in try control(frame) }
        mux.onClosed = { [unowned self] error in connectionClosed(error) }
        mux.onProgress = { [unowned self] in progressed() }
        if capabilities & RexecCapability.passDescriptors != 0 {
            mux.descriptorPassing = PassingPolicy(serverNote: { [unowned core] in core.logger.notice("\(peer): \($0)") })
        }
        do { try mux.start() } catch {
            core.logger.error("\(peer): cannot watch the connection: \(error)")
            mux.close(error)
        }
        // TCP's keep-alive is set on the listener; vsock has none.
        if case .vsock = via, !mux.closed { mux.watchLiveness(interval: .seconds(core.settings.keepalive) / 3, silent: 3) }
        // EXEC comes right behind the handshake (usually with it: then it has been handled above). A
        // client that sends none must not hold a session, one of max-sessions, for as long as it keeps
        // the connection open.
        guard state == .awaitingRequest, !mux.closed else { return }
        requestTimer = core.loop.schedule(after: core.settings.handshakeTimeout) { [weak self] in
            guard let self, state == .awaitingRequest, !mux.closed else { return }
            core.logger.notice("\(peer) via \(via): no request within \(core.settings.handshakeTimeout) of the handshake; closing")
            mux.close(nil)
        }
    }

    // MARK: requests

    private func control(_ frame: Frame) throws(WireError) {
        if frame.type == .goAway { return }
        let message = try RexecMessage(frame)
        switch (state, message) {
        case (.awaitingRequest, .exec(let request)):
            start(request)
        case (.awaitingRequest, _):
            throw WireError(.protocolViolation, "expected EXEC first, got \(frame.type)")
        case (_, .exec):
            throw WireError(.protocolViolation, "a second EXEC on one connection")
        case (.running, .signal(let signal, let toGroup)):
            deliver(signal, toGroup: toGroup)
        case (.running, .windowSize(let size)):
            if let terminalController {
                try? Terminal.setWindowSize(terminalController, WindowSize(rows: size.rows, columns: size.columns, width: size.width, height: size.height))
            }
        case (.running, .open(let stream, let listener)):
            try open(stream, listener: listener)
        case (.running, .gate(let word)):
            openGate(word)
        case (.following, .signal(let signal, _)):
            // The daemon leads no group of ours (and its pid is not pinned by a zombie): itself only.
            if let daemon, daemonStatus == nil { try? daemon.signal(signal) }
        case (.ended, .signal), (.ended, .windowSize), (.ended, .gate), (.following, .windowSize), (.following, .gate):
            break
        case (.ended, .open(let stream, _)), (.following, .open(let stream, _)):
            try mux.refuse(stream, .cancelled, reason: "the program has exited")
        default:
            throw WireError(.protocolViolation, "unexpected \(frame.type) from the client")
        }
    }

    private func start(_ request: RexecExecRequest) {
        cancelRequestTimer()
        program = String(decoding: request.program, as: UTF8.self)
        let path: [UInt8]
        do { path = try Launcher.resolve(request.program, whitelist: core.whitelist) } catch {
            return refuse(error)
        }
        var descriptors: [Int32: FileDescriptor] = [:]
        var programEnds: [FileDescriptor] = []
        var streams: [CarriedStream] = []
        var notes: [String] = []
        var controllingTerminal: Int32?
        func discard() {
            for fd in programEnds { fd.closeQuietly() }
            for stream in streams {
                stream.source?.close(core.loop)
                if stream.sink !== stream.source { stream.sink?.close(core.loop) }
            }
            for path in listenerPaths.values { unlink(path) }
            listenerPaths = [:]
            terminalController?.closeQuietly()
            terminalController = nil
        }
        do {
            for descriptor in request.descriptors {
                let first = descriptor.targets[0]
                switch descriptor.kind {
                case .file(let filePath, let flags, let offset):
                    let (fd, note) = Launcher.reopen(path: filePath, flags: Int32(bitPattern: flags), offset: Int64(offset), target: first)
                    if let note { notes.append(note) }
                    guard let fd else { continue }
                    programEnds.append(fd)
                    for target in descriptor.targets { descriptors[target] = fd }
                case .input(let stream):
                    let (read, write) = try FileDescriptor.makePipe()
                    programEnds.append(read)
                    write.setPipeCapacity(1 << 20)
                    try write.setNonBlocking()
                    for target in descriptor.targets { descriptors[target] = read }
                    let sink = LocalEnd(fd: write, owned: true)
                    sink.canSplice = true
                    streams.append(CarriedStream(id: stream, source: nil, sink: sink))
                case .output(let stream):
                    let (read, write) = try FileDescriptor.makePipe()
                    programEnds.append(write)
                    read.setPipeCapacity(1 << 20)
                    try read.setNonBlocking()
                    for target in descriptor.targets { descriptors[target] = write }
                    let source = LocalEnd(fd: read, owned: true)
                    source.canSplice = true
                    streams.append(CarriedStream(id: stream, source: source, sink: nil))
                case .socket(let stream):
                    let (ours, theirs) = try FileDescriptor.socketPair()
                    programEnds.append(theirs)
                    try ours.setNonBlocking()
                    for target in descriptor.targets { descriptors[target] = theirs }
                    let end = LocalEnd(fd: ours, owned: true)
                    let carried = CarriedStream(id: stream, source: end, sink: end)
                    carried.halfCloseSink = true
                    streams.append(carried)
                case .listener:
                    let socketPath = "\(core.settings.runtimeDirectory)/listeners/\(getpid())-\(id)-\(first).sock"
                    let fd = try Self.listenerSocket(socketPath)
                    listenerPaths[first] = socketPath
                    programEnds.append(fd)
                    for target in descriptor.targets { descriptors[target] = fd }
                case .terminal(let stream):
                    let pty = try PseudoTerminal.open()
                    programEnds.append(pty.terminal)
                    terminalController = pty.controller
                    if let terminal = request.terminal {
                        if terminal.flags.contains(where: { $0 != 0 }) {
                            try? Terminal.setModes(pty.terminal, TerminalModes(
                                inputFlags: terminal.flags[0], outputFlags: terminal.flags[1], controlFlags: terminal.flags[2],
                                localFlags: terminal.flags[3], controlCharacters: terminal.controlCharacters))
                        }
                        let size = terminal.size
                        try? Terminal.setWindowSize(pty.controller, WindowSize(rows: size.rows, columns: size.columns, width: size.width, height: size.height))
                    }
                    try pty.controller.setNonBlocking()
                    for target in descriptor.targets { descriptors[target] = pty.terminal }
                    controllingTerminal = first
                    // The controller outlives the stream's halves: it is closed with the session.
                    let end = LocalEnd(fd: pty.controller, owned: false)
                    streams.append(CarriedStream(id: stream, source: end, sink: end))
                }
            }
        } catch {
            discard()
            return refuse(Launcher.failure(error, Launcher.Request(
                program: request.program, arguments: [], environment: [], workingDirectory: nil, umask: nil, descriptors: [:],
                controllingTerminal: nil, gated: false)))
        }
        let launch = Launcher.Request(
            program: request.program, arguments: request.arguments, environment: request.environment,
            workingDirectory: request.workingDirectory, umask: mode_t(request.umask), descriptors: descriptors,
            controllingTerminal: controllingTerminal, gated: request.gated)
        let started: Launcher.Started
        do { started = try Launcher.start(launch, path: path) } catch {
            discard()
            return refuse(error)
        }
        for fd in programEnds { fd.closeQuietly() }
        process = started.process
        gate = started.gate
        state = .running
        if let file = request.daemonPidFile {
            daemonPidFile = String(decoding: file, as: UTF8.self)
            // Read while it cannot have been reaped: the pid still names our child.
            programStart = DaemonPidFile.startTime(started.process.pid) ?? UInt64.max
        }
        core.started(self, pid: started.process.pid)
        // Logged once the client has its answer: formatting and writing the line is not on its path.
        core.loop.later { [core, program, peer, via, pid = started.process.pid, arguments = request.arguments] in
            let text = arguments.dropFirst().map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
            core.logger.info("pid \(pid): \(program) \(text) for \(peer) via \(via)")
        }
        mux.send(.started(pid: started.process.pid, notes: notes))
        do {
            processRegistration = try core.loop.register(started.process.fd) { [unowned self] _ in reap() }
            for stream in streams {
                try mux.add(stream)
                try stream.source?.watch(core.loop)
                if let sink = stream.sink, sink !== stream.source { try sink.watch(core.loop) }
            }
        } catch {
            core.logger.error("pid \(started.process.pid): cannot relay its fds: \(error)")
            mux.close(error)
        }
        mux.pump()
    }

    private static func listenerSocket(_ path: String) throws(SystemError) -> FileDescriptor {
        let directory = String(path[..<path.lastIndex(of: "/")!])
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw SystemError(Errno(rawValue: errno), "mkdir", directory) }
        unlink(path)
        let fd = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue))
        do {
            try fd.bind(try SocketAddress(unixPath: path))
            try fd.listen(backlog: 4096)
        } catch {
            fd.closeQuietly()
            throw error
        }
        return fd
    }

    private func refuse(_ failure: RexecFailure) {
        core.logger.notice("refused \(program) for \(peer) via \(via): \(failure.message)")
        mux.send(.failed(failure))
        state = .ended
        closeAfterFlush()
    }

    // MARK: the program

    private func deliver(_ signal: Int32, toGroup: Bool) {
        guard let process, exitStatus == nil else { return }
        var signal = signal
        if [SIGTSTP, SIGTTIN, SIGTTOU].contains(signal), !Self.handles(process.pid, signal) {
            // The program leads its own session, so its process group is orphaned and the kernel discards
            // these stop signals; locally it would stop. Stop it, and report the stop as the signal sent.
            translatedStop = signal
            signal = SIGSTOP
        }
        if toGroup { try? process.signalGroup(signal) } else { try? process.signal(signal) }
    }

    private var translatedStop: Int32?

    /// Whether `pid` catches or ignores `signal` (/proc/PID/status SigCgt and SigIgn).
    static func handles(_ pid: pid_t, _ signal: Int32) -> Bool {
        guard let status = try? readTextFile("/proc/\(pid)/status", limit: 16384) else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("SigCgt:") || line.hasPrefix("SigIgn:") {
            let hex = line.split(separator: "\t").last.map(String.init) ?? ""
            if let mask = UInt64(hex.trimmingCharacters(in: " "), radix: 16), mask & (1 << UInt64(signal - 1)) != 0 { return true }
        }
        return false
    }

    private func open(_ stream: UInt32, listener: Int32) throws(WireError) {
        guard let path = listenerPaths[listener] else {
            throw WireError(.protocolViolation, "OPEN names fd \(listener), which is not a carried listener")
        }
        // Checked before connecting: the program would otherwise accept a connection that is closed at
        // once when the multiplexer refuses the stream (a number in use, over the limit).
        try mux.checkRoom(for: stream)
        guard exitStatus == nil, let fd = try? FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue), nonBlocking: true)
        else { return try mux.refuse(stream, .refused, reason: "the program does not accept connections") }
        guard (try? fd.connect(try SocketAddress(unixPath: path))) == true else {
            fd.closeQuietly()
            return try mux.refuse(stream, .refused, reason: "the program does not accept connections")
        }
        let end = LocalEnd(fd: fd, owned: true)
        let carried = CarriedStream(id: stream, source: end, sink: end)
        carried.halfCloseSink = true
        do { try mux.add(carried) } catch {
            fd.closeQuietly()
            throw error
        }
        do { try end.watch(core.loop) } catch { mux.send(ConnectionMessage.resetStream(stream: stream, .internalError, reason: "\(error)").frame) }
    }

    private func openGate(_ word: UInt8) {
        guard let gate else { return }
        self.gate = nil
        guard word == UInt8(ascii: "1") else {
            gate.veto()
            gate.report.closeQuietly()
            mux.send(.failed(RexecFailure(.vetoed, "the start gate (REXEC_HANDSHAKE_RD) said no")))
            closeAfterFlush()
            return
        }
        gate.release()
        let report = LocalEnd(fd: gate.report, owned: true)
        gateReport = report
        report.onReady = { [unowned self] in
            switch gate.outcome() {
            case nil: return
            case .running?: break
            case .failed(let error)?:
                let failure = Launcher.failure(SystemError(error.errno, error.operation, program), Launcher.Request(
                    program: [], arguments: [], environment: [], workingDirectory: nil, umask: nil, descriptors: [:],
                    controllingTerminal: nil, gated: true))
                mux.send(.failed(failure))
                closeAfterFlush()
            }
            report.close(core.loop)
            gateReport = nil
        }
        do { try report.watch(core.loop) } catch { report.close(core.loop) }
    }

    private func reap() {
        guard let process, exitStatus == nil else { return }
        guard let status = try? process.wait(nonBlocking: true) else { return }
        // A gated program that exited: its report says by now whether it ran at all.
        gateReport?.onReady?()
        exitStatus = status
        if let processRegistration { core.loop.unregister(processRegistration, process.fd) }
        processRegistration = nil
        if let killTimer { core.loop.cancel(killTimer) }
        // After this batch of events, so after EXITED has gone out.
        core.loop.later { [core, program, pid = process.pid] in core.logger.info("pid \(pid): \(program) \(status)") }
        gate?.veto()
        gate = nil
        state = .ended
        if status == .exited(0), let daemonPidFile {
            switch DaemonPidFile.follow(path: daemonPidFile, programStart: programStart, taken: { [unowned core] in core.owns($0) }) {
            case .follow(let handle): follow(handle)
            case .refused(let why): notFollowed(why)
            }
        }
        if mux.closed {
            // Nobody left to stand for the daemon either.
            if let daemon { terminateDaemon(daemon) }
            return finish()
        }
        if closeWhenFlushed { return progressed() }
        // Whatever the program wrote before it exited is in its pipes now: send that, then EXITED.
        mux.drainSources()
    }

    private func progressed() {
        if let exitStatus, !exitedSent, !mux.closed, !closeWhenFlushed,
            mux.streams.allSatisfy({ $0.sendState != .open })
        {
            if let daemon, daemonStatus == nil {
                // The client leaves its stand-in behind; EXITED follows when the daemon ends.
                if !daemonizedSent {
                    daemonizedSent = true
                    mux.send(.daemonized(pid: daemon.pid, notes: []))
                    mux.flush()
                }
                return
            }
            exitedSent = true
            // Once the stand-in exists it ends as the daemon did; a daemon gone before that is not news.
            let reported = daemonizedSent ? daemonStatus ?? exitStatus : exitStatus
            switch reported {
            case .exited(let code): mux.send(.exited(.exited(code: UInt8(truncatingIfNeeded: code))))
            case .signaled(let signal, let core): mux.send(.exited(.signaled(signal: UInt8(signal), coreDumped: core)))
            }
            closeAfterFlush()
        }
        // The client closes once it has read EXITED; its end of stream then closes ours.
        if closeWhenFlushed && !mux.hasQueuedOutput && !mux.closed { mux.finishSending() }
    }

    /// Ends the connection once what is queued is sent and the client has closed its side (bounded: a
    /// client that reads nothing for 30 s loses the rest).
    private func closeAfterFlush() {
        guard !closeWhenFlushed else { return }
        closeWhenFlushed = true
        flushTimer = core.loop.schedule(after: .seconds(30)) { [weak self] in
            guard let self, !mux.closed else { return }
            mux.close(nil)
        }
        mux.flush()
        core.loop.later { [weak self] in self?.progressed() }
    }

    private func connectionClosed(_ error: Error?) {
        if let error, !exitedSent {
            core.logger.notice("\(peer): connection ended: \(error)")
        }
        if let daemon, daemonStatus == nil {
            clientGone = true
            if killTimer == nil {
                core.logger.notice("pid \(daemon.pid): the daemon's stand-in \(peer) went away; SIGTERM now, SIGKILL in \(core.settings.grace)")
                terminateDaemon(daemon)
            }
            return
        }
        guard let process, exitStatus == nil else { return finish() }
        clientGone = true
        // Its terminal is gone: the program's session gets SIGHUP, as when a local terminal closes.
        terminalController?.closeQuietly()
        terminalController = nil
        if let gate {
            // Never released: it ends without running the program; the reap finishes the session.
            gate.veto()
            self.gate = nil
            return
        }
        if killTimer != nil { return }
        // The client went away while its program runs: nothing may be orphaned silently.
        core.logger.notice("pid \(process.pid): its client \(peer) went away; SIGTERM now, SIGKILL in \(core.settings.grace)")
        terminate(process)
    }

    private func terminate(_ process: ProcessHandle) {
        try? process.signalGroup(SIGTERM)
        try? process.signal(SIGTERM)
        try? process.signalGroup(SIGCONT)
        killTimer = core.loop.schedule(after: core.settings.grace) { [weak self] in
            guard let self, exitStatus == nil else { return }
            core.logger.notice("pid \(process.pid): still running \(core.settings.grace) after SIGTERM; SIGKILL")
            try? process.signalGroup(SIGKILL)
            try? process.signal(SIGKILL)
        }
    }

    // MARK: the daemon

    private func follow(_ handle: ProcessHandle) {
        do {
            daemonRegistration = try core.loop.register(handle.fd) { [unowned self] _ in daemonEnded() }
        } catch {
            handle.close()
            return notFollowed("the server cannot watch the daemon (pid \(handle.pid)): \(error)")
        }
        daemon = handle
        core.follows(handle.pid, true)
        state = .following
        core.logger.info("pid \(handle.pid): the daemon of \(program) (from \(daemonPidFile ?? "")), followed for \(peer)")
    }

    /// Tells the client at once, before the program's last output and the end of its streams (after
    /// which the client's stderr may be /dev/null already); EXITED follows as usual.
    private func notFollowed(_ why: String) {
        core.logger.notice("\(program): its daemon is not followed: \(why)")
        if !mux.closed { mux.send(.daemonized(pid: 0, notes: [why])) }
    }

    private func daemonEnded() {
        guard let daemon, daemonStatus == nil else { return }
        // Its status is ours to read only if it was reparented to us; otherwise (ECHILD) all that is
        // known is that it ended.
        var status = ExitStatus.exited(0)
        do {
            guard let reaped = try daemon.wait(nonBlocking: true) else { return }
            status = reaped
        } catch {}
        daemonStatus = status
        if let daemonRegistration { core.loop.unregister(daemonRegistration, daemon.fd) }
        daemonRegistration = nil
        if let killTimer { core.loop.cancel(killTimer) }
        killTimer = nil
        core.follows(daemon.pid, false)
        core.logger.info("pid \(daemon.pid): the daemon of \(program) ended")
        state = .ended
        if mux.closed { return finish() }
        progressed()
    }

    private func terminateDaemon(_ daemon: ProcessHandle) {
        guard killTimer == nil else { return }
        try? daemon.signal(SIGTERM)
        try? daemon.signal(SIGCONT)
        killTimer = core.loop.schedule(after: core.settings.grace) { [weak self] in
            guard let self, daemonStatus == nil else { return }
            core.logger.notice("pid \(daemon.pid): the daemon still runs \(core.settings.grace) after SIGTERM; SIGKILL")
            try? daemon.signal(SIGKILL)
        }
    }

    func childStateChanged(_ change: ChildStateChange) {
        guard !mux.closed, exitStatus == nil else { return }
        switch change {
        case .stopped(_, let signal):
            let reported = signal == SIGSTOP ? translatedStop ?? signal : signal
            translatedStop = nil
            mux.send(.stopped(signal: reported))
        case .continued: mux.send(.continued)
        }
        mux.pump()
    }

    func shutDown(_ policy: RexecServerSettings.StopPolicy) {
        var reason = "rexec_server is stopping"
        if let process, exitStatus == nil {
            switch policy {
            case .leave:
                core.logger.notice("pid \(process.pid): \(program) left running (stop-policy leave)")
                reason += "; \(program) keeps running on the server as pid \(process.pid)"
                if let processRegistration { core.loop.unregister(processRegistration, process.fd) }
                processRegistration = nil
                if let killTimer { core.loop.cancel(killTimer) }
                self.process = nil
                process.close()
            case .terminate:
                reason += "; \(program) (pid \(process.pid)) is being terminated"
                clientGone = true
                if killTimer == nil { terminate(process) }
            }
        } else if let daemon, daemonStatus == nil {
            switch policy {
            case .leave:
                core.logger.notice("pid \(daemon.pid): the daemon of \(program) left running (stop-policy leave)")
                reason += "; the daemon of \(program) keeps running on the server as pid \(daemon.pid)"
                releaseDaemon()
            case .terminate:
                reason += "; the daemon of \(program) (pid \(daemon.pid)) is being terminated"
                clientGone = true
                terminateDaemon(daemon)
            }
        }
        if mux.closed { return finish() }
        mux.send(ConnectionMessage.goAway(.shuttingDown, reason: reason).frame)
        closeAfterFlush()
    }

    private func cancelRequestTimer() {
        if let requestTimer { core.loop.cancel(requestTimer) }
        requestTimer = nil
    }

    private func releaseDaemon() {
        guard let daemon else { return }
        if let daemonRegistration { core.loop.unregister(daemonRegistration, daemon.fd) }
        daemonRegistration = nil
        if let killTimer { core.loop.cancel(killTimer) }
        killTimer = nil
        // Once it ended, its pid may already be another session's daemon.
        if daemonStatus == nil { core.follows(daemon.pid, false) }
        daemon.close()
        self.daemon = nil
    }

    /// Releases everything once the connection is closed and no live program is tracked.
    private func finish() {
        guard !finished, mux.closed, process == nil || exitStatus != nil, daemon == nil || daemonStatus != nil else { return }
        finished = true
        if let flushTimer { core.loop.cancel(flushTimer) }
        flushTimer = nil
        cancelRequestTimer()
        releaseDaemon()
        mux.releaseAll()
        if let processRegistration, let process { core.loop.unregister(processRegistration, process.fd) }
        processRegistration = nil
        process?.close()
        gateReport?.close(core.loop)
        for path in listenerPaths.values { unlink(path) }
        listenerPaths = [:]
        terminalController?.closeQuietly()
        terminalController = nil
        core.remove(self)
    }
}

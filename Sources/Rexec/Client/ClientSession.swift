import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// The client after the handshake: waits for STARTED, then relays the carried fds, forwards signals and
/// window sizes, accepts connections on carried listeners, and ends as the remote program ended.
final class ClientSession {
    private let loop: IOLoop
    private let mux: Multiplexer
    private let endpoint: Endpoint
    private var plannedStreams: [DescriptorPlan.PlannedStream]
    private let listeners: [DescriptorPlan.PlannedListener]
    private let terminal: DescriptorPlan.PlannedTerminal?
    private let signals: SignalDescriptor
    private let gate: StartGate?
    private let program: String
    private let daemonPidFile: [UInt8]?
    private let warn: (String) -> Void

    private enum State {
        case starting
        case running(pid: Int32)
        case exited(RexecOutcome)
    }
    private var state = State.starting
    private var queuedSignals: [SignalInfo] = []
    private var failure: RexecError?
    private var goAwayReason: String?
    private var goAwayCode = CloseCode.normal
    private var pidFile: PidFile?
    private var savedTerminal: termios?
    private var nextStream: UInt32
    private var nullDevice: FileDescriptor?
    private let capabilities: UInt64

    init(
        connection: FileDescriptor, leftover: ByteBuffer, capabilities: UInt64, endpoint: Endpoint, plan: DescriptorPlan,
        signals: SignalDescriptor, gate: StartGate?, program: String, daemonPidFile: [UInt8]?, warn: @escaping (String) -> Void
    ) throws(SystemError) {
        self.daemonPidFile = daemonPidFile
        self.capabilities = capabilities
        loop = try IOLoop()
        mux = Multiplexer(loop: loop, link: LocalEnd(fd: connection, owned: true), leftover: leftover)
        self.endpoint = endpoint
        plannedStreams = plan.streams
        listeners = plan.listeners
        terminal = plan.terminal
        self.signals = signals
        self.gate = gate
        self.program = program
        self.warn = warn
        nextStream = UInt32(plan.streams.count + 1)
        mux.keepSinksAfterClose = true
        mux.spliceLink = Multiplexer.splices(over: endpoint)
    }

    func run() throws(RexecError) -> RexecOutcome {
        mux.onControl = { [unowned self] frame throws(WireError) in try control(frame) }
        mux.onClosed = { [unowned self] error in connectionClosed(error) }
        if capabilities & RexecCapability.passDescriptors != 0 {
            // Passed descriptors get streams from the counter accepted connections use.
            mux.descriptorPassing = PassingPolicy(client: { [unowned self] in
                defer { nextStream += 1 }
                return nextStream
            }, note: warn)
        }
        do {
            _ = try loop.register(signals.fd) { [unowned self] _ in readSignals() }
            try mux.start()
        } catch {
            throw RexecError(.local, "\(error)")
        }
        // A host that vanishes is noticed within a minute: TCP by its keep-alive (Connector), vsock,
        // which has none, by PINGs.
        if case .vsock = endpoint { mux.watchLiveness(interval: .seconds(20), silent: 3) }
        defer { cleanUp() }
        while true {
            if let failure { throw failure }
            if case .exited(let outcome) = state, !mux.hasPendingSinkData { return outcome }
            do { try loop.runOnce(timeoutMilliseconds: -1) } catch {
                throw RexecError(.local, "\(error)")
            }
        }
    }

    // MARK: messages from the server

    private func control(_ frame: Frame) throws(WireError) {
        if frame.type == .goAway {
            if case .goAway(let code, let reason) = try ConnectionMessage(frame) {
                goAwayReason = reason
                goAwayCode = code
            }
            return
        }
        switch try RexecMessage(frame) {
        case .started(let pid, let notes):
            guard case .starting = state else { throw WireError(.protocolViolation, "STARTED twice") }
            for note in notes { warn(note) }
            started(pid)
        case .failed(let why):
            // A gated program is reported started (its pid is needed for the gate) before it is exec'd.
            if case .running = state, gate == nil { throw WireError(.protocolViolation, "FAILED after STARTED") }
            if case .exited = state { throw WireError(.protocolViolation, "FAILED after EXITED") }
            failure = RexecError(kind(of: why.code), "\(program): \(why.message)")
        case .exited(let exit):
            guard case .running = state else { throw WireError(.protocolViolation, "EXITED before STARTED") }
            switch exit {
            case .exited(let code): state = .exited(.exit(Int32(code)))
            case .signaled(let signal, _): state = .exited(.signal(Int32(signal)))
            }
            mux.close(nil)
        case .stopped(let signal):
            stop(signal)
        case .continued:
            break
        case .daemonized(let pid, let notes):
            guard case .running = state, daemonPidFile != nil else { throw WireError(.protocolViolation, "unexpected DAEMONIZED") }
            // pid 0: the server cannot follow the daemon; EXITED follows, and we end as today.
            for note in notes { warn(note) }
            if pid != 0 { leaveStandIn(daemon: pid) }
        default:
            throw WireError(.protocolViolation, "unexpected \(frame.type) from the server")
        }
    }

    /// The program exited 0 and its daemon runs on the server: a copy of this process stays here as the
    /// daemon's stand-in (its pid goes into the pid file the caller reads), and this one exits 0 as the
    /// program did.
    ///
    /// fork without exec, on purpose: the client is single-threaded by design (one epoll loop, no thread
    /// pool, run before anything could start a thread — `Fork.singleThreaded` checks and refuses
    /// otherwise), so the copy is as safe as the original; and it keeps the connection exactly where it
    /// is — bytes read but not decoded, bytes not yet sent — which a freshly exec'd process would have to
    /// be handed through argv or a pipe. The copy closes everything else at once (`StandIn`).
    private func leaveStandIn(daemon: Int32) {
        guard let daemonPidFile else { return }
        let path = String(decoding: daemonPidFile, as: UTF8.self)
        func fail(_ why: String) {
            // Our exit closes the connection, and the server ends the daemon: none is left unwatched.
            failure = RexecError(.local, "cannot stand in for the daemon of \(program) (pid \(daemon) on the server): \(why); it is being ended")
        }
        guard !mux.isMidFrame else { return fail("the connection is in the middle of a frame") }
        let ready: (read: FileDescriptor, write: FileDescriptor)
        do { ready = try FileDescriptor.makePipe() } catch { return fail("\(error)") }
        let child: pid_t
        do { child = try Fork.singleThreaded() } catch {
            ready.read.closeQuietly()
            ready.write.closeQuietly()
            return fail("\(error)")
        }
        if child == 0 {
            ready.read.closeQuietly()
            StandIn.run(
                connection: mux.link.fd, unread: mux.unprocessedInput, unsent: mux.outbound, signals: signals,
                daemon: daemon, ready: ready.write, warn: warn)
        }
        ready.write.closeQuietly()
        // The stand-in says it is ready once it holds nothing of the caller's (the caller may wait for
        // end of file on our stdout and stderr) and its /var/run/rexec/pids entry exists; or it died.
        var word: UInt8 = 0
        let count = Glibc.read(ready.read.rawValue, &word, 1)
        ready.read.closeQuietly()
        guard count == 1 else {
            kill(child, SIGKILL)
            return fail("the stand-in process ended at once")
        }
        do {
            let fd = try FileDescriptor.openPath(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: 0o644)
            defer { fd.closeQuietly() }
            try fd.writeFully("\(child)\n".utf8)
        } catch {
            kill(child, SIGKILL)
            return fail("cannot write its pid to \(path): \(error)")
        }
        state = .exited(.exit(0))
        // Our copy of the connection only (close, not shutdown): the stand-in goes on with it.
        mux.close(nil)
    }

    private func kind(of code: RexecFailure.Code) -> RexecError.Kind {
        switch code {
        case .notFound: .notFound
        case .notExecutable, .notAllowed: .notExecutable
        case .vetoed: .vetoed
        default: .startFailed
        }
    }

    private func started(_ pid: Int32) {
        state = .running(pid: pid)
        do {
            pidFile = try PidFile.create(directory: RexecDefaults.pidDirectory, remotePID: pid)
        } catch {
            warn("cannot write the pid file: \(error)")
        }
        if let gate { openGate(gate) }
        if let local = terminal?.local { savedTerminal = try? Terminal.makeRaw(local) }
        for planned in plannedStreams { attach(planned) }
        plannedStreams = []
        for listener in listeners {
            listener.end.onReady = { [unowned self] in accept(listener) }
            do { try listener.end.watch(loop) } catch { warn("cannot watch the listening socket at fd \(listener.id): \(error)") }
            accept(listener)
        }
        let queued = queuedSignals
        queuedSignals = []
        for signal in queued { forward(signal) }
    }

    private func attach(_ planned: DescriptorPlan.PlannedStream) {
        let stream = CarriedStream(id: planned.id, source: planned.source, sink: planned.sink)
        stream.halfCloseSink = planned.duplex
        let targets = planned.targets
        if planned.id == terminal?.stream {
            // The terminal stays ours when the remote one closes.
        } else if daemonPidFile != nil {
            // A daemonizing program's streams end before its daemon's fate is known: stderr stays ours
            // for the note that comes then, until we exit (the stand-in lets go of them at once).
        } else if planned.duplex {
            stream.onFinished = { [unowned self] _ in neutralise(targets) }
        } else {
            // When the remote side is done with a stream, so are we: the caller sees end of file (or
            // EPIPE) exactly as if the program had closed the fd.
            stream.onSinkDone = { [unowned self] in neutralise(targets) }
            stream.onSourceDone = { [unowned self] in neutralise(targets) }
        }
        do {
            try mux.add(stream)
            try planned.source?.watch(loop)
            if let sink = planned.sink, sink !== planned.source { try sink.watch(loop) }
        } catch {
            warn("cannot relay fd \(targets.map(String.init).joined(separator: ",")): \(error)")
        }
    }

    /// Points `targets` at /dev/null: our reference to the caller's pipe or socket goes, while the fd
    /// numbers stay valid (a later open must not land on 1 or 2).
    private func neutralise(_ targets: [Int32]) {
        // Only for a stream the program ended; when the connection goes, we are about to exit and may
        // still have to say why on stderr.
        guard !mux.closed else { return }
        if nullDevice == nil { nullDevice = try? FileDescriptor.openPath("/dev/null", flags: O_RDWR) }
        guard let nullDevice else { return }
        for target in targets { dup2(nullDevice.rawValue, target) }
    }

    private func accept(_ listener: DescriptorPlan.PlannedListener) {
        guard case .running = state else { return }
        while true {
            let connection: FileDescriptor?
            do { connection = try listener.end.fd.accept(nonBlocking: true) } catch {
                if error.errno.rawValue != ECONNABORTED { warn("accept on fd \(listener.id): \(error)") }
                continue
            }
            guard let connection else {
                listener.end.readable = false
                return
            }
            let id = nextStream
            nextStream += 1
            let end = LocalEnd(fd: connection, owned: true)
            let stream = CarriedStream(id: id, source: end, sink: end)
            stream.halfCloseSink = true
            do {
                try mux.add(stream)
                mux.send(.open(stream: id, listener: listener.id))
                try end.watch(loop)
            } catch {
                warn("cannot carry a connection accepted on fd \(listener.id): \(error)")
                connection.closeQuietly()
            }
        }
    }

    private func openGate(_ gate: StartGate) {
        // Tell our parent the pid file is ready, then pass on its verdict.
        var one = UInt8(ascii: "1")
        _ = Glibc.write(gate.write.rawValue, &one, 1)
        let end = LocalEnd(fd: gate.read, owned: false)
        end.onReady = { [unowned self] in
            guard end.readable else { return }
            var word: UInt8 = 0
            let count = Glibc.read(gate.read.rawValue, &word, 1)
            guard count != -1 || errno != EAGAIN else { return }
            end.close(loop)
            mux.send(.gate(count == 1 ? word : 0))
            mux.pump()
        }
        do { try end.watch(loop) } catch { mux.send(.gate(0)) }
    }

    private func connectionClosed(_ error: Error?) {
        if case .exited = state { return }
        if failure != nil { return }
        var where_ = ""
        if case .running(let pid) = state { where_ = "; the program may still run there as pid \(pid)" }
        if let goAwayReason, goAwayCode == .refused || goAwayCode == .protocolError {
            failure = RexecError(.connection, "the server at \(endpoint) refused: \(goAwayReason)")
        } else if let goAwayReason {
            failure = RexecError(.disconnected, "the server at \(endpoint) stopped (\(goAwayReason))\(where_)")
        } else if let error {
            failure = RexecError(.disconnected, "lost the connection to \(endpoint): \(error)\(where_)")
        } else {
            failure = RexecError(.disconnected, "the server at \(endpoint) closed the connection\(where_)")
        }
    }

    // MARK: signals

    private func readSignals() {
        let pending = (try? signals.readInfo()) ?? []
        for info in pending {
            switch state {
            case .starting: queuedSignals.append(info)
            case .running: forward(info)
            case .exited: break
            }
        }
        mux.pump()
    }

    private func forward(_ info: SignalInfo) {
        switch info.signal {
        case SIGWINCH where terminal != nil:
            if let local = terminal?.local, let size = try? Terminal.windowSize(local) {
                mux.send(.windowSize(RexecWindowSize(rows: size.rows, columns: size.columns, width: size.width, height: size.height)))
            }
        case SIGCONT:
            if let local = terminal?.local, savedTerminal != nil { _ = try? Terminal.makeRaw(local) }
            mux.send(.signal(SIGCONT, toGroup: true))
        default:
            // A terminal's ^C reaches the whole foreground job; kill(2) reaches this process only.
            mux.send(.signal(info.signal, toGroup: info.fromTerminal))
        }
        mux.pump()
    }

    /// The remote program stopped: stop here too (our parent sees WIFSTOPPED), then continue it when we
    /// are continued.
    private func stop(_ signal: Int32) {
        if let local = terminal?.local, let saved = savedTerminal { try? Terminal.setAttributes(local, saved) }
        Signals.stopWith(signal == SIGSTOP ? SIGSTOP : signal)
        if let local = terminal?.local, savedTerminal != nil { _ = try? Terminal.makeRaw(local) }
        mux.send(.signal(SIGCONT, toGroup: true))
    }

    private func cleanUp() {
        if let local = terminal?.local, let saved = savedTerminal { try? Terminal.setAttributes(local, saved) }
        pidFile?.remove()
        pidFile = nil
        if !mux.closed { mux.close(nil) }
    }
}

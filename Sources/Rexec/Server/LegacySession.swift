import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage

/// The original C `rexec` client (reference/rexec.md §6), served on the unix socket so that unchanged DPU
/// images keep working: EXEC with argv and a JSON list of files plus three SCM_RIGHTS pipes, PIDMAP, the
/// HANDSHAKE gate, KILL with the shell-style status. Its bugs are not reproduced: an exec failure is
/// status 127/126 with a message on the client's stderr (not 0), the umask and whitelist are applied, a
/// stalled client stalls only itself, and a vanished client's program gets SIGTERM before SIGKILL.
final class LegacySession: ServerSession {
    unowned let core: ServerCore
    private let end: LocalEnd
    private let peer: String

    private enum State {
        case receiving
        case awaitingHandshake
        case running
        case ended
    }
    private var state = State.receiving
    private var buffer: [UInt8] = []
    private var header: LegacyRexecHeader?
    private var headerFD: FileDescriptor?
    private var execPayload: [UInt8]?
    private var execArgc: Int32 = 0
    private var stdio: [Int32: FileDescriptor] = [:]
    private var program = ""
    private var process: ProcessHandle?
    private var processRegistration: IOLoop.Registration?
    private var gate: GatedChild?
    private var report: LocalEnd?
    private var exitStatus: ExitStatus?
    private var killTimer: IOLoop.TimerID?
    /// The bound on the wait for the client to close after KILL; cancelled when the session ends first.
    private var closeTimer: IOLoop.TimerID?
    /// The bound on the wait for the request (EXEC and the two PIPE messages, which the original client
    /// sends as soon as it is connected); cancelled when the program starts. The start gate after it is
    /// not bounded: with REXEC_HANDSHAKE_RD the client's parent answers it, when it is ready.
    private var requestTimer: IOLoop.TimerID?
    private var closed = false
    private var finished = false

    var pid: pid_t? { process?.pid }

    init(core: ServerCore, end: LocalEnd, peer: String) {
        self.core = core
        self.end = end
        self.peer = peer
        end.onReady = { [unowned self] in readable() }
        end.readable = true
        core.loop.later { [weak self] in self?.readable() }
        requestTimer = core.loop.schedule(after: core.settings.handshakeTimeout) { [weak self] in
            guard let self, state == .receiving, !closed else { return }
            fail("no complete request within \(core.settings.handshakeTimeout); closing")
        }
    }

    // MARK: receiving

    private func readable() {
        while end.readable && !closed {
            switch state {
            case .receiving, .awaitingHandshake:
                guard receiveMessage() else { return }
            case .running, .ended:
                // The original client sends nothing more; anything it does send is read and ignored.
                var scratch = [UInt8](repeating: 0, count: 4096)
                let result = scratch.withUnsafeMutableBytes { end.read(into: $0) }
                switch result {
                case .bytes: continue
                case .wouldBlock: return
                case .endOfFile, .failed: return clientGone()
                }
            }
        }
    }

    /// Reads towards the current message (never past it: an fd belongs to the message it came with).
    /// Returns false when nothing more can be read now.
    private func receiveMessage() -> Bool {
        let wanted = header.map { Int($0.length) } ?? LegacyRexecHeader.size
        var chunk = [UInt8](repeating: 0, count: max(wanted - buffer.count, 1))
        let received: (bytes: Int, fds: [FileDescriptor], truncated: Bool)?
        do {
            received = try chunk.withUnsafeMutableBytes { raw in try end.fd.receive(into: raw, maxFDs: 1) }
        } catch {
            fail("connection error: \(error)")
            return false
        }
        guard let received else {
            end.readable = false
            return false
        }
        if received.bytes == 0 && received.fds.isEmpty {
            clientGone()
            return false
        }
        for fd in received.fds {
            if header == nil && headerFD == nil { headerFD = fd } else { fd.closeQuietly() }
        }
        buffer += chunk[..<received.bytes]
        if header == nil {
            guard buffer.count == LegacyRexecHeader.size else { return true }
            var bytes = ByteBuffer(bytes: buffer)
            buffer = []
            do { header = try LegacyRexecHeader.decode(&bytes) } catch {
                fail(error.message)
                return false
            }
            if header!.length > 0 { return true }
        } else if buffer.count < Int(header!.length) {
            return true
        }
        let complete = header!
        let payload = buffer
        let fd = headerFD
        header = nil
        headerFD = nil
        buffer = []
        handle(complete, payload: payload, fd: fd)
        return !closed
    }

    private func handle(_ header: LegacyRexecHeader, payload: [UInt8], fd: FileDescriptor?) {
        switch (state, header.messageType) {
        case (.receiving, .exec):
            guard execPayload == nil else {
                fd?.closeQuietly()
                return fail("a second EXEC message")
            }
            execPayload = payload
            execArgc = header.argc
            take(fd, as: 0)
        case (.receiving, .pipe):
            guard header.pipeFD == 1 || header.pipeFD == 2 else {
                fd?.closeQuietly()
                return fail("a PIPE message for fd \(header.pipeFD)")
            }
            take(fd, as: header.pipeFD)
        case (.awaitingHandshake, .handshake):
            openGate(payload.first ?? 0)
        case (.awaitingHandshake, _):
            fd?.closeQuietly()  // the original skips other messages while it waits
        default:
            fd?.closeQuietly()
            return fail("unexpected message 0x\(String(UInt32(bitPattern: header.type), radix: 16))")
        }
        if state == .receiving, execPayload != nil, stdio.count == 3 { start() }
    }

    private func take(_ fd: FileDescriptor?, as number: Int32) {
        stdio[number]?.closeQuietly()
        // A message without its fd leaves that stream on /dev/null rather than on one of ours.
        stdio[number] = fd ?? (try? FileDescriptor.openPath("/dev/null", flags: O_RDWR)) ?? FileDescriptor(rawValue: -1)
    }

    // MARK: the program

    private func start() {
        cancelRequestTimer()
        let exec: LegacyRexecExec
        do { exec = try LegacyRexecExec(payload: execPayload!, argc: execArgc) } catch {
            return fail(error.message)
        }
        program = String(decoding: exec.arguments[0], as: UTF8.self)
        let path: [UInt8]
        do { path = try Launcher.resolve(exec.arguments[0], whitelist: core.whitelist) } catch {
            // As the original: a refused program closes the connection (the client exits 1).
            core.logger.notice("refused \(program) for \(peer) (original protocol): \(error.message)")
            return close()
        }
        var descriptors = stdio
        var files: [FileDescriptor] = []
        for file in exec.files {
            let (fd, note) = Launcher.reopen(path: file.path, flags: file.flags, offset: file.offset, target: file.fd)
            if let note { core.logger.notice("\(program) for \(peer): \(note)") }
            if let fd {
                files.append(fd)
                descriptors[file.fd] = fd
            }
        }
        defer { for fd in files { fd.closeQuietly() } }
        let request = Launcher.Request(
            program: exec.arguments[0], arguments: exec.arguments, environment: Self.serverEnvironment(),
            workingDirectory: nil, umask: nil, descriptors: descriptors, controllingTerminal: nil, gated: true)
        let started: Launcher.Started
        do { started = try Launcher.start(request, path: path) } catch {
            tellClient(error)
            return
        }
        process = started.process
        gate = started.gate
        core.started(self, pid: started.process.pid)
        let arguments = exec.arguments.dropFirst().map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
        core.logger.info("pid \(started.process.pid): \(program) \(arguments) for \(peer) (original protocol)")
        do {
            processRegistration = try core.loop.register(started.process.fd) { [unowned self] _ in reap() }
        } catch {
            core.logger.error("pid \(started.process.pid): cannot watch it: \(error)")
        }
        state = .awaitingHandshake
        send(LegacyRexecHeader(type: .pidMap, pid: started.process.pid))
    }

    /// The environment the original gave its programs (its own), without what systemd set for the server.
    static func serverEnvironment() -> [[UInt8]] {
        let managerOnly = ["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC",
            "INVOCATION_ID", "JOURNAL_STREAM", "MAINPID", "SYSTEMD_EXEC_PID", "MANAGERPID"].map { Array($0.utf8) }
        var entries: [[UInt8]] = []
        var index = 0
        while let entry = Glibc.environ[index] {
            let bytes = Array(UnsafeRawBufferPointer(start: entry, count: strlen(entry)))
            let name = Array(bytes.prefix { $0 != UInt8(ascii: "=") })
            if !managerOnly.contains(name) { entries.append(bytes) }
            index += 1
        }
        return entries
    }

    private func openGate(_ word: UInt8) {
        guard let gate else { return }
        self.gate = nil
        guard word == UInt8(ascii: "1") else {
            gate.veto()
            gate.report.closeQuietly()
            core.logger.notice("pid \(gate.pid): the client's start gate said no")
            return close()
        }
        gate.release()
        state = .running
        let report = LocalEnd(fd: gate.report, owned: true)
        self.report = report
        report.onReady = { [unowned self] in
            switch gate.outcome() {
            case nil: return
            case .running?: releaseStdio()
            case .failed(let error)?:
                tellClient(Launcher.failure(SystemError(error.errno, error.operation, program), Launcher.Request(
                    program: [], arguments: [], environment: [], workingDirectory: nil, umask: nil, descriptors: [:],
                    controllingTerminal: nil, gated: true)))
            }
            report.close(core.loop)
            self.report = nil
        }
        do { try report.watch(core.loop) } catch { report.close(core.loop) }
    }

    /// The program could not be started: say why on the client's stderr (the original client copies it
    /// to its own) and end with the status a shell would give.
    private func tellClient(_ failure: RexecFailure) {
        core.logger.notice("\(program) for \(peer) (original protocol): \(failure.message)")
        if let stderr = stdio[2] {
            let line = Array("rexec_server: \(program): \(failure.message)\n".utf8)
            _ = line.withUnsafeBytes { Glibc.write(stderr.rawValue, $0.baseAddress, $0.count) }
        }
        releaseStdio()
        failedStatus = failure.code == .notFound ? 127 : 126
        if process == nil { sendKill(failedStatus!) }
    }
    private var failedStatus: Int32?
    private var killSent = false

    private func releaseStdio() {
        for fd in stdio.values where fd.rawValue >= 0 { fd.closeQuietly() }
        stdio = [:]
    }

    private func reap() {
        guard let process, exitStatus == nil, let status = try? process.wait(nonBlocking: true) else { return }
        exitStatus = status
        if let processRegistration { core.loop.unregister(processRegistration, process.fd) }
        processRegistration = nil
        if let killTimer { core.loop.cancel(killTimer) }
        core.logger.info("pid \(process.pid): \(program) \(status)")
        gate = nil
        // It exited: its report says by now whether the program ran at all.
        report?.onReady?()
        if closed { return finish() }
        if state == .awaitingHandshake { return close() }
        sendKill(failedStatus ?? status.shellStatus)
    }

    private func sendKill(_ status: Int32) {
        guard !killSent else { return }
        killSent = true
        state = .ended
        send(LegacyRexecHeader(type: .kill, exitStatus: status))
        releaseStdio()
        // The original client closes the connection when it gets KILL; do not wait for it forever.
        closeTimer = core.loop.schedule(after: .seconds(10)) { [weak self] in self?.close() }
    }

    private func send(_ header: LegacyRexecHeader) {
        var bytes = ByteBuffer()
        header.encode(into: &bytes)
        // 24 bytes into a socket nobody has written to for a while: a short write means the client is gone.
        let result = bytes.readableBytesView.withUnsafeBytes { end.write($0) }
        if case .bytes(let count) = result, count == LegacyRexecHeader.size { return }
        clientGone()
    }

    private func clientGone() {
        guard !closed else { return }
        if let process, exitStatus == nil, state != .ended {
            if let gate {
                gate.veto()
                self.gate = nil
            } else {
                core.logger.notice("pid \(process.pid): its client \(peer) went away; SIGTERM now, SIGKILL in \(core.settings.grace)")
                try? process.signalGroup(SIGTERM)
                try? process.signal(SIGTERM)
                killTimer = core.loop.schedule(after: core.settings.grace) { [weak self] in
                    guard let self, exitStatus == nil else { return }
                    try? process.signalGroup(SIGKILL)
                    try? process.signal(SIGKILL)
                }
            }
        }
        close()
    }

    private func fail(_ why: String) {
        core.logger.notice("\(peer) (original protocol): \(why)")
        clientGone()
    }

    private func close() {
        if !closed {
            closed = true
            end.close(core.loop)
            headerFD?.closeQuietly()
            releaseStdio()
        }
        finish()
    }

    func childStateChanged(_ change: ChildStateChange) {}

    func shutDown(_ policy: RexecServerSettings.StopPolicy) {
        if let process, exitStatus == nil {
            switch policy {
            case .leave:
                core.logger.notice("pid \(process.pid): \(program) left running (stop-policy leave)")
                if let processRegistration { core.loop.unregister(processRegistration, process.fd) }
                processRegistration = nil
                gate?.veto()
                self.process = nil
                process.close()
                endClientForStop()
            case .terminate:
                state = .running
                endClientForStop()
                clientGone()
                return
            }
        }
        close()
    }

    /// The original client exits with the status KILL carries: 255, what dpuctl's clients exit with when
    /// the server stops (this protocol has no way to carry their message too), not the 1 of a lost
    /// connection.
    private func endClientForStop() {
        guard !closed, !killSent else { return }
        killSent = true
        send(LegacyRexecHeader(type: .kill, exitStatus: 255))
    }

    private func cancelRequestTimer() {
        if let requestTimer { core.loop.cancel(requestTimer) }
        requestTimer = nil
    }

    private func finish() {
        guard !finished, closed, process == nil || exitStatus != nil else { return }
        finished = true
        if let closeTimer { core.loop.cancel(closeTimer) }
        closeTimer = nil
        cancelRequestTimer()
        report?.close(core.loop)
        if let processRegistration, let process { core.loop.unregister(processRegistration, process.fd) }
        process?.close()
        core.remove(self)
    }
}

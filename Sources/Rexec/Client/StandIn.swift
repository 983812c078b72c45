import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// The local stand-in of a daemon that runs on the server (`qemu -daemonize`): the forked copy of the
/// client that stays behind when the program exited 0 and its daemon lives on. Its pid is what the
/// caller reads from the daemon's pid file, and `/var/run/rexec/pids/<its pid>` holds the daemon's pid.
/// Signals sent to it reach the daemon; when it dies, even of SIGKILL, the connection closes and the
/// server ends the daemon; when the daemon ends, it ends as the daemon did.
enum StandIn {
    /// Runs in the child of `fork` (see `ClientSession.leaveStandIn`) and never returns. `ready` gets one
    /// byte once nothing of the caller's is held here any more.
    static func run(
        connection: FileDescriptor, unread: ByteBuffer, unsent: ByteBuffer, signals: SignalDescriptor, daemon: Int32,
        ready: FileDescriptor, warn: (String) -> Void
    ) -> Never {
        // Out of the caller's session and process group: a ^C or a kill of the caller's group is not
        // meant for a daemon.
        setsid()
        // Nor should it keep a directory (a mount to be reverted) busy for as long as the daemon runs.
        _ = chdir("/")
        // The pid map first, while stderr is still the caller's and a failure can be said.
        var pidFile: PidFile?
        do { pidFile = try PidFile.create(directory: RexecDefaults.pidDirectory, remotePID: daemon) } catch {
            warn("cannot write the pid file of the daemon's stand-in: \(error)")
        }
        // Keep the connection, the signals and the map; everything else — the caller's stdio pipes
        // (libvirt reads them to end of file), carried fds, listeners, the client's epoll — goes.
        var keep: Set<Int32> = [connection.rawValue, signals.fd.rawValue, ready.rawValue]
        if let pidFile { keep.insert(pidFile.fd.rawValue) }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        for target in Int32(0)...2 where null >= 0 { dup2(null, target) }
        for fd in (try? openDescriptorNumbers()) ?? [] where fd > 2 && !keep.contains(fd) { close(fd) }
        var one = UInt8(ascii: "1")
        _ = Glibc.write(ready.rawValue, &one, 1)
        ready.closeQuietly()

        let outcome = follow(connection: connection, unread: unread, unsent: unsent, signals: signals)
        pidFile?.remove()
        switch outcome {
        case .exit(let status): exit(status)
        case .signal(let signal): Signals.dieOf(signal)
        }
    }

    /// Relays signals to the daemon until the server reports its end or the connection goes.
    private static func follow(connection: FileDescriptor, unread: ByteBuffer, unsent: ByteBuffer, signals: SignalDescriptor) -> RexecOutcome {
        let loop: IOLoop
        do { loop = try IOLoop() } catch { return .exit(255) }
        let mux = Multiplexer(loop: loop, link: LocalEnd(fd: connection, owned: true), leftover: unread)
        mux.sendRaw(unsent)
        var outcome: RexecOutcome?
        mux.onControl = { frame throws(WireError) in
            if frame.type == .goAway { return }
            switch try RexecMessage(frame) {
            case .exited(.exited(let code)): outcome = .exit(Int32(code))
            case .exited(.signaled(let signal, _)): outcome = .signal(Int32(signal))
            case .stopped, .continued: return
            default: throw WireError(.protocolViolation, "unexpected \(frame.type) from the server after DAEMONIZED")
            }
            mux.close(nil)
        }
        // A server that went away cannot have ended the daemon through us; 255 as for the client.
        mux.onClosed = { _ in if outcome == nil { outcome = .exit(255) } }
        do {
            _ = try loop.register(signals.fd) { _ in
                for info in (try? signals.readInfo()) ?? [] where !mux.closed {
                    mux.send(.signal(info.signal, toGroup: false))
                }
                mux.pump()
            }
            try mux.start()
            while outcome == nil { try loop.runOnce(timeoutMilliseconds: -1) }
        } catch {
            return .exit(255)
        }
        return outcome ?? .exit(255)
    }
}

import DPUSystem
import DPUSystemd
import Glibc
import Logging
import ServiceLifecycle
import Synchronization

/// udsproxyd as a `Daemon`: `start` binds the control socket and the peer listeners, starts the reactor
/// thread and, when a peer is configured, returns once the link to it is up (so READY=1 means "local
/// connects can be carried now"); `serve` runs until SIGTERM, then stops accepting, tells the peer and
/// lets buffered data out; `reload` (SIGHUP) re-reads the whitelist, allow-users and keys, keeping every
/// connection.
public final class UDSProxyDaemon: Daemon {
    private let options: UDSProxyOptions
    private let logger: Logger
    private let board = StatusBoard()
    private let core = Mutex<Core?>(nil)

    /// The reactor and the proxy that lives on it. The proxy is only touched on the reactor thread (in
    /// closures given to `submit`); this box carries it there.
    private struct Core: @unchecked Sendable {
        let reactor: Reactor
        let proxy: Proxy
    }

    public init(options: UDSProxyOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func start() async throws {
        // A write to a socket whose reader is gone must be an EPIPE error, never the end of the daemon.
        Signals.ignore(SIGPIPE)
        let settings = try UDSProxySettings.load(options)
        let reactor = try Reactor()
        let proxy = Proxy(reactor: reactor, settings: settings, logger: logger, board: board)
        try proxy.bind(activated: options.activatedSockets)
        logger.info("control socket \(settings.control); whitelist (\(settings.whitelistSource)): \(settings.whitelist.summary)")
        if !proxy.listenerNames.isEmpty {
            logger.info("listening for the peer on \(proxy.listenerNames.joined(separator: ", "))\(settings.listenerKey == nil ? " without a key" : "")")
        }
        proxy.publishStatus()
        let core = Core(reactor: reactor, proxy: proxy)
        self.core.withLock { $0 = core }
        // The thread is named udsproxyd: the original's qtfs kernel hook lets connects from threads of that
        // name through unchanged, so ours never loop back into the proxy.
        let board = self.board
        try OSThread.start(name: "udsproxyd") {
            core.reactor.run()
            board.stopped()
        }
        reactor.submit { core.proxy.begin() }
        if settings.peer != nil {
            logger.info("waiting for the link to the peer \(settings.peer!) before reporting ready")
            await board.waitForLink()
        }
    }

    public func serve() async throws {
        guard let core = core.withLock({ $0 }) else { return }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await board.waitUntilStopped()
            } onGracefulShutdown: {
                core.reactor.submit { core.proxy.shutDown() }
            }
        } onCancel: {
            core.reactor.submit { core.proxy.stopNow() }
        }
    }

    public func reload() async throws {
        guard let core = core.withLock({ $0 }) else { return }
        let settings = try UDSProxySettings.load(options)
        core.reactor.submit { core.proxy.reload(settings) }
    }

    public func status() -> String { board.status }
}

/// What the reactor thread publishes for the async side: the status line, the first link, the end.
final class StatusBoard: Sendable {
    private struct State {
        var status = "starting"
        var linked = false
        var stopped = false
        var linkWaiters: [CheckedContinuation<Void, Never>] = []
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    var status: String { state.withLock { $0.status } }

    func setStatus(_ text: String) { state.withLock { $0.status = text } }

    func linkUp() {
        let waiters = state.withLock { state in
            state.linked = true
            defer { state.linkWaiters.removeAll() }
            return state.linkWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func stopped() {
        let waiters = state.withLock { state in
            state.stopped = true
            // Whoever waits for a link will not get one.
            defer { state.stopWaiters.removeAll(); state.linkWaiters.removeAll() }
            return state.stopWaiters + state.linkWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func waitForLink() async {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state in
                if state.linked || state.stopped { return true }
                state.linkWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    func waitUntilStopped() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state in
                if state.stopped { return true }
                state.stopWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}

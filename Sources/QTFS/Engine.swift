import DPUConfig
import DPUSystem
import DPUSystemd
import DPUWire
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import SystemPackage

/// Where the engine takes connections from.
public enum QTFSListener: Sendable {
    /// Bind this address.
    case endpoint(Endpoint)
    /// A socket passed by the service manager, already bound and listening.
    case activated(SystemPackage.FileDescriptor, name: String)
}

/// What the engine serves and how.
public struct QTFSEngineConfiguration: Sendable {
    public var listeners: [QTFSListener]
    /// The original's whitelist file.
    public var whitelistPath: String
    /// Whether a missing whitelist file is allowed (exports may come from the dpuctl configuration).
    public var whitelistOptional: Bool
    /// dpuctl's configuration, for `[qtfs-engine] read-only-export = PATH`.
    public var configPath: String
    public var keyPath: String
    public var insecure: Bool
    /// Threads for fast operations (the old command line's second number).
    public var workers: Int
    /// Most handles one connection may hold.
    public var handleLimit: Int
    /// Most connections at once.
    public var connectionLimit: Int

    public init(
        listeners: [QTFSListener], whitelistPath: String, whitelistOptional: Bool, configPath: String,
        keyPath: String, insecure: Bool, workers: Int, handleLimit: Int = 4096, connectionLimit: Int = 256
    ) {
        self.listeners = listeners
        self.whitelistPath = whitelistPath
        self.whitelistOptional = whitelistOptional
        self.configPath = configPath
        self.keyPath = keyPath
        self.insecure = insecure
        self.workers = workers
        self.handleLimit = handleLimit
        self.connectionLimit = connectionLimit
    }

    /// The original's whitelist location.
    public static let defaultWhitelistPath = "/etc/qtfs/whitelist"
    /// Where the engine listens when nothing else is said: the original's vsock port, any CID.
    public static let defaultListen = Endpoint.vsock(cid: UInt32.max, port: 12345)

    /// Loads the whitelist and adds dpuctl's read-only exports. At least one export is required.
    public func loadPolicy() throws(ConfigError) -> QTFSWhitelist {
        var whitelist = try QTFSWhitelist.load(whitelistPath, optional: whitelistOptional)
        if let config = try ConfigFile.load(configPath, optional: true) {
            for section in config.sections(named: "qtfs-engine") {
                try section.rejectUnknownKeys(["listen", "read-only-export", "workers"])
                for entry in section.values("read-only-export") {
                    try whitelist.addReadOnlyRoot(entry.value, file: config.path, line: entry.line)
                }
            }
        }
        guard !(whitelist.entries[.mount] ?? []).isEmpty else {
            throw ConfigError(
                path: whitelistPath, line: nil,
                "no export: at least one [Mount] Path= entry (or a read-only-export in \(configPath)) is required")
        }
        return whitelist
    }
}

/// State shared by the engine's connections.
final class EngineCore: Sendable {
    let server: QTFSFileServer
    let fast: WorkerPool
    let blocking: WorkerPool
    let poller: Poller
    let logger: Logger
    let connections = Mutex([UInt64: EngineConnection]())
    let nextConnection = Atomic<UInt64>(1)

    init(server: QTFSFileServer, workers: Int, logger: Logger) throws(SystemError) {
        self.server = server
        self.logger = logger
        fast = WorkerPool(name: "qtfs-worker", minimum: workers, maximum: workers)
        blocking = WorkerPool(name: "qtfs-blocking", minimum: 0, maximum: 512)
        poller = try Poller(fast: fast)
    }

    func ended(_ connection: EngineConnection) {
        connections.withLock { _ = $0.removeValue(forKey: connection.id) }
        logger.info("connection \(connection.peer) closed")
    }
}

/// The qtfs engine: serves whitelisted host paths to the DPU's FUSE clients.
public final class QTFSEngine: Daemon {
    private let configuration: QTFSEngineConfiguration
    private let logger: Logger
    private let core: EngineCore
    private let state = Mutex(State())

    private struct State {
        var listeners: [(fd: FileDescriptor, key: PreSharedKey?, local: Bool, description: String)] = []
        var stopping = false
        /// Connections still in their handshake (each has a thread): bounded apart from the authenticated
        /// ones, which only they may fill.
        var opening = 0
        var acceptors = 0
        var waiter: CheckedContinuation<Void, Never>?
    }

    public init(_ configuration: QTFSEngineConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let whitelist = try configuration.loadPolicy()
        core = try EngineCore(
            server: QTFSFileServer(whitelist: whitelist, handleLimit: configuration.handleLimit),
            workers: configuration.workers, logger: logger)
        for section in whitelist.ignoredSections {
            logger.warning("\(configuration.whitelistPath): section [\(section)] is not a qtfs operation type; ignored")
        }
    }

    public func start() async throws {
        // A write to a client that went away must be an error on that connection, not the engine's death.
        Signals.ignore(SIGPIPE)
        ThreadInterruption.install()
        // Modes come from the client, already masked by the caller's umask there.
        umask(0)
        var bound: [(FileDescriptor, PreSharedKey?, Bool, String)] = []
        do {
            for listener in configuration.listeners {
                let fd: FileDescriptor
                let endpoint: Endpoint
                switch listener {
                case .endpoint(let address):
                    fd = try Socket.listen(on: address, backlog: 128)
                    endpoint = address
                case .activated(let socket, _):
                    fd = socket
                    endpoint = try Self.endpoint(of: socket)
                }
                let key = try PeerAuthentication.listenerKey(
                    for: [endpoint], keyPath: configuration.keyPath, insecure: configuration.insecure)
                var local = false
                if case .unix = endpoint { local = true }
                bound.append((fd, key, local, endpoint.description))
            }
        } catch {
            for (fd, _, _, _) in bound { fd.closeQuietly() }
            throw error
        }
        state.withLock { $0.listeners = bound.map { ($0.0, $0.1, $0.2, $0.3) } }
        try core.poller.start()
    }

    /// The address an inherited listening socket is bound to, so that the key rules apply to it too.
    static func endpoint(of fd: FileDescriptor) throws(SystemError) -> Endpoint {
        let address = try fd.localAddress()
        switch address.family {
        case AF_UNIX: return .unix(path: address.description)
        case AF_VSOCK:
            let parts = address.description.dropFirst("vsock://".count).split(separator: ":")
            return .vsock(cid: UInt32(parts.first ?? "") ?? UInt32.max, port: UInt32(parts.last ?? "") ?? 0)
        default:
            let host = address.description.split(separator: ":").dropLast().joined(separator: ":")
            return .tcp(host: host.trimmingCharacters(in: "[]"), port: address.port)
        }
    }

    public func serve() async throws {
        let listeners = state.withLock { $0.listeners }
        state.withLock { $0.acceptors = listeners.count }
        for listener in listeners {
            try OSThread.start(name: "qtfs-accept") { [self] in accept(listener.fd, key: listener.key, local: listener.local) }
        }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { continuation in
                    let already = state.withLock { state -> Bool in
                        if state.stopping { return true }
                        state.waiter = continuation
                        return false
                    }
                    if already { continuation.resume() }
                }
            } onGracefulShutdown: {
                self.stop(drain: true)
            }
        } onCancel: {
            self.stop(drain: false)
        }
    }

    /// Stops accepting, tells every client to go, and (when `drain`) lets each connection end on its own:
    /// the client ends its stream, the engine answers what it sent, then closes (up to 5 s); then ends
    /// what is left and wakes `serve`.
    private func stop(drain: Bool) {
        let listeners = state.withLock { state -> [FileDescriptor] in
            state.stopping = true
            return state.listeners.map(\.fd)
        }
        for fd in listeners { try? fd.shutdown(.both) }
        let connections = core.connections.withLock { Array($0.values) }
        for connection in connections { connection.sendGoAway(.shuttingDown, "the engine is stopping") }
        try? OSThread.start(name: "qtfs-stop") { [self] in
            if drain {
                for _ in 0..<250 where !core.connections.withLock({ $0.isEmpty }) { usleep(20_000) }
            }
            for connection in core.connections.withLock({ Array($0.values) }) { connection.socket.shutdown() }
            for _ in 0..<100 where !core.connections.withLock({ $0.isEmpty }) { usleep(20_000) }
            state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }

    private func accept(_ listener: FileDescriptor, key: PreSharedKey?, local: Bool) {
        while !state.withLock({ $0.stopping }) {
            let client: FileDescriptor
            do {
                guard let accepted = try listener.accept() else { continue }
                client = accepted
            } catch {
                if state.withLock({ $0.stopping }) { break }
                logger.error("accept: \(error)")
                usleep(100_000)
                continue
            }
            if core.connections.withLock({ $0.count }) >= configuration.connectionLimit {
                logger.warning("refusing a connection: \(configuration.connectionLimit) connections are open")
                client.closeQuietly()
                continue
            }
            let opening = state.withLock { state -> Bool in
                guard state.opening < QTFSEngine.maximumOpening else { return false }
                state.opening += 1
                return true
            }
            guard opening else {
                logger.warning("refusing a connection: \(QTFSEngine.maximumOpening) others are still in their handshake")
                client.closeQuietly()
                continue
            }
            do {
                try OSThread.start(name: "qtfs-conn") { [self] in serve(client, key: key, local: local) }
            } catch {
                state.withLock { $0.opening -= 1 }
                client.closeQuietly()
            }
        }
        listener.closeQuietly()
    }

    /// Connections at most in their handshake at once; each gets 10 s for all of it.
    static let maximumOpening = 64
    static let sendTimeoutSeconds = 30

    private func serve(_ client: FileDescriptor, key: PreSharedKey?, local: Bool) {
        var opened = false
        defer { if !opened { state.withLock { $0.opening -= 1 } } }
        let peer = (try? client.peerAddress().description) ?? "peer"
        if local {
            // A unix socket: only our own user (root) may use the engine.
            guard let credentials = try? client.peerCredentials(), credentials.uid == geteuid() else {
                logger.warning("refusing \(peer): not uid \(geteuid())")
                client.closeQuietly()
                return
            }
        } else {
            try? client.setSocketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            try? client.enableKeepAlive(idleSeconds: 30, intervalSeconds: 10, probes: 3)
        }
        let socket: FramedSocket
        do {
            (socket, _) = try FramedSocket.open(client, role: .server, key: key)
        } catch {
            logger.warning("refusing \(peer): \(error)")
            client.closeQuietly()
            return
        }
        opened = true
        state.withLock { $0.opening -= 1 }
        // A client that stops reading its replies holds the thread answering it (and, through the
        // connection's write lock, every other worker answering it): a reply that cannot move for this
        // long ends the connection instead.
        try? client.setSendTimeout(seconds: QTFSEngine.sendTimeoutSeconds)
        let connection = EngineConnection(
            id: core.nextConnection.add(1, ordering: .relaxed).oldValue, socket: socket, peer: peer, engine: core)
        let admitted = core.connections.withLock { connections -> Bool in
            if state.withLock({ $0.stopping }) { return false }
            connections[connection.id] = connection
            return true
        }
        guard admitted else {
            connection.sendGoAway(.shuttingDown, "the engine is stopping")
            return
        }
        logger.info("connection \(peer) authenticated")
        connection.run()
    }

    public func reload() async throws {
        let whitelist = try configuration.loadPolicy()
        core.server.update(whitelist)
        logger.info("whitelist reloaded: \(whitelist.summary)")
    }

    public func status() -> String {
        let connections = core.connections.withLock { Array($0.values) }
        let handles = connections.reduce(0) { $0 + $1.session.handleCount }
        return "\(connections.count) connection(s), \(handles) open handle(s); \(core.server.whitelist.summary)"
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(self.drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}

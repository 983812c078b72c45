import DPUConfig
import DPUSystem
import DPUSystemd
import DPUWire
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import SystemPackage

/// rexec_server as a daemon: `start` binds (or adopts) the listeners and loads the whitelist and keys,
/// `serve` runs the event loop on its own thread until SIGTERM, `reload` (SIGHUP) swaps whitelist and
/// keys for new connections without touching running programs.
public final class RexecServer: Daemon {
    private let settings: RexecServerSettings
    private let logger: Logger
    private let snapshot = Snapshot()
    private let core = Mutex<CoreBox?>(nil)

    /// The loop-thread object, handed between threads only before the loop runs and through `execute`.
    private final class CoreBox: @unchecked Sendable {
        let core: ServerCore
        init(_ core: ServerCore) { self.core = core }
    }

    public init(settings: RexecServerSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    public func start() async throws {
        // A stray signal must not take down a daemon that holds other people's programs; a write to a
        // vanished client is an error on that connection, not the end of the server.
        Signals.ignore(SIGPIPE)
        Signals.ignore(SIGUSR1)
        Signals.ignore(SIGUSR2)
        let whitelist = try Whitelist.load(settings.whitelistPath)
        if whitelist.exists {
            logger.info("whitelist: \(whitelist.summary)")
        } else {
            logger.warning("whitelist: \(whitelist.summary)")
        }
        let core = try ServerCore(settings: settings, whitelist: whitelist, logger: logger, snapshot: snapshot)
        try prepareRuntimeDirectory()
        let keys = try Self.keys(for: listenerEndpoints(), settings)
        for fd in settings.activated {
            let endpoint = Self.endpoint(of: fd)
            try core.adopt(fd, endpoint: endpoint, key: keys[endpoint] ?? nil, ownsPath: false)
            logger.info("listening on \(endpoint) (socket activation)")
        }
        for endpoint in settings.listen {
            if case .unix(let path) = endpoint {
                // The original's socket directory, root only.
                let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
                if !directory.isEmpty { mkdir(directory, 0o700) }
            }
            let fd = try Socket.listen(on: endpoint, backlog: 1024)
            try core.adopt(fd, endpoint: endpoint, key: keys[endpoint] ?? nil, ownsPath: true)
            logger.info("listening on \(endpoint)\(keys[endpoint] ?? nil != nil ? " (pre-shared key required)" : "")")
        }
        try core.watchChildren()
        self.core.withLock { $0 = CoreBox(core) }
    }

    public func serve() async throws {
        guard let box = core.withLock({ $0 }) else { return }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                // A thread of its own: the event loop must not occupy a Swift concurrency thread.
                try await OSThread.run(name: "rexec-server") {
                    // SIGCHLD goes to the thread that started the child when that thread takes it: this
                    // one, which the exit wakes anyway (its pidfd). Blocked here, it went to the main
                    // thread (libdispatch's sigsuspend), woken once more per program.
                    Signals.unblock([SIGCHLD])
                    try box.core.loop.run()
                }
            } onGracefulShutdown: {
                box.core.loop.execute { box.core.shutDown() }
            }
        } onCancel: {
            // The shutdown limit passed: stop the loop whatever is still in flight.
            box.core.loop.execute { box.core.loop.stop() }
        }
    }

    public func reload() async throws {
        guard let box = core.withLock({ $0 }) else { return }
        let whitelist = try Whitelist.load(settings.whitelistPath)
        let keys = try Self.keys(for: listenerEndpoints(), settings)
        logger.info("whitelist: \(whitelist.summary)")
        let sendable = UncheckedBox((whitelist, keys))
        box.core.loop.execute { box.core.reload(whitelist: sendable.value.0, keys: sendable.value.1) }
    }

    public func status() -> String { snapshot.line }

    private func listenerEndpoints() -> [Endpoint] {
        settings.listen + settings.activated.map(Self.endpoint(of:))
    }

    /// The key for each network listener (PeerAuthentication decides; unix sockets use SO_PEERCRED).
    private static func keys(for endpoints: [Endpoint], _ settings: RexecServerSettings) throws -> [Endpoint: PreSharedKey?] {
        var keys: [Endpoint: PreSharedKey?] = [:]
        for endpoint in endpoints {
            keys[endpoint] = try PeerAuthentication.listenerKey(for: [endpoint], keyPath: settings.keyPath, insecure: settings.insecure)
        }
        return keys
    }

    /// What a socket-activated fd listens on.
    static func endpoint(of fd: SystemPackage.FileDescriptor) -> Endpoint {
        guard let address = try? fd.localAddress() else { return .unix(path: "/(unknown)") }
        switch address.family {
        case AF_UNIX: return .unix(path: address.description)
        case AF_VSOCK:
            if case .vsock(let cid, let port)? = try? Endpoint(parsing: address.description) { return .vsock(cid: cid, port: port) }
            return .vsock(cid: UInt32.max, port: 0)
        default:
            var host = address.description
            if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
            host = host.trimmingCharacters(in: "[]")
            return .tcp(host: host, port: address.port)
        }
    }

    /// `<runtime-dir>/listeners`, where the listening sockets of carried listeners live: root only, and
    /// emptied of what a previous server left.
    private func prepareRuntimeDirectory() throws {
        let directory = settings.runtimeDirectory + "/listeners"
        mkdir(settings.runtimeDirectory, 0o700)
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SystemError(Errno(rawValue: errno), "mkdir", directory)
        }
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".sock") { unlink("\(directory)/\(name)") }
        }
    }
}

/// Moves a value to another thread when the sender guarantees it is not used concurrently.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var result = Substring(self)
        while let first = result.first, set.contains(first) { result.removeFirst() }
        while let last = result.last, set.contains(last) { result.removeLast() }
        return String(result)
    }
}

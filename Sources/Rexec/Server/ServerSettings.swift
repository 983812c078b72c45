import DPUConfig
import DPUSystem
import Glibc
import SystemPackage

/// How rexec_server runs: from the command line, `CMD_NET_ADDR`, the `[rexec-server]` section of the
/// configuration and built-in defaults, in that order.
///
/// ```
/// [rexec-server]
/// listen = tcp://198.51.100.1:7777      # repeatable
/// whitelist = /etc/rexec/whitelist
/// allow-uid = 0                          # unix-socket peers allowed (SO_PEERCRED); repeatable
/// grace = 10                             # seconds between SIGTERM and SIGKILL for an abandoned program
/// stop-policy = leave                    # on SIGTERM: leave (programs keep running) or terminate
/// max-sessions = 1024
/// max-pending = 64                       # connections still in their handshake
/// runtime-dir = /var/run/rexec
/// keepalive = 60                         # seconds a silent TCP or vsock peer is given before its client is gone
/// ```
public struct RexecServerSettings: Sendable {
    public var listen: [Endpoint] = []
    /// Sockets from socket activation (already listening).
    public var activated: [SystemPackage.FileDescriptor] = []
    public var keyPath: String = KeyFile.defaultPath
    public var insecure = false
    public var whitelistPath: String = RexecDefaults.whitelist
    public var allowedUIDs: Set<uid_t> = [0]
    /// Between SIGTERM and SIGKILL when a client disappears (or on stop with the terminate policy).
    public var grace: Duration = .seconds(10)
    public var stopPolicy: StopPolicy = .leave
    public var maximumSessions = 1024
    public var maximumPending = 64
    /// A connection must have sent its request within this time.
    public var handshakeTimeout: Duration = .seconds(10)
    public var runtimeDirectory: String = RexecDefaults.runtimeDirectory
    /// How long a TCP peer may be silent (no keep-alive answer, unacknowledged data) before it counts as
    /// gone and its program gets the vanished-client treatment.
    public var keepalive: Int = 60

    public enum StopPolicy: String, Sendable {
        /// Programs keep running when the server stops (the original unit's KillMode=process); clients are
        /// told and exit 255.
        case leave
        /// Programs get SIGTERM, then SIGKILL after the grace period.
        case terminate
    }

    public init() {}

    /// Fills what the command line left open from `CMD_NET_ADDR`, the configuration file and defaults.
    /// `listenGiven`: --listen was used (or sockets were activated).
    public mutating func complete(configPath: String, whitelistGiven: Bool) throws(ConfigError) {
        let config = try ConfigFile.load(configPath, optional: true)
        let section = config?.sections(named: "rexec-server").first
        if let section {
            try section.rejectUnknownKeys([
                "listen", "whitelist", "allow-uid", "grace", "stop-policy", "max-sessions", "max-pending", "runtime-dir",
                "keepalive",
            ])
        }
        if listen.isEmpty && activated.isEmpty {
            if let variable = getenv("CMD_NET_ADDR"), variable.pointee != 0 {
                let text = String(decoding: UnsafeRawBufferPointer(start: variable, count: strlen(variable)), as: UTF8.self)
                do { listen = [try Endpoint(parsing: text)] } catch {
                    throw ConfigError(path: "CMD_NET_ADDR", line: nil, error.description)
                }
            } else if let section, !section.values("listen").isEmpty {
                for entry in section.values("listen") {
                    do { listen.append(try Endpoint(parsing: entry.value)) } catch { throw section.error(entry, error.description) }
                }
            } else {
                listen = [RexecDefaults.endpoint]
            }
        }
        guard let section else { return }
        if !whitelistGiven, let path = try section.path("whitelist") { whitelistPath = path }
        let uids = section.values("allow-uid")
        if !uids.isEmpty {
            allowedUIDs = []
            for entry in uids {
                guard let uid = uid_t(entry.value) else { throw section.error(entry, "expected a numeric uid, got `\(entry.value)`") }
                allowedUIDs.insert(uid)
            }
        }
        if let seconds = try section.integer("grace", in: 0...3600) { grace = .seconds(seconds) }
        if let entry = try section.value("stop-policy") {
            guard let policy = StopPolicy(rawValue: entry.value) else {
                throw section.error(entry, "expected leave or terminate, got `\(entry.value)`")
            }
            stopPolicy = policy
        }
        if let count = try section.integer("max-sessions", in: 1...65536) { maximumSessions = count }
        if let count = try section.integer("max-pending", in: 1...4096) { maximumPending = count }
        if let path = try section.path("runtime-dir") { runtimeDirectory = path }
        if let seconds = try section.integer("keepalive", in: 3...86400) { keepalive = seconds }
    }
}

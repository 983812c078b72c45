import DPUConfig
import DPUSystem
import DPUSystemd
import DPUWire
import Glibc
import SystemPackage

/// What the command line says. Everything not given comes from the `[udsproxy]` section of the
/// configuration file, then from the defaults.
public struct UDSProxyOptions: Sendable {
    /// Where the peer udsproxyd may connect to us (`--listen`).
    public var listen: [Endpoint]
    /// The peer udsproxyd to connect to (`--peer`).
    public var peer: Endpoint?
    public var keyPath: String
    public var configPath: String
    /// The original's whitelist file (`--whitelist`), read for its `[Udsconnect]` section.
    public var whitelistPath: String?
    /// Allow network listeners and a peer without a key.
    public var insecure: Bool
    /// Sockets from systemd: a unix one is the control socket, TCP or vsock ones are peer listeners.
    public var activatedSockets: [Systemd.ListenedSocket]

    public init(
        listen: [Endpoint] = [], peer: Endpoint? = nil, keyPath: String = KeyFile.defaultPath,
        configPath: String = ConfigDefaults.path, whitelistPath: String? = nil, insecure: Bool = false,
        activatedSockets: [Systemd.ListenedSocket] = []
    ) {
        self.listen = listen
        self.peer = peer
        self.keyPath = keyPath
        self.configPath = configPath
        self.whitelistPath = whitelistPath
        self.insecure = insecure
        self.activatedSockets = activatedSockets
    }
}

/// udsproxyd's settings, resolved from the options, the configuration file and the defaults.
///
/// `[udsproxy]` keys (all optional):
///
/// | key | meaning | default |
/// |---|---|---|
/// | `listen` | URL the peer connects to (repeatable) | none |
/// | `peer` | URL of the peer to connect to | none |
/// | `control` | path of the local control socket | `/var/run/qtfs/remote_uds.sock` |
/// | `allow` | path the peer may reach (repeatable; sockets and passed files) | see `whitelist` |
/// | `whitelist` | the original's whitelist file, for its `[Udsconnect]` section | `/etc/qtfs/whitelist` |
/// | `allow-users` | users (names or uids) that may use the control socket | `root` |
/// | `legacy-clients` | also serve the original's preload library and kernel hook | `yes` |
///
/// With no `allow` and no `[Udsconnect]` entry the whitelist is `UDSProxyWhitelist.defaultPaths`.
public struct UDSProxySettings: Sendable {
    public static let defaultControlPath = "/var/run/qtfs/remote_uds.sock"
    public static let defaultWhitelistPath = "/etc/qtfs/whitelist"
    static let keys: Set<String> = ["listen", "peer", "control", "allow", "whitelist", "allow-users", "legacy-clients"]

    public var listen: [Endpoint]
    public var peer: Endpoint?
    public var control: String
    public var whitelist: UDSProxyWhitelist
    /// Where the whitelist came from, for the log.
    public var whitelistSource: String
    public var allowedUsers: Set<uid_t>
    public var legacyClients: Bool
    /// The key our listeners demand and our dialer presents (nil: unauthenticated, loopback or --insecure).
    public var listenerKey: PreSharedKey?
    public var peerKey: PreSharedKey?

    /// Reads the configuration and whitelist files. Errors name the file and line.
    public static func load(_ options: UDSProxyOptions) throws -> UDSProxySettings {
        let config = try ConfigFile.load(options.configPath, optional: options.configPath == ConfigDefaults.path)
        let sections = config?.sections(named: "udsproxy") ?? []
        for section in sections { try section.rejectUnknownKeys(keys) }
        func single(_ key: String) throws(ConfigError) -> (ConfigSection, ConfigEntry)? {
            var found: (ConfigSection, ConfigEntry)?
            for section in sections {
                if let entry = try section.value(key) {
                    if let first = found {
                        throw section.error(entry, "`\(key)` is given twice in [udsproxy] (first on line \(first.1.line))")
                    }
                    found = (section, entry)
                }
            }
            return found
        }

        var listen = options.listen
        if listen.isEmpty {
            for section in sections {
                for entry in section.values("listen") {
                    do { listen.append(try Endpoint(parsing: entry.value)) } catch { throw section.error(entry, error.description) }
                }
            }
        }
        var peer = options.peer
        if peer == nil, let (section, _) = try single("peer") { peer = try section.endpoint("peer") }
        var control = defaultControlPath
        if let (section, entry) = try single("control") {
            guard let path = try section.path("control"), path.utf8.count <= Endpoint.maximumUnixPathLength else {
                throw section.error(entry, "the control socket path is longer than \(Endpoint.maximumUnixPathLength) bytes")
            }
            control = path
        }
        var legacyClients = true
        if let (section, _) = try single("legacy-clients") { legacyClients = try section.bool("legacy-clients") ?? true }

        var allowedUsers: Set<uid_t> = [0]
        if let (section, entry) = try single("allow-users") {
            allowedUsers = [0]
            for name in entry.value.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" }) {
                if let uid = uid_t(name) {
                    allowedUsers.insert(uid)
                } else if let uid = Accounts.userID(named: String(name)) {
                    allowedUsers.insert(uid)
                } else {
                    throw section.error(entry, "no user named `\(name)`; give a user name or a numeric uid")
                }
            }
        }

        // The whitelist: the original's file ([Udsconnect]) and `allow` entries.
        var whitelist = UDSProxyWhitelist(paths: [])
        var sources: [String] = []
        let whitelistPath: String
        var whitelistOptional = false
        if let path = options.whitelistPath {
            whitelistPath = path
        } else if let (section, _) = try single("whitelist"), let path = try section.path("whitelist") {
            whitelistPath = path
        } else {
            whitelistPath = defaultWhitelistPath
            whitelistOptional = true
        }
        if let file = try ConfigFile.load(whitelistPath, optional: whitelistOptional) {
            let paths = try UDSProxyWhitelist.originalEntries(file)
            for path in paths { whitelist.add(path) }
            if !paths.isEmpty { sources.append("\(whitelistPath) [Udsconnect]") }
        }
        for section in sections {
            for entry in section.values("allow") {
                guard entry.value.hasPrefix("/") else { throw section.error(entry, "expected an absolute path, got `\(entry.value)`") }
                whitelist.add(entry.value)
                if !sources.contains("\(section.file) [udsproxy]") { sources.append("\(section.file) [udsproxy]") }
            }
        }
        if whitelist.isEmpty {
            whitelist = UDSProxyWhitelist(paths: UDSProxyWhitelist.defaultPaths)
            sources.append("built-in default")
        }

        // Keys: what PeerAuthentication decides for every daemon.
        var listenerEndpoints = listen
        for socket in options.activatedSockets {
            if let endpoint = try? endpointOf(socket.fd), !isUnix(endpoint) { listenerEndpoints.append(endpoint) }
        }
        guard peer != nil || !listenerEndpoints.isEmpty else {
            throw UDSProxyError(
                "no peer to talk to: give --peer URL and/or --listen URL ([udsproxy] peer/listen in \(options.configPath)), or the original's THREADS ADDR PORT PEER_ADDR PEER_PORT")
        }
        let listenerKey = try PeerAuthentication.listenerKey(
            for: listenerEndpoints, keyPath: options.keyPath, insecure: options.insecure)
        var peerKey: PreSharedKey? = nil
        if let peer {
            peerKey = try PeerAuthentication.clientKey(for: peer, keyPath: options.keyPath)
            if peerKey == nil && !peer.isLocalOnly && !options.insecure {
                throw KeyFileError(
                    path: options.keyPath,
                    "does not exist, and the peer \(peer) is on another machine: create a key with `dpuctl key generate` and copy it to the peer, or run with --insecure")
            }
        }

        return UDSProxySettings(
            listen: listen, peer: peer, control: control, whitelist: whitelist,
            whitelistSource: sources.joined(separator: ", "), allowedUsers: allowedUsers, legacyClients: legacyClients,
            listenerKey: listenerKey, peerKey: peerKey)
    }

    static func isUnix(_ endpoint: Endpoint) -> Bool {
        if case .unix = endpoint { return true }
        return false
    }

    /// The endpoint a socket-activated descriptor listens on.
    static func endpointOf(_ fd: FileDescriptor) throws(SystemError) -> Endpoint? {
        let address = try fd.localAddress()
        switch address.family {
        case AF_UNIX: return .unix(path: address.description)
        case AF_INET, AF_INET6:
            var host = address.description
            if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
            host = host.trimmingPrefix("[").description
            if host.hasSuffix("]") { host.removeLast() }
            return .tcp(host: host, port: address.port)
        case AF_VSOCK:
            return try? Endpoint(parsing: address.description)
        default: return nil
        }
    }
}

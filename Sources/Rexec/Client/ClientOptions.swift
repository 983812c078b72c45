import DPUConfig
import DPUSystem
import Glibc

/// What `rexec` was asked to do. Byte strings, not `String`: argv and the environment are passed on
/// exactly, whatever their encoding.
public struct RexecClientOptions: Sendable, Equatable {
    /// `--connect`: wins over `CMD_NET_ADDR` and the configuration.
    public var connect: String?
    public var keyPath: String = KeyFile.defaultPath
    public var configPath: String = ConfigDefaults.path
    /// The program and its arguments (`command[0]` is the program).
    public var command: [[UInt8]] = []
    /// nil: TTY mode when stdin is a terminal.
    public var tty: Bool?
    /// `-e NAME=VALUE` (set) and `-u NAME` (unset), applied in order after `--clear-env`.
    public var environmentEdits: [EnvironmentEdit] = []
    public var clearEnvironment = false
    /// `--exclude-fd`: fd numbers left out (they stay with the client only).
    public var excludedDescriptors: [Int32] = []
    /// `--exclude-fd all`: carry nothing above 2.
    public var excludeAllDescriptors = false
    /// `--cwd`: the working directory on the peer instead of ours.
    public var workingDirectory: [UInt8]?
    /// `--daemon-pidfile`: the program daemonizes and writes its daemon's pid there (`qemu -daemonize
    /// -pidfile PATH`); a stand-in is left here for the daemon. Relative to the working directory.
    public var daemonPidFile: [UInt8]?

    public enum EnvironmentEdit: Sendable, Equatable {
        case set([UInt8])  // NAME=VALUE
        case unset([UInt8])  // NAME
    }

    public init() {}

    /// The connection address: `--connect`, else `CMD_NET_ADDR`, else `[rexec] connect` in the
    /// configuration, else the original's unix socket.
    public func endpoint() throws(RexecError) -> Endpoint {
        if let connect { return try parse(connect, "--connect") }
        if let variable = getenv("CMD_NET_ADDR"), variable.pointee != 0 {
            return try parse(String(decoding: UnsafeRawBufferPointer(start: variable, count: strlen(variable)), as: UTF8.self), "CMD_NET_ADDR")
        }
        do {
            if let config = try ConfigFile.load(configPath, optional: true),
                let section = config.sections(named: "rexec").first,
                let endpoint = try section.endpoint("connect")
            {
                return endpoint
            }
        } catch {
            throw RexecError(.usage, "\(error)")
        }
        return RexecDefaults.endpoint
    }

    private func parse(_ text: String, _ source: String) throws(RexecError) -> Endpoint {
        do { return try Endpoint(parsing: text) } catch { throw RexecError(.usage, "\(source): \(error)") }
    }
}

/// The original's fixed paths, kept as defaults.
public enum RexecDefaults {
    public static let socketPath = "/var/run/rexec/rexec_uds.sock"
    public static let endpoint = Endpoint.unix(path: socketPath)
    /// `/var/run/rexec/pids/<client pid>` holds the remote pid (read by tools that map local to remote pids).
    public static let pidDirectory = "/var/run/rexec/pids"
    public static let whitelist = "/etc/rexec/whitelist"
    /// Where the server puts the listening sockets it creates for carried listeners.
    public static let runtimeDirectory = "/var/run/rexec"
}

import ArgumentParser
import DPUSystem
import DPUSystemd
import UDSProxy

/// `udsproxyd`: carries unix-socket connections between the host and the DPU.
struct UDSProxyCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("udsproxy"),
            abstract: "Carry unix-socket connections between the host and the DPU.",
            discussion: """
                Runs on both machines as peers. A process started with LD_PRELOAD=libudsproxy.so whose \
                connect() to a unix socket fails locally is connected to the same path on the peer. \
                The peer connects to --listen, or udsproxyd connects to --peer, or both (then each side's \
                own connections use the link it dialed); [udsproxy] in the configuration gives the same \
                settings, and systemd may pass the sockets. Paths the peer may reach (sockets, and files \
                passed inside connections) are those of the whitelist: [Udsconnect] of /etc/qtfs/whitelist \
                (or --whitelist), and [udsproxy] allow = PATH. The control socket for local clients is \
                /var/run/qtfs/remote_uds.sock, where the original's clients are served too. \
                The original's command line `udsproxyd THREADS ADDR PORT PEER_ADDR PEER_PORT` is accepted \
                (TCP for IPv4 addresses, vsock for CIDs). SIGHUP reloads the whitelist and keys.
                """)
    }

    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var whitelist: WhitelistOption

    @Option(help: ArgumentHelp("The peer udsproxyd: tcp://HOST:PORT or vsock://CID:PORT.", valueName: "url"))
    var peer: String?

    @Argument(help: ArgumentHelp("The original's positional form: THREADS ADDR PORT PEER_ADDR PEER_PORT.", visibility: .hidden))
    var legacy: [String] = []

    mutating func validate() throws {
        guard legacy.isEmpty || legacy.count == 5 else {
            throw ValidationError("expected no positional arguments or the original's THREADS ADDR PORT PEER_ADDR PEER_PORT")
        }
        if !legacy.isEmpty {
            guard daemon.listen.isEmpty && peer == nil else {
                throw ValidationError("give either --listen/--peer or the original's THREADS ADDR PORT PEER_ADDR PEER_PORT, not both")
            }
            let (listen, peer) = try Self.legacyEndpoints(legacy)
            daemon.listen = [listen.description]
            self.peer = peer.description
        }
    }

    /// The original's arguments: the thread count (only 1 was ever supported; any positive number is
    /// accepted and ignored), then local and peer address and port. An IPv4 address means its TCP test
    /// mode, a number its default vsock mode (a CID).
    static func legacyEndpoints(_ arguments: [String]) throws -> (listen: Endpoint, peer: Endpoint) {
        guard let threads = Int(arguments[0]), threads > 0 else {
            throw ValidationError("THREADS `\(arguments[0])` must be a positive number")
        }
        func endpoint(_ address: String, _ portText: String, _ what: String) throws -> Endpoint {
            guard let port = UInt16(portText), port > 0 else {
                throw ValidationError("\(what) port `\(portText)` must be a number from 1 to 65535")
            }
            if let cid = UInt32(address) { return .vsock(cid: cid, port: UInt32(port)) }
            let parts = address.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }) else {
                throw ValidationError("\(what) address `\(address)` must be an IPv4 address (TCP) or a vsock CID")
            }
            return .tcp(host: address, port: port)
        }
        return (try endpoint(arguments[1], arguments[2], "local"), try endpoint(arguments[3], arguments[4], "peer"))
    }

    func run() async throws {
        let name = Invocation.commandName("udsproxyd")
        let logger = StderrLogHandler.logger(name)
        try await reportingErrors(name) {
            var peerEndpoint: Endpoint?
            if let peer {
                do { peerEndpoint = try Endpoint(parsing: peer) } catch { throw ValidationError("--peer: \(error)") }
            }
            let options = UDSProxyOptions(
                listen: try daemon.endpoints(), peer: peerEndpoint, keyPath: daemon.key, configPath: daemon.config,
                whitelistPath: whitelist.whitelist, insecure: daemon.insecure, activatedSockets: ActivatedSockets.all)
            try await DaemonRunner.run(UDSProxyDaemon(options: options, logger: logger), logger: logger)
        }
    }
}

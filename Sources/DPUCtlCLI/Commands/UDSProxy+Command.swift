import ArgumentParser

/// `udsproxyd`: carries unix-socket connections between the host and the DPU.
struct UDSProxyCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("udsproxy"),
            abstract: "Carry unix-socket connections between the host and the DPU.",
            discussion: """
                Runs on both machines as peers. A process started with LD_PRELOAD=libudsproxy.so whose \
                connect() to a unix socket fails locally is connected to the same path on the peer. \
                The original's command line `udsproxyd THREADS ADDR PORT PEER_ADDR PEER_PORT` is accepted.
                """)
    }

    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var whitelist: WhitelistOption

    @Option(help: ArgumentHelp("The peer udsproxyd: tcp://HOST:PORT or vsock://CID:PORT.", valueName: "url"))
    var peer: String?

    @Argument(help: ArgumentHelp("The original's positional form: THREADS ADDR PORT PEER_ADDR PEER_PORT.", visibility: .hidden))
    var legacy: [String] = []

    func run() async throws { notAvailableYet("udsproxyd") }
}

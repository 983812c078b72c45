import ArgumentParser

/// `rexec PROGRAM [ARGS...]`: run a program on the peer as if it ran here.
struct RexecCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("rexec"),
            abstract: "Run a program on the peer machine as if it ran here.",
            discussion: """
                The program's standard input, output and error, exit status, signals, environment, working \
                directory, umask and inherited file descriptors are carried, so that the caller cannot tell \
                it from a local program. The peer's address comes from --connect, else CMD_NET_ADDR, else \
                the configuration, else unix:///var/run/rexec/rexec_uds.sock.
                """)
    }

    @OptionGroup var client: ClientOptions

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments.", valueName: "program"))
    var command: [String] = []

    mutating func validate() throws {
        // captureForPassthrough also takes a leading --help and keeps a leading --.
        if command.first == "--help" || command.first == "-h" { throw CleanExit.helpRequest(self) }
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty else { throw ValidationError("missing the program to run") }
    }

    func run() async throws { notAvailableYet("rexec") }
}

/// `rexec_server`: the daemon that runs programs for authenticated peers.
struct RexecServerCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("rexec-server"),
            abstract: "Run programs for authenticated rexec clients.",
            discussion: """
                Listens on --listen addresses, CMD_NET_ADDR, or sockets passed by systemd; runs only \
                programs named in the whitelist (/etc/rexec/whitelist, one per line). SIGHUP reloads the \
                whitelist and keys; SIGTERM stops accepting and tells connected clients.
                """)
    }

    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var whitelist: WhitelistOption

    func run() async throws { notAvailableYet("rexec_server") }
}

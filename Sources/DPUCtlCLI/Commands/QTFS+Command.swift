import ArgumentParser

/// `qtfs_engine` / `engine`: the host's file server.
struct QTFSEngineCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("qtfs-engine"),
            abstract: "Serve whitelisted host paths to the DPU's qtfs mounts.",
            discussion: """
                Every request is confined beneath an exported path and checked against the whitelist \
                (/etc/qtfs/whitelist, the original's format). The original's `engine 4096 16` is accepted.
                """)
    }

    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var whitelist: WhitelistOption

    @Argument(help: ArgumentHelp("The original's positional form: BUFFER_SIZE WORKERS.", visibility: .hidden))
    var legacy: [String] = []

    func run() async throws { notAvailableYet("qtfs_engine") }
}

/// `dpuctl qtfs SUBCOMMAND`.
struct QTFSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qtfs", abstract: "qtfs client commands.", subcommands: [QTFSMountCommand.self])
}

/// `mount.qtfs` / `dpuctl qtfs mount`: the DPU's FUSE client.
struct QTFSMountCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("mount"),
            abstract: "Mount a host path served by qtfs_engine (what `mount -t qtfs` runs).",
            discussion: """
                The mount shows as type fuse.qtfs. `-o proc` mounts the host's /proc, except that self, \
                thread-self and the DPU's own processes resolve to the local procfs.
                """)
    }

    @Option(name: .short, help: ArgumentHelp("Mount options, comma separated.", valueName: "options"))
    var options: String?

    @Flag(help: "Stay in the foreground instead of detaching once the mount is live.")
    var foreground = false

    @OptionGroup var client: ClientOptions

    @Argument(help: ArgumentHelp("The path on the host.", valueName: "host-path"))
    var source: String

    @Argument(help: ArgumentHelp("Where to mount it.", valueName: "mountpoint"))
    var mountpoint: String

    func run() async throws { notAvailableYet("mount.qtfs") }
}

import ArgumentParser
import DPUConfig
import DPUSystem

// Common options, spelled the same in every applet so that scripts and units can rely on them.

/// Options of every daemon.
struct DaemonOptions: ParsableArguments {
    @Option(
        name: .customLong("listen"), help: ArgumentHelp(
            "Listen here (repeatable): tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT.",
            valueName: "url"))
    var listen: [String] = []

    @Option(name: .customLong("key"), help: ArgumentHelp("Pre-shared key file.", valueName: "file"))
    var key: String = KeyFile.defaultPath

    @Option(name: .customLong("config"), help: ArgumentHelp("dpuctl configuration file.", valueName: "file"))
    var config: String = ConfigDefaults.path

    @Flag(help: "Allow a TCP or vsock listener without a key (anyone who reaches it is trusted).")
    var insecure = false

    /// The `--listen` values, parsed.
    func endpoints() throws -> [Endpoint] {
        try listen.map { text in
            do { return try Endpoint(parsing: text) } catch { throw ValidationError("--listen: \(error)") }
        }
    }
}

/// Options of every client.
struct ClientOptions: ParsableArguments {
    @Option(
        name: .customLong("connect"), help: ArgumentHelp(
            "Connect here: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT (wins over CMD_NET_ADDR).",
            valueName: "url"))
    var connect: String?

    @Option(name: .customLong("key"), help: ArgumentHelp("Pre-shared key file.", valueName: "file"))
    var key: String = KeyFile.defaultPath

    @Option(name: .customLong("config"), help: ArgumentHelp("dpuctl configuration file.", valueName: "file"))
    var config: String = ConfigDefaults.path
}

/// `--whitelist FILE`, for the applets that enforce one.
struct WhitelistOption: ParsableArguments {
    @Option(name: .customLong("whitelist"), help: ArgumentHelp("Whitelist file (the original's format).", valueName: "file"))
    var whitelist: String?
}

import ArgumentParser
import DPUConfig
import DPUSystem
import DPUSystemd
import Glibc
import Rexec

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

    @Flag(name: [.customShort("t"), .customLong("tty")], help: "Give the program a terminal (the default when stdin is one).")
    var tty = false

    @Flag(name: [.customShort("T"), .customLong("no-tty")], help: "Never give the program a terminal.")
    var noTTY = false

    @Option(name: [.customShort("e"), .customLong("env")], help: ArgumentHelp("Set a variable for the program (repeatable).", valueName: "name=value"))
    var set: [String] = []

    @Option(name: [.customShort("u"), .customLong("unset")], help: ArgumentHelp("Leave a variable out (repeatable).", valueName: "name"))
    var unset: [String] = []

    @Flag(name: .customLong("clear-env"), help: "Start from an empty environment (then apply -e).")
    var clearEnvironment = false

    @Option(
        name: .customLong("exclude-fd"),
        help: ArgumentHelp("Do not carry these inherited fds above 2 (repeatable; `5`, `5,7` or `all`).", valueName: "fds"))
    var excludeFD: [String] = []

    @Option(name: .customLong("cwd"), help: ArgumentHelp("Working directory on the peer (default: ours).", valueName: "dir"))
    var cwd: String?

    @Option(
        name: .customLong("daemon-pidfile"),
        help: ArgumentHelp(
            "The program daemonizes and writes its daemon's pid to this file (qemu -daemonize -pidfile): once it exits 0, a stand-in for the daemon stays here and its pid replaces the daemon's in the file.",
            valueName: "path"))
    var daemonPidFile: String?

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments.", valueName: "program"))
    var command: [String] = []

    mutating func validate() throws {
        // captureForPassthrough also takes a leading --help and keeps a leading --.
        if command.first == "--help" || command.first == "-h" { throw CleanExit.helpRequest(self) }
        if command.first == "--" { command.removeFirst() }
        guard !command.isEmpty else { throw ValidationError("missing the program to run") }
        if tty && noTTY { throw ValidationError("-t and -T contradict each other") }
        for entry in set where !entry.contains("=") || entry.hasPrefix("=") {
            throw ValidationError("-e \(entry): expected NAME=VALUE")
        }
        if daemonPidFile?.isEmpty == true { throw ValidationError("--daemon-pidfile: expected a path") }
        for list in excludeFD where RexecArguments.parseExcludedFDs(Array(list.utf8)) == nil {
            throw ValidationError("--exclude-fd \(list): expected fd numbers above 2, comma-separated, or `all`")
        }
    }

    func run() async throws {
        RexecArguments.runClient(options())
    }

    /// The same options the hand parser produces for the same arguments.
    func options() -> RexecClientOptions {
        var options = RexecClientOptions()
        options.connect = client.connect
        options.keyPath = client.key
        options.configPath = client.config
        options.command = command.map { Array($0.utf8) }
        options.tty = tty ? true : noTTY ? false : nil
        options.environmentEdits = set.map { .set(Array($0.utf8)) } + unset.map { .unset(Array($0.utf8)) }
        options.clearEnvironment = clearEnvironment
        for list in excludeFD {
            switch RexecArguments.parseExcludedFDs(Array(list.utf8)) {
            case .all?: options.excludeAllDescriptors = true
            case .some(let numbers)?: options.excludedDescriptors += numbers
            case nil: break
            }
        }
        options.workingDirectory = cwd.map { Array($0.utf8) }
        options.daemonPidFile = daemonPidFile.map { Array($0.utf8) }
        return options
    }
}

/// The client's hot path: its few options parsed by hand from the raw argv bytes (argument-parser costs
/// about 1.5 ms at start-up, and argv need not be UTF-8). Anything it does not understand (--help, an
/// unknown option, a missing value) goes to `RexecCommand`, so help and usage errors stay identical.
enum RexecArguments {
    enum Excluded: Equatable {
        case all
        case some([Int32])
    }

    /// Runs the client if `arguments` (after the command name) parse; returns otherwise.
    static func runFast(_ arguments: [[UInt8]]) {
        guard let options = parse(arguments) else { return }
        runClient(options)
    }

    static func parse(_ arguments: [[UInt8]]) -> RexecClientOptions? {
        var options = RexecClientOptions()
        var index = 0
        func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
        /// The value of an option: `--name=value` or the next argument.
        func value(_ argument: [UInt8], _ name: String) -> [UInt8]?? {
            let prefix = Array((name + "=").utf8)
            if argument.starts(with: prefix) { return .some(Array(argument.dropFirst(prefix.count))) }
            guard argument == Array(name.utf8) else { return nil }
            index += 1
            return index < arguments.count ? .some(arguments[index]) : .some(nil)
        }
        while index < arguments.count {
            let argument = arguments[index]
            guard argument.first == UInt8(ascii: "-"), argument.count > 1 else { break }
            if argument == Array("--".utf8) {
                index += 1
                break
            }
            switch argument {
            case Array("-t".utf8), Array("--tty".utf8):
                if options.tty == false { return nil }
                options.tty = true
            case Array("-T".utf8), Array("--no-tty".utf8):
                if options.tty == true { return nil }
                options.tty = false
            case Array("--clear-env".utf8):
                options.clearEnvironment = true
            default:
                if let found = value(argument, "--connect") {
                    guard let found else { return nil }
                    options.connect = text(found)
                } else if let found = value(argument, "--key") {
                    guard let found else { return nil }
                    options.keyPath = text(found)
                } else if let found = value(argument, "--config") {
                    guard let found else { return nil }
                    options.configPath = text(found)
                } else if let found = value(argument, "--cwd") {
                    guard let found else { return nil }
                    options.workingDirectory = found
                } else if let found = value(argument, "--daemon-pidfile") {
                    guard let found, !found.isEmpty else { return nil }
                    options.daemonPidFile = found
                } else if let found = value(argument, "--exclude-fd") {
                    guard let found, let excluded = parseExcludedFDs(found) else { return nil }
                    switch excluded {
                    case .all: options.excludeAllDescriptors = true
                    case .some(let numbers): options.excludedDescriptors += numbers
                    }
                } else if let found = value(argument, "-e") ?? value(argument, "--env") {
                    guard let found, let equals = found.firstIndex(of: UInt8(ascii: "=")), equals > 0 else { return nil }
                    options.environmentEdits.append(.set(found))
                } else if let found = value(argument, "-u") ?? value(argument, "--unset") {
                    guard let found, !found.isEmpty else { return nil }
                    options.environmentEdits.append(.unset(found))
                } else {
                    return nil  // --help, -h, an unknown option: argument-parser answers
                }
            }
            index += 1
        }
        guard index < arguments.count else { return nil }
        options.command = Array(arguments[index...])
        return options
    }

    static func parseExcludedFDs(_ list: [UInt8]) -> Excluded? {
        if list == Array("all".utf8) { return .all }
        var numbers: [Int32] = []
        for part in list.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
            guard let number = Int32(String(decoding: part, as: UTF8.self)), number > 2 else { return nil }
            numbers.append(number)
        }
        return numbers.isEmpty ? nil : .some(numbers)
    }

    /// Runs the client and ends this process the way the remote program ended.
    static func runClient(_ options: RexecClientOptions) -> Never {
        do {
            switch try RexecClient.run(options, warn: { warning("rexec: \($0)") }) {
            case .exit(let status): exit(status)
            case .signal(let signal): Signals.dieOf(signal)
            }
        } catch {
            fail("rexec: \(error.message)", status: error.exitStatus)
        }
    }

    private static func warning(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
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

    @Option(name: .customLong("allow-uid"), help: ArgumentHelp("A uid allowed on unix sockets (repeatable; default 0).", valueName: "uid"))
    var allowUID: [UInt32] = []

    @Option(
        name: .customLong("stop-policy"),
        help: ArgumentHelp("On SIGTERM: leave programs running, or terminate them.", valueName: "leave|terminate"))
    var stopPolicy: String?

    @Option(name: .customLong("grace"), help: ArgumentHelp("Seconds between SIGTERM and SIGKILL for an abandoned program.", valueName: "seconds"))
    var grace: Int?

    func validate() throws {
        if let stopPolicy, RexecServerSettings.StopPolicy(rawValue: stopPolicy) == nil {
            throw ValidationError("--stop-policy: expected leave or terminate, got `\(stopPolicy)`")
        }
        if let grace, !(0...3600).contains(grace) { throw ValidationError("--grace: expected 0 to 3600 seconds") }
    }

    func run() async throws {
        try await reportingErrors(Invocation.commandName("rexec-server")) {
            var settings = RexecServerSettings()
            settings.listen = try daemon.endpoints()
            settings.activated = ActivatedSockets.all.map(\.fd)
            settings.keyPath = daemon.key
            settings.insecure = daemon.insecure
            if let path = whitelist.whitelist { settings.whitelistPath = path }
            try settings.complete(configPath: daemon.config, whitelistGiven: whitelist.whitelist != nil)
            if !allowUID.isEmpty { settings.allowedUIDs = Set(allowUID) }
            if let stopPolicy { settings.stopPolicy = RexecServerSettings.StopPolicy(rawValue: stopPolicy)! }
            if let grace { settings.grace = .seconds(grace) }
            let logger = StderrLogHandler.logger(Invocation.commandName("rexec-server"))
            try await DaemonRunner.run(RexecServer(settings: settings, logger: logger), logger: logger)
        }
    }
}

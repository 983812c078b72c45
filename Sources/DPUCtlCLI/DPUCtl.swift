import ArgumentParser
import DPUSystem
import DPUSystemd
import Dispatch
import Glibc

/// Entry point: dispatch on the name dpuctl was invoked as (busybox style), then on the first argument.
public enum DPUCtl {
    public static let version = "0.1.0"

    /// The process entry point. Synchronous on purpose: the rexec client and the fast paths run before
    /// anything starts a thread (Swift concurrency starts a pool on first use). The client relies on it:
    /// its signals are blocked and read from a signalfd, which only works when no other thread can take
    /// them; and its start-up is on every remote exec's path. Everything else runs in a task.
    public static func main() -> Never {
        ActivatedSockets.collect()
        // The name from the raw argv: CommandLine.arguments (an array of Strings) costs the rexec client
        // start-up time it does not need.
        let raw = rawArguments(from: 0)
        let name = raw.first.map { String(decoding: $0.split(separator: UInt8(ascii: "/")).last ?? [], as: UTF8.self) } ?? "dpuctl"
        let second = raw.count > 1 ? raw[1] : []
        // rexec: the hand parser runs the client, or returns to let argument-parser answer (help, usage).
        if name == "rexec" {
            RexecArguments.runFast(Array(raw.dropFirst()))
        } else if name == "dpuctl" && second == Array("rexec".utf8) {
            RexecArguments.runFast(Array(raw.dropFirst(2)))
        } else if name == "dpuctl" && raw.count == 2 && second == Array("--version".utf8) {
            print(version)
            exit(0)
        }
        let arguments = UncheckedSendable(CommandLine.arguments)
        Task {
            await dispatch(arguments.value)
            exit(0)
        }
        dispatchMain()
    }

    public static func dispatch(_ argv: [String]) async {
        // Socket activation hands fds over in the environment; take them before anything else can start
        // a thread or a child (sd_listen_fds unsets the variables).
        ActivatedSockets.collect()

        let name = argv.first.map { String($0.split(separator: "/").last ?? "dpuctl") } ?? "dpuctl"
        let arguments = Array(argv.dropFirst())
        if let applet = Applets.named(name) {
            Invocation.appletName = applet.name
            // Documentation generators ask every name for its help and completions; an applet that
            // passes its arguments through (rexec) would otherwise take these for a program to run.
            if let generated = generatedDocumentation(applet.command, arguments) {
                print(generated)
                return
            }
            await applet.command.main(arguments)
            return  // main(_:) returns on success; the root parser must not run next
        }
        guard name == "dpuctl" else {
            fail("dpuctl: unknown applet name `\(name)`; `dpuctl --list` shows the names it answers to", status: 127)
        }
        // Fast paths: these are run by scripts (and by `make install`) and must not pay for parsing.
        switch arguments.first {
        case "--version"?:
            print(version)
            return
        case "--list"?:
            for applet in Applets.all { print("\(applet.name) \(applet.directory)") }
            return
        case let word? where !word.hasPrefix("-") && !RootCommand.verbs.contains(word):
            fail("dpuctl: unknown command `\(word)`; `dpuctl --help` lists the commands", status: 127)
        default:
            break
        }
        await RootCommand.main(arguments)
    }
}

/// Carries a value into a task when the sender does not use it concurrently.
private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// argv from `index` on, as the bytes the kernel passed (arguments need not be UTF-8).
private func rawArguments(from index: Int) -> [[UInt8]] {
    let count = Int(CommandLine.argc)
    guard index < count else { return [] }
    return (index..<count).map { position in
        guard let pointer = CommandLine.unsafeArgv[position] else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)))
    }
}

/// The output of `--experimental-dump-help` or `--generate-completion-script SHELL` for `command`, when
/// those are the whole argument list.
private func generatedDocumentation(_ command: any AsyncParsableCommand.Type, _ arguments: [String]) -> String? {
    switch arguments {
    case ["--experimental-dump-help"]:
        return command._dumpHelp()
    case let words where words.first == "--generate-completion-script" && words.count == 2:
        return CompletionShell(rawValue: words[1]).map { command.completionScript(for: $0) }
    case let words where words.count == 1 && words[0].hasPrefix("--generate-completion-script="):
        return CompletionShell(rawValue: String(words[0].dropFirst("--generate-completion-script=".count)))
            .map { command.completionScript(for: $0) }
    default:
        return nil
    }
}

/// `dpuctl` itself: only configuration and the list of verbs.
struct RootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpuctl",
        abstract: "Offload libvirt's management plane to a DPU while the VMs stay on the host.",
        discussion: """
            One binary, many names: invoked as rexec, rexec_server, udsproxyd, qtfs_engine (engine) or \
            mount.qtfs it is that program; as dpuctl it takes a command. `dpuctl --list` prints the names \
            and where `dpuctl install-links` puts them; `dpuctl --version` prints the version.
            """,
        subcommands: [
            RexecCommand.self, RexecServerCommand.self, UDSProxyCommand.self, QTFSEngineCommand.self,
            QTFSCommand.self, RootfsCommand.self, MountCommand.self, KeyCommand.self, InstallLinksCommand.self,
            DemoCommand.self,
        ])

    /// The verbs `dpuctl` accepts (anything else is an unknown command, exit 127).
    static var verbs: Set<String> {
        Set(configuration.subcommands.map { $0._commandName } + ["help"])
    }
}

/// Sockets from socket activation, collected once at start.
enum ActivatedSockets {
    nonisolated(unsafe) private(set) static var all: [Systemd.ListenedSocket] = []

    nonisolated(unsafe) private static var collected = false

    /// Takes the sockets once (sd_listen_fds unsets its variables: a second call would find none).
    static func collect() {
        guard !collected else { return }
        collected = true
        all = Systemd.listenedSockets()
    }
}

/// Prints one line to stderr and exits. Only the CLI layer exits.
func fail(_ message: String, status: Int32) -> Never {
    var line = Array((message + "\n").utf8)
    _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    exit(status)
}

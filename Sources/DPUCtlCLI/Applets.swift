import ArgumentParser

/// One name dpuctl answers to. This table drives dispatch, `dpuctl --list`, `dpuctl install-links`,
/// `make install`'s symlinks, completions and man pages: add an applet here and nowhere else.
struct Applet: Sendable {
    /// The name it is installed and invoked as (a symlink to dpuctl), the original's command name.
    let name: String
    /// The command that runs when invoked under `name`.
    let command: any AsyncParsableCommand.Type
    /// The words after `dpuctl` that reach the same command (`["qtfs", "mount"]`).
    let dpuctlPath: [String]
    /// Where the link goes: `bin`, or `sbin` (mount(8) looks for `mount.TYPE` helpers in /sbin only).
    let directory: String
    /// A daemon: man section 8 and a systemd unit; otherwise section 1.
    let isDaemon: Bool

    var manualSection: Int { isDaemon ? 8 : 1 }
}

enum Applets {
    static let all: [Applet] = [
        Applet(name: "rexec", command: RexecCommand.self, dpuctlPath: ["rexec"], directory: "bin", isDaemon: false),
        Applet(
            name: "rexec_server", command: RexecServerCommand.self, dpuctlPath: ["rexec-server"], directory: "bin",
            isDaemon: true),
        Applet(
            name: "udsproxyd", command: UDSProxyCommand.self, dpuctlPath: ["udsproxy"], directory: "bin",
            isDaemon: true),
        Applet(
            name: "qtfs_engine", command: QTFSEngineCommand.self, dpuctlPath: ["qtfs-engine"], directory: "bin",
            isDaemon: true),
        // The original's engine binary name, kept so that `engine 4096 16` in old scripts works.
        Applet(name: "engine", command: QTFSEngineCommand.self, dpuctlPath: ["qtfs-engine"], directory: "bin", isDaemon: true),
        // mount(8) runs /sbin/mount.qtfs for `mount -t qtfs`.
        Applet(
            name: "mount.qtfs", command: QTFSMountCommand.self, dpuctlPath: ["qtfs", "mount"], directory: "sbin",
            isDaemon: false),
    ]

    static func named(_ name: String) -> Applet? { all.first { $0.name == name } }
}

/// The name the running command was invoked as: an applet name, or nil under `dpuctl`. An applet's
/// command shows it in its usage line, so `rexec_server --help` says `rexec_server` and
/// `dpuctl rexec-server --help` says `rexec-server`.
enum Invocation {
    // Set once by `DPUCtl.dispatch` before any command is parsed; read-only afterwards.
    nonisolated(unsafe) static var appletName: String?

    /// The command name to show: the applet name when invoked through a link, else the dpuctl verb.
    static func commandName(_ dpuctlVerb: String) -> String { appletName ?? dpuctlVerb }
}

import ArgumentParser

/// `dpuctl rootfs`: build the DPU rootfs (/another_rootfs).
struct RootfsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs", abstract: "Prepare the DPU rootfs that libvirtd runs in.",
        subcommands: [RootfsPrepareCommand.self, RootfsStatusCommand.self])
}

struct RootfsOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The rootfs directory.", valueName: "dir"))
    var root: String = "/another_rootfs"
}

struct RootfsPrepareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare", abstract: "Copy a rootfs from this machine or an image and install dpuctl's pieces in it.")

    @OptionGroup var rootfs: RootfsOptions

    @Option(help: ArgumentHelp("Where to copy from: `host` (this machine).", valueName: "source"))
    var from: String = "host"

    @Option(name: .customLong("from-image"), help: ArgumentHelp("A qcow2 or raw disk image to copy from.", valueName: "file"))
    var fromImage: String?

    @Option(help: ArgumentHelp("The host's rexec address baked into the qemu-kvm wrappers.", valueName: "url"))
    var host: String?

    @Flag(help: "Write into a non-empty directory that dpuctl did not create.")
    var force = false

    func run() async throws { notAvailableYet("rootfs prepare") }
}

struct RootfsStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Report what the rootfs is missing.")

    @OptionGroup var rootfs: RootfsOptions

    func run() async throws { notAvailableYet("rootfs status") }
}

import ArgumentParser

/// `dpuctl mount`: the guide's mount plan, applied and undone safely.
struct MountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount", abstract: "Apply, revert and inspect the DPU rootfs's mount plan.",
        subcommands: [MountApplyCommand.self, MountRevertCommand.self, MountStatusCommand.self, MountPlanCommand.self])
}

struct MountPlanOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A mount plan file (dpuctl's configuration format).", valueName: "file"))
    var plan: String?

    @Option(help: ArgumentHelp("The rootfs the plan mounts into.", valueName: "dir"))
    var root: String = "/another_rootfs"
}

struct MountApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Mount what the plan says, idempotently; undo this run's mounts on failure.")
    @OptionGroup var options: MountPlanOptions
    @Flag(name: .customLong("local-only"), help: "Apply everything except the qtfs mounts.")
    var localOnly = false
    func run() async throws { notAvailableYet("mount apply") }
}

struct MountRevertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revert", abstract: "Unmount everything under the rootfs, in reverse order.")
    @OptionGroup var options: MountPlanOptions
    @Flag(help: "Also unmount what the plan did not mount.")
    var all = false
    @Flag(help: "Detach busy mounts lazily instead of failing.")
    var lazy = false
    func run() async throws { notAvailableYet("mount revert") }
}

struct MountStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Compare the plan with what is mounted.")
    @OptionGroup var options: MountPlanOptions
    func run() async throws { notAvailableYet("mount status") }
}

struct MountPlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plan", abstract: "Print the ordered actions without doing anything.")
    @OptionGroup var options: MountPlanOptions
    func run() async throws { notAvailableYet("mount plan") }
}

import ArgumentParser
import DPUConfig
import DPUSystem
import Glibc

/// `dpuctl demo`: the whole offload on one machine (simulated host and DPU in namespaces).
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Show the offload on this machine: a simulated host and DPU, libvirt on the DPU, the VM on the host.",
        subcommands: [DemoRunCommand.self, DemoUpCommand.self, DemoExecCommand.self, DemoDownCommand.self, DemoMachineInitCommand.self],
        defaultSubcommand: DemoRunCommand.self)
}

struct DemoRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Build the two machines, start everything, start a VM from the DPU, show where it runs, tear down.",
        discussion: """
            Builds network, mount and pid namespaces for a "host" (198.51.100.1) and a "DPU" \
            (198.51.100.2); starts qtfs_engine, rexec_server and udsproxyd on the host; prepares the DPU \
            rootfs (/var/lib/dpuctl/demo/rootfs, kept for the next run) with `dpuctl rootfs prepare` and \
            mounts it with `dpuctl mount apply`; starts Debian's virtlogd and libvirtd in it; defines and \
            starts a small VM whose emulator runs on the host through rexec; shows that QEMU runs in the \
            host's namespaces while `virsh list` on the DPU shows it running; then tears everything down, \
            also on Ctrl-C or failure. Installs libvirt and QEMU from Debian if missing. Needs root.
            """)

    @Flag(help: "Leave everything running and print how to enter either side (`dpuctl demo down` ends it).")
    var keep = false

    @Flag(name: .customLong("keep-on-failure"), help: "When a step fails, leave the machines up to look around.")
    var keepOnFailure = false

    func run() async throws {
        var demo = try Demo.begin(steps: 9)
        demo.keepOnFailure = keepOnFailure
        let lab = try demo.bringUp()
        do {
            try demo.startVM(lab)
            try demo.show(lab)
            if keep {
                demo.printHowToEnter()
                return
            }
            try demo.stopVM(lab)
        } catch {
            demo.abort(lab, error)
        }
        demo.tearDown(lab)
    }
}

struct DemoUpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Build the machines and start everything up to libvirt on the DPU, and leave it running.",
        discussion: "For trying the offload by hand and for the end-to-end test: `dpuctl demo exec` runs commands on either side, `dpuctl demo down` ends it.")

    @Flag(name: .customLong("keep-on-failure"), help: "When a step fails, leave the machines up to look around.")
    var keepOnFailure = false

    func run() async throws {
        var demo = try Demo.begin(steps: 6)
        demo.keepOnFailure = keepOnFailure
        _ = try demo.bringUp()
        demo.printHowToEnter()
    }
}

struct DemoExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec", abstract: "Run a command on a kept demo's host or DPU.")

    @Argument(help: ArgumentHelp("host or dpu.", valueName: "machine"))
    var machine: String

    @Flag(help: "On the DPU, run it in the rootfs (where libvirt runs).")
    var rootfs = false

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command.", valueName: "command"))
    var command: [String] = []

    func run() async throws {
        guard let lab = DemoLab.load() else { fail("dpuctl demo exec: no demo is up; `dpuctl demo --keep` starts one", status: 1) }
        let target: DemoMachine
        switch machine {
        case "host": target = lab.host
        case "dpu": target = lab.dpu
        default: throw ValidationError("the machine is `host` or `dpu`, not `\(machine)`")
        }
        guard !command.isEmpty else { throw ValidationError("missing the command, after --") }
        let line = target.commandLine(command, root: rootfs ? Demo.rootfs : nil)
        // Replace ourselves: the command's status and signals are the caller's.
        let arguments = line.map { strdup($0) } + [nil]
        execv("/usr/bin/nsenter", arguments)
        fail("dpuctl demo exec: cannot run nsenter: \(String(cString: strerror(errno)))", status: 126)
    }
}

struct DemoDownCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "down", abstract: "Tear down a kept demo.")

    func run() async throws {
        guard DemoLab.exists else {
            print("no demo is up")
            return
        }
        var demo = try Demo()
        demo.libvirtStarted = true
        demo.tearDown(DemoLab.load())
    }
}

/// pid 1 of a demo machine: reaps orphans until killed.
struct DemoMachineInitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "machine-init", abstract: "The init of a demo machine (internal).", shouldDisplay: false)

    func run() async throws {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGCHLD)
        sigprocmask(SIG_BLOCK, &set, nil)
        // SIGCHLD may land on another thread of the runtime and be lost, so wake up every second anyway.
        var timeout = timespec(tv_sec: 1, tv_nsec: 0)
        while true {
            var status: Int32 = 0
            while waitpid(-1, &status, WNOHANG) > 0 {}
            _ = sigtimedwait(&set, nil, &timeout)
        }
    }
}

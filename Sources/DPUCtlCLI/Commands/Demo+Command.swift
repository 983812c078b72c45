import ArgumentParser

/// `dpuctl demo`: the whole offload on one machine (simulated host and DPU in namespaces).
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Show the offload on this machine: a simulated host and DPU, libvirt on the DPU, the VM on the host.",
        discussion: """
            Builds two network, mount and pid namespaces, starts the host side (qtfs engine, rexec_server, \
            udsproxyd), prepares the DPU rootfs, applies the mount plan, starts libvirt on the DPU and a \
            small VM whose emulator runs on the host, then tears everything down (also on Ctrl-C).
            """)

    @Flag(help: "Leave everything running and print how to enter either side.")
    var keep = false

    func run() async throws { notAvailableYet("demo") }
}

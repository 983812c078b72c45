import DPUConfig
import DPUSystem
import Glibc
import MountPlan
import Synchronization
import SystemPackage

/// One line of the demo's output, out at once (also into a pipe or a log file).
private func line(_ text: String) {
    print(text)
    fflush(nil)
}

/// Set by the first teardown (the main flow's, or the signal watcher's); the other one stands back.
private let teardownClaimed = Atomic<Bool>(false)

/// `dpuctl demo`: the whole offload on this machine. A simulated host and DPU (DemoLab); the host runs
/// qtfs_engine, rexec_server and udsproxyd; the DPU gets its rootfs from `dpuctl rootfs prepare`, its
/// mounts from `dpuctl mount apply`, runs udsproxyd, and starts virtlogd and libvirtd (unmodified, from
/// Debian) in the rootfs; a VM defined and started there runs its QEMU on the host.
struct Demo {
    /// The DPU rootfs; kept between runs (a second `rootfs prepare` only fixes differences).
    static let rootfs = "/var/lib/dpuctl/demo/rootfs"
    static let enginePort = 12345
    static let rexecPort = 7777
    static let udsproxyPort = 12121
    static let domain = "dpuctl-demo"
    static let packages = ["libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86", "qemu-utils"]

    let dpuctl: String
    let state = DemoLab.stateDirectory
    var libvirtStarted = false
    /// Leave the machines up when a step fails, to look around (`dpuctl demo exec`, `dpuctl demo down`).
    var keepOnFailure = false
    var step = 0
    var steps = 9

    init() throws { dpuctl = try selfExecutable() }

    /// Checks that a demo can start here and prints the title.
    static func begin(steps: Int) throws -> Demo {
        guard geteuid() == 0 else { fail("dpuctl demo: needs root (it creates namespaces and mounts)", status: 1) }
        if DemoLab.exists { fail("dpuctl demo: a demo is already up; `dpuctl demo down` ends it", status: 1) }
        Signals.ignore(SIGPIPE)
        var demo = try Demo()
        demo.steps = steps
        try demo.tearDownOnSignals()
        line("dpuctl demo: the management plane on a simulated DPU, the VM on a simulated host")
        return demo
    }

    /// Everything up to libvirt answering on the DPU. On failure the teardown runs and the process exits.
    mutating func bringUp() throws -> DemoLab {
        var lab: DemoLab?
        do {
            try ensurePackages()
            say("machines: host \(DemoLab.hostAddress) and dpu \(DemoLab.dpuAddress) (network, mount and pid namespaces)")
            try makeDirectories(DemoLab.stateDirectory)
            try KeyFile.generate(DemoLab.stateDirectory + "/key", force: true)
            lab = try DemoLab.create(dpuctl: dpuctl)
            try startHost(lab!)
            try prepareRootfs(lab!)
            try startDPU(lab!)
            try startLibvirt(lab!)
            return lab!
        } catch {
            abort(lab, error)
        }
    }

    /// Reports a failed step with the end of the logs, tears down, exits 1.
    func abort(_ lab: DemoLab?, _ error: Error) -> Never {
        line("dpuctl demo: failed: \(error)")
        if let logs = try? listDirectory(state).filter({ $0.hasSuffix(".log") }).sorted() {
            for log in logs {
                let lines = (try? readTextFile(state + "/" + log))?.split(separator: "\n").suffix(5) ?? []
                guard !lines.isEmpty else { continue }
                line("      \(log):")
                for text in lines { line("        " + text) }
            }
        }
        if keepOnFailure, lab != nil {
            line("      the machines stay up for inspection (--keep-on-failure):")
            printHowToEnter()
            exit(1)
        }
        tearDown(lab)
        exit(1)
    }

    func printHowToEnter() {
        line("""
            the demo stays up:
              dpuctl demo exec dpu --rootfs -- virsh -c qemu:///system list   # libvirt on the DPU
              dpuctl demo exec host -- ps -ef                                  # the host's processes
              dpuctl demo down                                                 # tear it down
            """)
    }

    mutating func say(_ text: String) {
        step += 1
        line("[\(step)/\(steps)] \(text)")
    }

    func detail(_ text: String) { line("      \(text)") }

    // MARK: - Steps

    /// Installs libvirt and QEMU from Debian when missing.
    mutating func ensurePackages() throws {
        let tools: [String] = ["/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh", "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img"]
        let missing = tools.filter { access($0, X_OK) != 0 }
        if missing.isEmpty {
            say("libvirt and QEMU are installed")
            return
        }
        say("installing libvirt and QEMU from Debian: \(Demo.packages.joined(separator: " "))")
        setenv("DEBIAN_FRONTEND", "noninteractive", 1)
        guard try ChildProcess.run("/usr/bin/apt-get", arguments: ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + Demo.packages, timeoutSeconds: 900) == .exited(0) else {
            throw DemoError("apt-get could not install \(Demo.packages.joined(separator: " ")); install them and run again")
        }
    }

    /// A private /run (with the demo's state directory carried in, and /run/lock as systemd-tmpfiles makes
    /// it: libvirt locks a console's pty in /var/lock) and copy-on-write /etc and /var/lib, so that nothing
    /// the machine writes there reaches this machine's files.
    func privatize(_ machine: DemoMachine, overlays: [String]) throws {
        // -n: /run/mount/utab moves away with /run; this namespace's mounts need no userspace table.
        var script = """
            mount -n -t tmpfs -o mode=0755 tmpfs /mnt
            mkdir -p /mnt/dpuctl-demo && mount -n --bind \(state) /mnt/dpuctl-demo
            mount -n --move /mnt /run
            mkdir -m 1777 /run/lock
            """
        for directory in overlays {
            let layer = "/run/overlay" + directory
            script += "\nmkdir -p \(layer)/upper \(layer)/work && mount -n -t overlay overlay -o lowerdir=\(directory),upperdir=\(layer)/upper,workdir=\(layer)/work \(directory)"
        }
        try machine.sh(script)
    }

    mutating func startHost(_ lab: DemoLab) throws {
        let host = lab.host
        say("host \(host.address): qtfs_engine, rexec_server and udsproxyd")
        try privatize(host, overlays: ["/etc", "/var/lib", "/usr/bin"])
        try host.sh(try Demo.cgroupMounts())
        let exports = ["/home/VMs", "/var/lib/libvirt", "/proc", "/sys", "/dev/pts"].joined(separator: ";")
        var whitelist = ""
        for kind in ["Open", "Write", "Read", "Readdir", "Mkdir", "Rmdir", "Create", "Unlink", "Rename", "Setattr", "Setxattr", "Mount"] {
            whitelist += "[\(kind)]\nPath=\(exports)\n"
        }
        whitelist += "[Udsconnect]\nPath=/var/lib/libvirt;/run/libvirt\n"
        try writeFile(state + "/qtfs-whitelist", whitelist)
        try host.sh("""
            mount -n -t tmpfs -o mode=0755 tmpfs /home && mkdir -p /home/VMs
            mkdir -p /var/lib/libvirt/qemu /etc/rexec /etc/qtfs /etc/dpuctl /run/rexec
            # Debian has no qemu-kvm: the name the DPU's wrapper asks for, on this host only.
            ln -sf qemu-system-x86_64 /usr/bin/qemu-kvm
            install -m 0600 \(state)/key /etc/dpuctl/key
            # Every emulator the DPU's libvirtd may run (its rootfs wraps each one), and nothing else.
            { echo /usr/bin/qemu-kvm; ls /usr/bin/qemu-system-*; } > /etc/rexec/whitelist
            install -m 0600 \(state)/qtfs-whitelist /etc/qtfs/whitelist
            """)
        let address = host.address
        try host.start([dpuctl, "qtfs-engine", "--listen", "tcp://\(address):\(Demo.enginePort)"], log: state + "/qtfs_engine.log")
        try host.start([dpuctl, "rexec-server", "--listen", "tcp://\(address):\(Demo.rexecPort)"], log: state + "/rexec_server.log")
        try host.start([dpuctl, "udsproxy", "--listen", "tcp://\(address):\(Demo.udsproxyPort)"], log: state + "/udsproxyd.host.log")
        for (name, port) in [("qtfs_engine", Demo.enginePort), ("rexec_server", Demo.rexecPort), ("udsproxyd", Demo.udsproxyPort)] {
            try waitForListener(host, port: port, name: name)
        }
        detail("listening on \(address): qtfs \(Demo.enginePort), rexec \(Demo.rexecPort), udsproxy \(Demo.udsproxyPort); key /etc/dpuctl/key")
    }

    /// `ip netns exec` gives a machine a fresh sysfs, without this machine's cgroup mounts under it. A host
    /// has them (libvirt on the DPU puts the VM's QEMU into cgroups through the host's /sys): the same
    /// hierarchies, mounted again (a cgroup v1 mount with the same controllers is the same hierarchy).
    static func cgroupMounts() throws -> String {
        switch try SystemFacts.read().cgroups {
        case .none:
            return ""
        case .unified:
            return "mount -n -t cgroup2 cgroup2 /sys/fs/cgroup"
        case .legacy(let hierarchies):
            var script = "mount -n -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup"
            for hierarchy in hierarchies {
                let path = "'/sys/fs/cgroup/\(hierarchy.name)'"
                let options = hierarchy.options.isEmpty ? "" : " -o '\(hierarchy.options.joined(separator: ","))'"
                script += "\nmkdir -p \(path) && mount -n -t \(hierarchy.type)\(options) \(hierarchy.type) \(path)"
            }
            return script
        }
    }

    func waitForListener(_ machine: DemoMachine, port: Int, name: String) throws {
        for _ in 0..<200 {
            let (_, output) = try machine.capture(["ss", "-Hltn", "sport = :\(port)"])
            if !output.isEmpty { return }
            usleep(50_000)
        }
        throw DemoError("\(name) did not start listening on port \(port) of the \(machine.name); its log: \(state)/\(name).log")
    }

    mutating func prepareRootfs(_ lab: DemoLab) throws {
        say("dpu: rootfs \(Demo.rootfs) (dpuctl rootfs prepare)")
        try makeDirectories("/var/lib/dpuctl/demo")
        let log = state + "/rootfs-prepare.log"
        try lab.dpu.run(["/bin/sh", "-c", "\"$0\" rootfs prepare --root \(Demo.rootfs) --host tcp://\(lab.host.address):\(Demo.rexecPort) > \(log) 2>&1", dpuctl], timeout: 3600)
        if let summary = try? readTextFile(log).split(separator: "\n").last { detail(String(summary)) }
    }

    mutating func startDPU(_ lab: DemoLab) throws {
        let dpu = lab.dpu
        say("dpu \(dpu.address): udsproxyd and the mounts (dpuctl mount apply)")
        try privatize(dpu, overlays: ["/etc", "/var/lib", "/var/cache"])
        try writeFile(state + "/dpuctl.conf", """
            # dpuctl on the demo's DPU
            [qtfs]
            connect = tcp://\(lab.host.address):\(Demo.enginePort)

            """)
        try writeFile(state + "/libvirtd.conf", """
            # The demo's libvirtd logs to a file in the rootfs (there is no journal in the demo's machines).
            log_outputs = "3:file:/var/log/libvirt/libvirtd.log"

            """)
        try writeFile(state + "/qemu.conf", """
            # The demo runs QEMU as root on the host; nothing to relabel or chown.
            user = "root"
            group = "root"
            dynamic_ownership = 0
            remember_owner = 0
            # No per-VM mount namespace: QEMU runs on the host, the namespace would hold only its rexec
            # stand-in, and libvirt cannot make / a slave in a chroot whose / is not a mount point.
            namespaces = [ ]

            """)
        try dpu.sh("""
            mkdir -p /etc/dpuctl /etc/libvirt /var/lib/libvirt /var/cache/libvirt /run/rexec /run/libvirt /run/qtfs
            install -m 0600 \(state)/key /etc/dpuctl/key
            install -m 0644 \(state)/dpuctl.conf /etc/dpuctl/dpuctl.conf
            install -m 0644 \(state)/qemu.conf /etc/libvirt/qemu.conf
            install -m 0644 \(state)/libvirtd.conf /etc/libvirt/libvirtd.conf
            # libvirt's QEMU driver needs its compiled-in user to exist, even when qemu.conf says root.
            getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
            getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
            """)
        try dpu.start([dpuctl, "udsproxy", "--peer", "tcp://\(lab.host.address):\(Demo.udsproxyPort)"], log: state + "/udsproxyd.dpu.log")
        let log = state + "/mount-apply.log"
        try dpu.run(["/bin/sh", "-c", "\"$0\" mount apply --root \(Demo.rootfs) > \(log) 2>&1", dpuctl], timeout: 300)
        if let summary = try? readTextFile(log).split(separator: "\n").last { detail(String(summary)) }
    }

    mutating func startLibvirt(_ lab: DemoLab) throws {
        say("dpu: virtlogd and libvirtd (Debian's, unmodified) in the rootfs")
        let dpu = lab.dpu
        try dpu.sh("mkdir -p /var/log/libvirt", root: Demo.rootfs)
        try dpu.run(["/usr/sbin/virtlogd", "-d", "-p", "/run/virtlogd.pid"], root: Demo.rootfs)
        try dpu.run(["/usr/sbin/libvirtd", "-d", "-p", "/run/libvirtd.pid"], root: Demo.rootfs)
        libvirtStarted = true
        for _ in 0..<100 {
            if try virsh(lab, ["version"], check: false).0 == .exited(0) { return }
            usleep(100_000)
        }
        throw DemoError("libvirtd did not answer on the DPU; see \(Demo.rootfs)/var/log/libvirt")
    }

    /// virsh on the DPU, in the rootfs.
    @discardableResult
    func virsh(_ lab: DemoLab, _ arguments: [String], check: Bool = true) throws -> (ExitStatus, String) {
        let result = try lab.dpu.capture(["/usr/bin/virsh", "-c", "qemu:///system"] + arguments, root: Demo.rootfs, timeout: 120)
        if check, result.0 != .exited(0) {
            throw DemoError("virsh \(arguments.joined(separator: " ")) on the DPU failed (\(result.0)): \(result.1)")
        }
        return result
    }

    static var domainXML: String {
        """
        <domain type="qemu">
          <name>\(domain)</name>
          <memory unit="MiB">128</memory>
          <os><type arch="x86_64" machine="pc">hvm</type><boot dev="hd"/></os>
          <devices>
            <emulator>/usr/bin/qemu-kvm</emulator>
            <disk type="file" device="disk">
              <driver name="qemu" type="qcow2"/>
              <source file="/home/VMs/\(domain).qcow2"/>
              <target dev="vda" bus="virtio"/>
            </disk>
            <serial type="pty"/>
            <memballoon model="none"/>
          </devices>
        </domain>
        """
    }

    mutating func startVM(_ lab: DemoLab) throws {
        say("dpu: virsh define and start \(Demo.domain) (its disk created on the DPU in /home/VMs)")
        try writeFile(state + "/domain.xml", Demo.domainXML)
        try lab.dpu.run(["/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "/home/VMs/\(Demo.domain).qcow2", "64M"], root: Demo.rootfs)
        try lab.dpu.sh("cp \(state)/domain.xml /run/\(Demo.domain).xml")
        try virsh(lab, ["define", "/var/run/\(Demo.domain).xml"])
        try virsh(lab, ["start", Demo.domain])
    }

    mutating func show(_ lab: DemoLab) throws {
        say("where things run")
        let (_, list) = try virsh(lab, ["list"])
        for line in list.split(separator: "\n") { detail("dpu$ virsh list   " + line) }
        let (_, hostPS) = try lab.host.capture(["ps", "-eo", "pid,comm,args", "--no-headers"])
        // The VM's QEMU by its -name (its argv[0] is /usr/bin/qemu-kvm, the link the domain names).
        let qemu = hostPS.split(separator: "\n").filter { $0.contains("guest=\(Demo.domain),") }
        for line in qemu { detail("host$ ps   " + String(line.prefix(110))) }
        let (_, dpuPS) = try lab.dpu.capture(["ps", "-eo", "pid,comm", "--no-headers"])
        let local = dpuPS.split(separator: "\n").filter { $0.contains("qemu-system") || $0.contains("qemu-kvm") }
        detail(local.isEmpty ? "dpu$ ps   no QEMU process on the DPU: only its stand-in, rexec" : "dpu$ ps   UNEXPECTED local QEMU: \(local)")
        let (_, image) = try lab.host.capture(["ls", "-l", "/home/VMs"])
        for line in image.split(separator: "\n").dropFirst() { detail("host$ ls -l /home/VMs   " + line) }
        guard !qemu.isEmpty, local.isEmpty, list.contains("running") else {
            throw DemoError("the VM is not where it should be: QEMU on the host: \(qemu.count), on the DPU: \(local.count)")
        }
    }

    mutating func stopVM(_ lab: DemoLab) throws {
        say("dpu: virsh destroy \(Demo.domain)")
        try virsh(lab, ["destroy", Demo.domain])
        for _ in 0..<100 {
            let (_, hostPS) = try lab.host.capture(["ps", "-eo", "args", "--no-headers"])
            if !hostPS.contains("guest=\(Demo.domain),") {
                detail("host$ ps   its QEMU is gone from the host")
                return
            }
            usleep(100_000)
        }
        throw DemoError("virsh destroy returned, but the VM's QEMU still runs on the host after 10 s")
    }

    /// Ctrl-C, SIGTERM or SIGHUP during a step: the teardown of `dpuctl demo down` (everything the state
    /// directory knows of), then exit 130. The handlers only wake this thread; the main flow's step fails
    /// as its machines go, and its own teardown stands back.
    func tearDownOnSignals() throws {
        let wake = try EventCounter()
        for signal in [SIGINT, SIGTERM, SIGHUP] { try Signals.wake(wake, on: signal) }
        let demo = self
        try OSThread.start(name: "demo-signals") {
            var entry = pollfd(fd: wake.fd.rawValue, events: Int16(POLLIN), revents: 0)
            while Glibc.poll(&entry, 1, -1) < 1 {}
            line("\n[interrupted]")
            var teardown = demo
            teardown.libvirtStarted = true
            guard teardown.tearDown(DemoLab.load(), onSignal: true) else { return }
            exit(130)
        }
    }

    /// Ends what is up. When another thread is already at it: the signal watcher returns false (the main
    /// flow finishes and exits); the main flow waits for the watcher to exit the process.
    @discardableResult
    func tearDown(_ lab: DemoLab?, onSignal: Bool = false) -> Bool {
        guard !teardownClaimed.exchange(true, ordering: .acquiringAndReleasing) else {
            if !onSignal { while true { pause() } }
            return false
        }
        line("[teardown]")
        if let lab, libvirtStarted {
            _ = try? virsh(lab, ["destroy", Demo.domain], check: false)
            _ = try? virsh(lab, ["undefine", Demo.domain], check: false)
            // Stop libvirt and wait for it to be gone: its open files would keep the mounts busy.
            _ = try? lab.dpu.run(["/bin/sh", "-c", """
                pids="$(cat /run/libvirtd.pid 2>/dev/null) $(cat /run/virtlogd.pid 2>/dev/null)"
                if [ -n "${pids# }" ]; then
                    kill $pids 2>/dev/null
                    for i in $(seq 50); do kill -0 $pids 2>/dev/null || break; sleep 0.1; done
                    kill -9 $pids 2>/dev/null
                fi
                exit 0
                """], root: Demo.rootfs, check: false)
            // VMs outlive libvirtd, and their rexec stand-ins keep the rootfs busy: end them too (their QEMUs
            // go with them). Outside the rootfs, whose /proc is the host's.
            _ = try? lab.dpu.run(["/bin/sh", "-c", """
                pkill -TERM -x rexec || exit 0
                for i in $(seq 50); do pgrep -x rexec >/dev/null || exit 0; sleep 0.1; done
                pkill -KILL -x rexec
                """], check: false)
        }
        if let lab, (try? lab.dpu.run([dpuctl, "mount", "revert", "--root", Demo.rootfs], check: false)) == .exited(0) {
            detail("dpuctl mount revert: everything under \(Demo.rootfs) unmounted")
        }
        DemoLab.destroy()
        detail("machines, namespaces and their processes are gone; the rootfs stays in \(Demo.rootfs) for the next run")
        return true
    }
}

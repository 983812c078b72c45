import DPUSystem

/// What the plan depends on in this kernel and on this machine: the file system types, the cgroup
/// controllers and how this machine's own cgroups are mounted.
public struct SystemFacts: Sendable, Equatable {
    /// `/proc/filesystems`.
    public var fileSystems: Set<String>
    /// Enabled controllers in `/proc/cgroups`.
    public var cgroupControllers: Set<String>
    /// How /sys/fs/cgroup is mounted on this machine.
    public var cgroups: CgroupLayout

    public init(fileSystems: Set<String>, cgroupControllers: Set<String>, cgroups: CgroupLayout) {
        self.fileSystems = fileSystems
        self.cgroupControllers = cgroupControllers
        self.cgroups = cgroups
    }

    /// Reads the facts of the running kernel and of this mount namespace.
    public static func read() throws(SystemError) -> SystemFacts {
        let controllers = parseCgroupControllers((try? readTextFile("/proc/cgroups")) ?? "")
        return SystemFacts(
            fileSystems: parseFileSystems(try readTextFile("/proc/filesystems")), cgroupControllers: controllers,
            cgroups: CgroupLayout(mounts: try MountInfo.read(), controllers: controllers))
    }

    /// `nodev\tproc` lines -> {"proc", ...}.
    public static func parseFileSystems(_ text: String) -> Set<String> {
        Set(text.split(separator: "\n").compactMap { $0.split(whereSeparator: { $0 == "\t" || $0 == " " }).last.map(String.init) })
    }

    /// `/proc/cgroups` (`name hierarchy count enabled`) -> the enabled controller names.
    public static func parseCgroupControllers(_ text: String) -> Set<String> {
        Set(text.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            guard fields.count >= 4, !line.hasPrefix("#"), fields[3] == "1" else { return nil }
            return String(fields[0])
        })
    }
}

/// This machine's cgroup mounts, mirrored in the rootfs so that the plan uses hierarchies that exist.
public enum CgroupLayout: Sendable, Equatable {
    /// cgroup v2 only: cgroup2 at /sys/fs/cgroup.
    case unified
    /// cgroup v1 hierarchies under a tmpfs at /sys/fs/cgroup (hybrid systems add cgroup2 at `unified`).
    case legacy([CgroupHierarchy])
    /// Nothing mounted at /sys/fs/cgroup.
    case none

    /// Reads the layout from a mount table: what this machine mounts at and under /sys/fs/cgroup.
    public init(mounts: [MountInfoEntry], controllers: Set<String>) {
        if mounts.contains(where: { $0.mountPoint == "/sys/fs/cgroup" && $0.fileSystemType == "cgroup2" }) {
            self = .unified
            return
        }
        var hierarchies: [CgroupHierarchy] = []
        for mount in mounts where mount.mountPoint.hasPrefix("/sys/fs/cgroup/") {
            let name = String(mount.mountPoint.dropFirst("/sys/fs/cgroup/".count))
            guard !name.isEmpty, !name.contains("/"), !hierarchies.contains(where: { $0.name == name }) else { continue }
            switch mount.fileSystemType {
            case "cgroup2":
                hierarchies.append(CgroupHierarchy(name: name, type: "cgroup2", options: []))
            case "cgroup":
                let words = mount.superOptions.split(separator: ",").map(String.init)
                var options = words.filter { controllers.contains($0) || $0.hasPrefix("name=") }
                if !options.contains(where: { controllers.contains($0) }) { options.insert("none", at: 0) }
                if options != ["none"] { hierarchies.append(CgroupHierarchy(name: name, type: "cgroup", options: options)) }
            default:
                continue
            }
        }
        self = hierarchies.isEmpty ? .none : .legacy(hierarchies)
    }
}

/// One cgroup hierarchy: where it is mounted under /sys/fs/cgroup and with which controllers.
public struct CgroupHierarchy: Sendable, Equatable {
    /// The directory name under /sys/fs/cgroup (`cpu`, `cpu,cpuacct`, `systemd`, `unified`).
    public var name: String
    /// `cgroup` or `cgroup2`.
    public var type: String
    /// Controllers and `none` / `name=...`, as mount options.
    public var options: [String]
}

extension MountPlanDefaults {
    /// The guide's mount list for the DPU rootfs (guide §3.5; offload-workflow.md §3.3), with its faults
    /// fixed:
    /// - every target is created (local/proc, local/sys, dev/hugepages, dev/mqueue were not);
    /// - the host's /sys comes through qtfs at /sys, and this machine's sysfs and cgroups are at
    ///   /local/sys instead of underneath it, where the qtfs /sys used to hide them;
    /// - the cgroup hierarchies are the ones this machine has (v1 controllers as it groups them, or the
    ///   unified v2 hierarchy), not a fixed list with openEuler-only controllers;
    /// - /var/run is resolved inside the rootfs, so an absolute var/run -> /run link cannot send the bind
    ///   onto this machine's own /run;
    /// - hugetlbfs, mqueue and /dev/vfio are optional: skipped with a note where the kernel lacks them;
    /// - /dev/pts bridges the host's ptys (`ptybridge`): a DPU program opening one gets a real terminal
    ///   whose termios calls work (the original forwarded TCGETS and TCSETS, and dropped TCGETS's answer).
    public static func builtIn(facts: SystemFacts) -> [MountEntry] {
        let hardened = ["nosuid", "nodev", "noexec"]
        var entries: [MountEntry] = [
            MountEntry(
                target: "/local_proc", kind: .fileSystem("proc"), options: hardened,
                note: "this machine's procfs: qtfs proc mode sends /proc/self and local processes here"),
            MountEntry(
                target: "/local/proc", kind: .fileSystem("proc"), options: hardened,
                note: "this machine's procfs, where the guide's libvirt looks for local process names"),
            MountEntry(
                target: "/local/sys", kind: .fileSystem("sysfs"), options: hardened,
                note: "this machine's sysfs, next to the host's /sys instead of under it"),
        ]
        let cgroupRoot = "/local/sys/fs/cgroup"
        switch facts.cgroups {
        case .unified, .none:
            entries.append(MountEntry(
                target: cgroupRoot, kind: .fileSystem("cgroup2"), options: hardened, optional: facts.cgroups == .none,
                note: "this machine's unified cgroup hierarchy (v2)"))
        case .legacy(let hierarchies):
            entries.append(MountEntry(
                target: cgroupRoot, kind: .fileSystem("tmpfs"), options: hardened + ["mode=0755"],
                note: "holds this machine's cgroup v1 hierarchies"))
            for hierarchy in hierarchies {
                entries.append(MountEntry(
                    target: cgroupRoot + "/" + hierarchy.name, kind: .fileSystem(hierarchy.type),
                    options: hardened + hierarchy.options,
                    note: "a cgroup hierarchy as this machine mounts it"))
            }
        }
        entries += [
            MountEntry(
                target: "/var/run", kind: .bind(recursive: false), source: "/var/run",
                note: "this machine's /run: libvirt's sockets and pid files, /var/run/rexec"),
            MountEntry(
                target: "/var/lib", kind: .bind(recursive: false), source: "/var/lib",
                note: "this machine's /var/lib (hides the rootfs's own)"),
            MountEntry(
                target: "/var/cache", kind: .bind(recursive: false), source: "/var/cache",
                note: "libvirt's capability cache"),
            MountEntry(
                target: "/etc", kind: .bind(recursive: false), source: "/etc",
                note: "this machine's /etc: it hides the rootfs's /etc, so libvirt's configuration and users must be here"),
            MountEntry(
                target: "/home/VMs", kind: .qtfs, source: "/home/VMs",
                note: "VM images at the same path on both sides"),
            MountEntry(
                target: "/var/lib/libvirt", kind: .qtfs, source: "/var/lib/libvirt",
                note: "libvirt's state shared with the host (after the /var/lib bind, which it sits on)"),
            MountEntry(
                target: "/dev", kind: .fileSystem("devtmpfs"), options: ["nosuid", "mode=0755"],
                note: "this machine's devices (the one devtmpfs: a directory made here appears in its /dev)"),
            MountEntry(
                target: "/dev/hugepages", kind: .fileSystem("hugetlbfs"), options: ["nosuid", "nodev"], optional: true,
                note: "huge pages for the VMs' memory backing"),
            MountEntry(
                target: "/dev/mqueue", kind: .fileSystem("mqueue"), options: hardened, optional: true,
                note: "POSIX message queues"),
            MountEntry(
                target: "/dev/shm", kind: .fileSystem("tmpfs"), options: ["nosuid", "nodev", "mode=1777"],
                note: "POSIX shared memory"),
            MountEntry(
                target: "/proc", kind: .qtfs, source: "/proc", options: ["proc"],
                note: "the host's processes; self and this machine's daemons resolve to /local_proc"),
            MountEntry(
                target: "/sys", kind: .qtfs, source: "/sys",
                note: "the host's sysfs and cgroups (this machine's are at /local/sys)"),
            MountEntry(
                target: "/dev/pts", kind: .qtfs, source: "/dev/pts", options: ["ptybridge"],
                note: "the host's terminals: each a link to a local terminal relayed to it (virsh console)"),
            MountEntry(
                target: "/dev/vfio", kind: .qtfs, source: "/dev/vfio", optional: true, create: false,
                note: "VFIO groups for device passthrough; only where this machine's /dev has vfio"),
        ]
        return entries
    }
}

/// Defaults of the mount plan.
public enum MountPlanDefaults {
    /// The guide's rootfs.
    public static let root = "/another_rootfs"
}

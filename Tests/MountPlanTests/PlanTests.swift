import DPUConfig
import DPUSystem
import Testing

@testable import MountPlan

/// Facts of a typical systemd host in hybrid mode: v1 controllers, name=systemd, cgroup2 at unified.
let hybrid = SystemFacts(
    fileSystems: ["proc", "sysfs", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "hugetlbfs", "mqueue", "fuse"],
    cgroupControllers: ["cpu", "cpuacct", "memory", "pids"],
    cgroups: .legacy([
        CgroupHierarchy(name: "cpu,cpuacct", type: "cgroup", options: ["cpu", "cpuacct"]),
        CgroupHierarchy(name: "memory", type: "cgroup", options: ["memory"]),
        CgroupHierarchy(name: "systemd", type: "cgroup", options: ["none", "name=systemd"]),
        CgroupHierarchy(name: "unified", type: "cgroup2", options: []),
    ]))

func planFile(_ text: String) throws -> ConfigFile { try ConfigFile(text: text, path: "/etc/dpuctl/mounts.conf") }

@Suite struct PlanFiles {
    @Test func aSectionBecomesAnEntryWithItsLine() throws {
        let entries = try PlanFile.entries(from: try planFile("""
            # comment
            [mount /var/lib/libvirt]
            type = qtfs
            source = /var/lib/libvirt
            options = nosuid,nodev
            optional = yes
            create = no
            note = shared with the host
            """), builtIn: [])
        #expect(entries == [MountEntry(
            target: "/var/lib/libvirt", kind: .qtfs, source: "/var/lib/libvirt", options: ["nosuid", "nodev"],
            optional: true, create: false, note: "shared with the host",
            origin: .file("/etc/dpuctl/mounts.conf", line: 2))])
    }

    @Test func targetsAreNormalized() throws {
        let entries = try PlanFile.entries(from: try planFile("[mount //var//run/]\ntype = tmpfs"), builtIn: [])
        #expect(entries.map(\.target) == ["/var/run"])
        #expect(entries[0].source == "tmpfs")
    }

    @Test(arguments: [
        ("[mount relative]\ntype = tmpfs", 1, "absolute path"),
        ("[mount /a/../etc]\ntype = tmpfs", 1, "without `..`"),
        ("[mount /]\ntype = tmpfs", 1, "other than /"),
        ("[mount /x]\nsource = /y", 1, "needs `type = `"),
        ("[mount /x]\ntype = Bad Type", 2, "not a mount type"),
        ("[mount /x]\ntype = bind", 1, "needs `source = /path`"),
        ("[mount /x]\ntype = bind\nsource = etc", 3, "absolute path"),
        ("[mount /x]\ntype = bind\nsource = /etc\noptions = ro,mode=0755", 4, "`mode=0755` is none of them"),
        ("[mount /x]\ntype = cgroup\noptions = nosuid", 3, "needs its controllers"),
        ("[mount /x]\ntype = tmpfs\ncolour = red", 3, "unknown key `colour`"),
        ("[mount /x]\ntype = tmpfs\ntype = proc", 3, "given twice"),
        ("[mount /x]\ntype = tmpfs\nenabled = no", 1, "only makes sense with [plan] base = default"),
        ("[plan]\nbase = maybe", 2, "expected `base = default`"),
        ("[mounts /x]\ntype = tmpfs", 1, "unknown section [mounts]"),
        ("# nothing", nil, "has no [mount TARGET] section"),
    ] as [(String, Int?, String)])
    func errorsNameTheLine(_ text: String, _ line: Int?, _ fragment: String) throws {
        #expect { try PlanFile.entries(from: try planFile(text), builtIn: []) } throws: { error in
            guard let error = error as? ConfigError else { return false }
            return error.line == line && error.message.contains(fragment)
        }
    }

    @Test func baseDefaultReplacesDisablesAndAdds() throws {
        let builtIn = MountPlanDefaults.builtIn(facts: hybrid)
        let entries = try PlanFile.entries(from: try planFile("""
            [plan]
            base = default

            [mount /etc]
            enabled = no

            [mount /var/cache]
            type = tmpfs

            [mount /srv]
            type = bind
            source = /srv
            """), builtIn: builtIn)
        #expect(!entries.contains { $0.target == "/etc" })
        let cache = try #require(entries.firstIndex { $0.target == "/var/cache" })
        #expect(entries[cache].kind == .fileSystem("tmpfs"))
        #expect(cache == builtIn.firstIndex { $0.target == "/var/cache" }, "a replacement takes the built-in entry's place")
        #expect(entries.last?.target == "/srv")
        #expect(entries.count == builtIn.count)
    }

    @Test func theBuiltInPlanRoundTripsThroughItsFileForm() throws {
        let builtIn = MountPlanDefaults.builtIn(facts: hybrid)
        let again = try PlanFile.entries(from: try planFile(PlanFile.render(builtIn)), builtIn: [])
        #expect(again.map(\.target) == builtIn.map(\.target))
        #expect(again.map(\.kind) == builtIn.map(\.kind))
        #expect(again.map(\.options) == builtIn.map(\.options))
        #expect(again.map(\.optional) == builtIn.map(\.optional))
        #expect(again.map(\.create) == builtIn.map(\.create))
    }
}

@Suite struct Planning {
    func plan(_ entries: [MountEntry], facts: SystemFacts = hybrid, localOnly: Bool = false, existing: Set<String> = ["/etc", "/var/run", "/var/lib", "/var/cache"]) throws -> Plan {
        try Planner.plan(entries, root: "/another_rootfs", facts: facts, localOnly: localOnly) { existing.contains($0) }
    }

    @Test func parentsComeBeforeChildrenOtherwiseTheWrittenOrderStands() throws {
        let entries = [
            MountEntry(target: "/var/lib/libvirt", kind: .qtfs, source: "/var/lib/libvirt"),
            MountEntry(target: "/dev/shm", kind: .fileSystem("tmpfs")),
            MountEntry(target: "/var/lib", kind: .bind(recursive: false), source: "/var/lib"),
            MountEntry(target: "/dev", kind: .fileSystem("devtmpfs")),
            MountEntry(target: "/proc", kind: .fileSystem("proc")),
        ]
        #expect(try plan(entries).steps.map(\.entry.target) == ["/var/lib", "/var/lib/libvirt", "/dev", "/dev/shm", "/proc"])
    }

    @Test func aSecondMountAtOneTargetNeedsHide() throws {
        let sysfs = MountEntry(target: "/sys", kind: .fileSystem("sysfs"), origin: .file("p", line: 1))
        var qtfs = MountEntry(target: "/sys", kind: .qtfs, source: "/sys", origin: .file("p", line: 4))
        #expect { try plan([sysfs, qtfs]) } throws: { ($0 as? PlanError)?.message.hasPrefix("p:4: [mount /sys] is also mounted by p:1") == true }
        qtfs.hide = true
        #expect(try plan([sysfs, qtfs]).steps.map(\.entry.kind) == [.fileSystem("sysfs"), .qtfs])
    }

    @Test func optionalEntriesAreSkippedWithTheReason() throws {
        let facts = SystemFacts(fileSystems: ["proc", "cgroup"], cgroupControllers: ["cpu"], cgroups: .none)
        let steps = try plan([
            MountEntry(target: "/dev/hugepages", kind: .fileSystem("hugetlbfs"), optional: true),
            MountEntry(target: "/c/files", kind: .fileSystem("cgroup"), options: ["files"], optional: true),
            MountEntry(target: "/c/cpu", kind: .fileSystem("cgroup"), options: ["nosuid", "cpu"], optional: true),
            MountEntry(target: "/opt", kind: .bind(recursive: false), source: "/no/such", optional: true),
            MountEntry(target: "/home/VMs", kind: .qtfs, source: "/home/VMs", optional: true),
        ], facts: facts).steps
        #expect(steps.map(\.skip) == [
            .unavailable("this kernel has no hugetlbfs file system"),
            .unavailable("this kernel has no cgroup controller files (see /proc/cgroups)"),
            nil,
            .unavailable("the source /no/such does not exist on this machine"),
            .unavailable("this kernel has no FUSE, which the qtfs client needs"),
        ])
    }

    @Test func aRequiredEntryThatCannotMountIsRefusedBeforeAnythingIsMounted() {
        let entry = MountEntry(target: "/c/rdma", kind: .fileSystem("cgroup"), options: ["rdma"], origin: .file("p", line: 7))
        #expect { try plan([entry]) } throws: {
            ($0 as? PlanError)?.message == "p:7: [mount /c/rdma] cannot be mounted: this kernel has no cgroup controller rdma (see /proc/cgroups); remove it from the plan or say `optional = yes`"
        }
    }

    @Test func theRootfsCannotBeSlash() {
        #expect { try Planner.plan([], root: "/", facts: hybrid) { _ in true } } throws: {
            ($0 as? PlanError)?.message.hasPrefix("the rootfs cannot be / itself") == true
        }
    }

    @Test func localOnlyLeavesOutTheQtfsEntries() throws {
        let steps = try plan(MountPlanDefaults.builtIn(facts: hybrid), localOnly: true).steps
        #expect(steps.filter { $0.entry.kind == .qtfs }.allSatisfy { $0.skip == .localOnly })
        #expect(steps.filter { $0.entry.kind != .qtfs }.allSatisfy { $0.skip == nil })
    }

    @Test func commandsAreWhatAnOperatorWouldType() throws {
        let steps = try plan([
            MountEntry(target: "/var/run", kind: .bind(recursive: false), source: "/var/run"),
            MountEntry(target: "/proc", kind: .qtfs, source: "/proc", options: ["proc"]),
            MountEntry(target: "/dev/shm", kind: .fileSystem("tmpfs"), options: ["nosuid", "mode=1777"]),
            MountEntry(target: "/home/my VMs", kind: .bind(recursive: true), source: "/var/run", options: ["ro"]),
        ]).steps
        #expect(steps.map(\.command) == [
            "mount --bind /var/run /another_rootfs/var/run",
            "mount -t qtfs -o proc /proc /another_rootfs/proc",
            "mount -t tmpfs -o nosuid,mode=1777 tmpfs /another_rootfs/dev/shm",
            "mount --rbind -o ro /var/run '/another_rootfs/home/my VMs'",
        ])
    }
}

@Suite struct BuiltInPlan {
    let entries = MountPlanDefaults.builtIn(facts: hybrid)

    @Test func itHasTheGuidesMounts() {
        let targets = Set(entries.map(\.target))
        for target in ["/local_proc", "/var/run", "/var/lib", "/var/cache", "/etc", "/home/VMs", "/var/lib/libvirt",
            "/proc", "/sys", "/dev/pts", "/dev/vfio", "/dev", "/dev/hugepages", "/dev/mqueue", "/dev/shm"]
        {
            #expect(targets.contains(target), "\(target)")
        }
        #expect(entries.first { $0.target == "/proc" }?.options == ["proc"])
        #expect(entries.first { $0.target == "/dev/pts" }?.options == ["ptybridge"])
    }

    @Test func nothingIsMountedUnderAQtfsMountOrHidden() throws {
        let plan = try Planner.plan(entries, root: "/r", facts: hybrid) { _ in true }
        let qtfs = plan.steps.filter { $0.entry.kind == .qtfs }.map(\.entry.target)
        for step in plan.steps where step.entry.kind != .qtfs {
            #expect(!qtfs.contains { RootPath.isStrictlyWithin(step.entry.target, $0) }, "\(step.entry.target) would sit on qtfs")
        }
        #expect(Set(plan.steps.map(\.entry.target)).count == plan.steps.count, "no target is mounted twice")
        // The qtfs entries are leaves: `apply --local-only` first and `apply` later can add them.
        for target in qtfs {
            #expect(!plan.steps.contains { RootPath.isStrictlyWithin($0.entry.target, target) })
        }
    }

    @Test func theCgroupHierarchiesAreThisMachines() {
        let cgroups = entries.filter { $0.target.hasPrefix("/local/sys/fs/cgroup") }
        #expect(cgroups.map(\.target) == [
            "/local/sys/fs/cgroup", "/local/sys/fs/cgroup/cpu,cpuacct", "/local/sys/fs/cgroup/memory",
            "/local/sys/fs/cgroup/systemd", "/local/sys/fs/cgroup/unified",
        ])
        #expect(cgroups[0].kind == .fileSystem("tmpfs"))
        #expect(cgroups[1].cgroupControllers == ["cpu", "cpuacct"])
        #expect(cgroups[3].cgroupControllers == ["name=systemd"])
        #expect(cgroups[4].kind == .fileSystem("cgroup2"))
        let unified = MountPlanDefaults.builtIn(facts: SystemFacts(fileSystems: [], cgroupControllers: [], cgroups: .unified))
            .filter { $0.target.hasPrefix("/local/sys/fs/cgroup") }
        #expect(unified.map(\.kind) == [.fileSystem("cgroup2")])
    }

    @Test func vfioIsOptionalAndNeverCreated() {
        let vfio = entries.first { $0.target == "/dev/vfio" }
        #expect(vfio?.optional == true && vfio?.create == false)
    }
}

@Suite struct Facts {
    @Test func fileSystemsAndControllersAreRead() {
        #expect(SystemFacts.parseFileSystems("nodev\tsysfs\nnodev\tproc\n\text4\n") == ["sysfs", "proc", "ext4"])
        #expect(SystemFacts.parseCgroupControllers("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nrdma\t0\t1\t0\n") == ["cpuset"])
    }

    @Test func theCgroupLayoutComesFromTheMountTable() {
        let hybridTable = MountInfo.parse("""
            30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
            31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
            32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
            35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
            36 30 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
            """)
        let layout = CgroupLayout(mounts: hybridTable, controllers: ["cpu", "cpuacct", "net_cls", "net_prio"])
        #expect(layout == .legacy([
            CgroupHierarchy(name: "unified", type: "cgroup2", options: []),
            CgroupHierarchy(name: "systemd", type: "cgroup", options: ["none", "name=systemd"]),
            CgroupHierarchy(name: "cpu,cpuacct", type: "cgroup", options: ["cpu", "cpuacct"]),
            CgroupHierarchy(name: "net_cls,net_prio", type: "cgroup", options: ["net_cls", "net_prio"]),
        ]))
        let v2 = MountInfo.parse("30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate")
        #expect(CgroupLayout(mounts: v2, controllers: ["cpu"]) == .unified)
        #expect(CgroupLayout(mounts: [], controllers: ["cpu"]) == .none)
    }

    @Test func optionsSplitIntoAttributesAndParameters() {
        let (attributes, parameters) = MountOptions.split(["ro", "nosuid", "mode=0755", "cpu", "noatime", "relatime", "rw"])
        #expect(attributes == [.noSetUID])
        #expect(parameters == [.init(key: "mode", value: "0755"), .init(key: "cpu", value: nil)])
    }
}

@Suite struct Comparing {
    func entry(_ id: Int, _ point: String, _ type: String, _ source: String, root: String = "/", device: String = "0:50", options: String = "rw", superOptions: String = "rw", parent: Int = 1) -> MountInfoEntry {
        MountInfo.parse("\(id) \(parent) \(device) \(root) \(point) \(options) - \(type) \(source) \(superOptions)")[0]
    }

    @Test func eachStepIsPresentMissingDifferentOrSkippedAndTheRestIsExtra() throws {
        let plan = try Planner.plan([
            MountEntry(target: "/local_proc", kind: .fileSystem("proc")),
            MountEntry(target: "/var/run", kind: .bind(recursive: false), source: "/var/run"),
            MountEntry(target: "/etc", kind: .bind(recursive: false), source: "/etc"),
            MountEntry(target: "/home/VMs", kind: .qtfs, source: "/home/VMs"),
            MountEntry(target: "/dev/hugepages", kind: .fileSystem("hugetlbfs"), optional: true),
            MountEntry(target: "/c/cpu", kind: .fileSystem("cgroup"), options: ["cpu"]),
        ], root: "/r", facts: SystemFacts(fileSystems: ["proc", "cgroup", "fuse"], cgroupControllers: ["cpu"], cgroups: .none)) { _ in true }
        let proc = entry(10, "/r/local_proc", "proc", "proc")
        let run = entry(11, "/r/run", "ext4", "/dev/vda", root: "/run", device: "254:0")
        let etc = entry(12, "/r/etc", "tmpfs", "tmpfs")
        let qtfs = entry(13, "/r/home/VMs", "fuse.qtfs", "qtfs:/home/VMs")
        let cgroup = entry(14, "/r/c/cpu", "cgroup", "cgroup", superOptions: "rw,cpuacct")
        let extra = entry(15, "/r/mnt", "tmpfs", "x")
        let status = MountStatus.compare(
            plan: plan,
            placements: [
                1: Placement(path: "/r/local_proc", stack: [proc]), 2: Placement(path: "/r/run", stack: [run]),
                3: Placement(path: "/r/etc", stack: [etc]), 4: Placement(path: "/r/home/VMs", stack: [qtfs]),
                6: Placement(path: "/r/c/cpu", stack: [cgroup]),
            ],
            bindSources: [2: BindSource(device: "254:0", root: "/run"), 3: BindSource(device: "254:0", root: "/etc")],
            mounts: [entry(1, "/", "ext4", "/dev/vda"), entry(2, "/r", "ext4", "/dev/vda"), proc, run, etc, qtfs, cgroup, extra],
            realRoot: "/r")
        #expect(status.steps.map(\.state.name) == ["present", "present", "different", "present", "skipped", "different"])
        #expect(status.extra == [extra])
        #expect(!status.isComplete)
    }

    @Test func aStackIsMatchedLayerByLayer() throws {
        var qtfs = MountEntry(target: "/sys", kind: .qtfs, source: "/sys")
        qtfs.hide = true
        let plan = try Planner.plan([MountEntry(target: "/sys", kind: .fileSystem("sysfs")), qtfs], root: "/r", facts: hybrid) { _ in true }
        let sysfs = entry(20, "/r/sys", "sysfs", "sysfs")
        let fuse = entry(21, "/r/sys", "fuse.qtfs", "qtfs:/sys", parent: 20)
        let both = MountStatus.compare(
            plan: plan, placements: [1: Placement(path: "/r/sys", stack: [sysfs, fuse]), 2: Placement(path: "/r/sys", stack: [sysfs, fuse])],
            bindSources: [:], mounts: [sysfs, fuse], realRoot: "/r")
        #expect(both.isComplete)
        let one = MountStatus.compare(
            plan: plan, placements: [1: Placement(path: "/r/sys", stack: [sysfs]), 2: Placement(path: "/r/sys", stack: [sysfs])],
            bindSources: [:], mounts: [sysfs], realRoot: "/r")
        #expect(one.steps.map(\.state.name) == ["present", "missing"])
    }

    @Test func aPtyBridgesDevptsBelongsToItsQtfsMount() throws {
        let plan = try Planner.plan(
            [MountEntry(target: "/dev/pts", kind: .qtfs, source: "/dev/pts", options: ["ptybridge"])],
            root: "/r", facts: hybrid) { _ in true }
        let fuse = entry(30, "/r/dev/pts", "fuse.qtfs", "qtfs:/dev/pts")
        let bridge = entry(31, "/r/dev/pts/.qtfs-ptys", "devpts", "devpts", parent: 30)
        let status = MountStatus.compare(
            plan: plan, placements: [1: Placement(path: "/r/dev/pts", stack: [fuse])], bindSources: [:],
            mounts: [fuse, bridge], realRoot: "/r")
        #expect(status.isComplete)
        // Anywhere else, or of another type, a mount no step made is extra.
        let stray = entry(32, "/r/dev/pts/.qtfs-ptys", "tmpfs", "tmpfs", parent: 30)
        let elsewhere = entry(33, "/r/dev/.qtfs-ptys", "devpts", "devpts", parent: 2)
        let other = MountStatus.compare(
            plan: plan, placements: [1: Placement(path: "/r/dev/pts", stack: [fuse])], bindSources: [:],
            mounts: [fuse, stray, elsewhere], realRoot: "/r")
        #expect(other.extra == [stray, elsewhere])
    }

    @Test func anOptionalTargetThatIsNotMadeIsSkippedWhenAbsent() throws {
        let plan = try Planner.plan(
            [MountEntry(target: "/dev/vfio", kind: .qtfs, source: "/dev/vfio", optional: true, create: false),
             MountEntry(target: "/dev/pts", kind: .qtfs, source: "/dev/pts")],
            root: "/r", facts: hybrid) { _ in true }
        let status = MountStatus.compare(
            plan: plan, placements: [1: Placement(path: nil, stack: []), 2: Placement(path: nil, stack: [])],
            bindSources: [:], mounts: [], realRoot: "/r")
        #expect(status.steps.map(\.state.name) == ["skipped", "missing"])
    }

    @Test func readOnlyMustMatch() {
        let entry = MountEntry(target: "/usr", kind: .bind(recursive: false), source: "/usr", options: ["ro"])
        let source = BindSource(device: "8:1", root: "/usr")
        #expect(MountStatus.matches(entry, self.entry(1, "/r/usr", "ext4", "/dev/sda1", root: "/usr", device: "8:1", options: "ro,relatime"), bindSource: source))
        #expect(!MountStatus.matches(entry, self.entry(1, "/r/usr", "ext4", "/dev/sda1", root: "/usr", device: "8:1", options: "rw,relatime"), bindSource: source))
    }
}

@Suite struct Paths {
    @Test func normalizeJoinAndWithin() {
        #expect(RootPath.normalize("/a//b/./c/") == "/a/b/c")
        #expect(RootPath.normalize("a/b") == nil && RootPath.normalize("/a/../b") == nil)
        #expect(RootPath.join("/another_rootfs", "/proc") == "/another_rootfs/proc")
        #expect(RootPath.join("/", "/proc") == "/proc")
        #expect(RootPath.isStrictlyWithin("/var/lib/libvirt", "/var/lib"))
        #expect(!RootPath.isWithin("/var/library", "/var/lib"))
        #expect(RootDirectory.lexical("/var/../run") == "/run" && RootDirectory.lexical("/../../x") == "/x")
    }
}

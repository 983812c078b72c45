import ArgumentParser
import DPUSystem
import MountPlan

/// `dpuctl mount`: the guide's mount plan, applied and undone safely.
struct MountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount", abstract: "Apply, revert and inspect the DPU rootfs's mount plan.",
        discussion: """
            The plan is the guide's list of mounts for the rootfs: this machine's /proc at /local_proc and \
            /local/proc, its sysfs and cgroup hierarchies at /local/sys, binds of /var/run, /var/lib, \
            /var/cache and /etc, devtmpfs, hugetlbfs, mqueue and shm under /dev, and qtfs mounts of the \
            host's /home/VMs, /var/lib/libvirt, /proc (proc mode), /sys, /dev/pts and /dev/vfio. A plan \
            file replaces or changes it: --plan FILE, else /etc/dpuctl/mounts.conf when it exists. \
            `dpuctl mount plan --as-file` prints the built-in plan in that format.

            A plan file is in dpuctl's configuration format, one section per mount; errors name the file \
            and line:

              [plan]
              base = default     change the built-in plan (else: the file is
                                 the whole plan)
              [mount /var/lib/libvirt]
              type = qtfs        bind, rbind, qtfs, or a file system type
                                 (proc, tmpfs, cgroup2, devtmpfs, ...)
              source = /var/lib/libvirt
                                 bind: a path here; qtfs: the path on the
                                 host; others: the name shown (the type)
              options = nosuid   ro, nosuid, nodev, noexec, relatime, ...;
                                 others are file system parameters
                                 (mode=0755, a cgroup controller); for qtfs
                                 all go to mount.qtfs -o
              optional = no      yes: skipped with a note when the type, a
                                 cgroup controller, the bind source, or
                                 (create = no) the target is missing
              create = yes       make the target directory when missing
              hide = no          yes: may stack over another entry there
              note = TEXT        shown by `dpuctl mount plan`
              enabled = yes      no (with base = default): drop the built-in
                                 entries at this target

            Targets are paths inside the rootfs, resolved there the way the chroot sees them (an absolute \
            var/run -> /run link stays inside it). Mounts are ordered parents first, then as written.
            """,
        subcommands: [MountApplyCommand.self, MountRevertCommand.self, MountStatusCommand.self, MountPlanCommand.self])
}

struct MountPlanOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A mount plan file (dpuctl's configuration format).", valueName: "file"))
    var plan: String?

    @Option(help: ArgumentHelp("The rootfs the plan mounts into.", valueName: "dir"))
    var root: String = MountPlanDefaults.root

    /// The ordered, checked plan.
    func load(localOnly: Bool = false) throws -> (plan: Plan, origin: String) {
        try MountPlanning.load(planPath: plan, root: root, localOnly: localOnly, facts: try SystemFacts.read())
    }
}

struct MountApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Mount what the plan says, idempotently; undo this run's mounts on failure.",
        discussion: """
            Targets are resolved inside the rootfs (a symbolic link there cannot lead out of it) and created \
            when missing. What is already mounted as planned is left alone; something else mounted there is \
            an error. If a step fails, what this run mounted is unmounted and the directories it made are \
            removed, in reverse order. qtfs entries run the qtfs client (this binary as mount.qtfs), which \
            reads the engine's address from the configuration's [qtfs] section (connect = URL).
            """)
    @OptionGroup var options: MountPlanOptions
    @Flag(name: .customLong("local-only"), help: "Apply everything except the qtfs mounts.")
    var localOnly = false
    @Option(help: ArgumentHelp("dpuctl configuration file, passed to the qtfs client ([qtfs] connect = URL).", valueName: "file"))
    var config: String?
    @Option(help: ArgumentHelp("Pre-shared key file, passed to the qtfs client.", valueName: "file"))
    var key: String?

    func run() async throws {
        try await reportingErrors("dpuctl mount apply") {
            let (plan, _) = try options.load(localOnly: localOnly)
            let client = QTFSClient(program: try selfExecutable(), configPath: config, keyPath: key)
            let events = try MountApplier(plan: plan, qtfs: client).apply()
            var mounted = 0, present = 0, skipped = 0
            for event in events {
                switch event {
                case .created(let path):
                    print("created   \(path)")
                case .mounted(let step, let path):
                    mounted += 1
                    print("mounted   \(stepNumber(step)) \(what(step)) on \(path)")
                case .present(let step, let path):
                    present += 1
                    print("present   \(stepNumber(step)) \(what(step)) on \(path)")
                case .skipped(let step, let skip):
                    skipped += 1
                    print("skipped   \(stepNumber(step)) \(step.entry.typeName) on \(step.mountPoint): \(skip)")
                }
            }
            print("\(plan.root): \(mounted) mounted, \(present) already present, \(skipped) skipped")
        }
    }
}

struct MountRevertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revert", abstract: "Unmount everything under the rootfs, in reverse order.",
        discussion: """
            Unmounts the plan's mounts (with --all, every mount under the rootfs), newest first and never a \
            mount before what is mounted on it; unmounting a qtfs mount ends its client. A busy mount is \
            reported with the processes that hold it (working directory, root, open or mapped files) and \
            left mounted, unless --lazy detaches it.
            """)
    @OptionGroup var options: MountPlanOptions
    @Flag(help: "Also unmount what the plan did not mount.")
    var all = false
    @Flag(help: "Detach busy mounts lazily instead of failing.")
    var lazy = false

    func run() async throws {
        try await reportingErrors("dpuctl mount revert") {
            let (plan, _) = try options.load()
            let report = try MountReverter(plan: plan, all: all, lazy: lazy).revert()
            var unmounted = 0
            for (mount, outcome) in report.mounts {
                switch outcome {
                case .unmounted:
                    unmounted += 1
                    print("unmounted \(mount.mountPoint)")
                case .detached(let holders):
                    unmounted += 1
                    print("detached  \(mount.mountPoint) (busy: \(holderText(holders)); it goes when they let go)")
                case .busy, .left:
                    break
                }
            }
            for pid in report.lingeringClients {
                print("warning: qtfs client \(pid) is still running after its mount went; stop it with `kill \(pid)`")
            }
            let failures = report.failures
            guard failures.isEmpty else {
                let lines = failures.map { mount, outcome -> String in
                    switch outcome {
                    case .busy(let holders): "\(mount.mountPoint) is busy (\(holderText(holders)))"
                    case .left(let why): "\(mount.mountPoint) left mounted: \(why)"
                    default: mount.mountPoint
                    }
                }
                throw MountCommandError(
                    "\(unmounted) unmounted, \(failures.count) not: \(lines.joined(separator: "; ")); stop what holds them and run `dpuctl mount revert` again, or add --lazy")
            }
            if !report.untouched.isEmpty {
                print("left alone, not in the plan (--all unmounts them): \(report.untouched.joined(separator: ", "))")
            }
            print("\(plan.root): \(unmounted) unmounted" + (unmounted == 0 && !all ? " (nothing of the plan was mounted)" : ""))
        }
    }
}

struct MountStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Compare the plan with what is mounted.",
        discussion: """
            Prints one row per planned mount (present, missing, different, skipped) and per extra mount under \
            the rootfs. Exits 0 when everything planned is present and nothing else is mounted there, 3 \
            otherwise.
            """)
    @OptionGroup var options: MountPlanOptions
    @Flag(name: .customLong("local-only"), help: "Compare with what `apply --local-only` mounts.")
    var localOnly = false

    func run() async throws {
        var complete = true
        try await reportingErrors("dpuctl mount status") {
            let (plan, _) = try options.load(localOnly: localOnly)
            let status = try MountPlanning.status(of: plan)
            var rows = [["STATE", "STEP", "MOUNT POINT", "TYPE", "SOURCE", "DETAIL"]]
            for item in status.steps {
                let step = item.step
                var detail = ""
                switch item.state {
                case .present(let mount) where mount.mountPoint != step.mountPoint: detail = "at \(mount.mountPoint)"
                case .different(let mount): detail = "has \(mount.summary) instead"
                case .skipped(let skip): detail = "\(skip)"
                default: break
                }
                rows.append([item.state.name, "\(step.number)", step.mountPoint, step.entry.typeName, step.entry.source, detail])
            }
            for mount in status.extra {
                rows.append(["extra", "-", mount.mountPoint, mount.fileSystemType, mount.source, "not in the plan"])
            }
            print(textTable(rows), terminator: "")
            let active = status.steps.count - status.count("skipped")
            print("planned \(active), present \(status.count("present")), missing \(status.count("missing")), different \(status.count("different")), skipped \(status.count("skipped")), extra \(status.extra.count)")
            complete = status.isComplete
        }
        if !complete { throw ExitCode(3) }
    }
}

struct MountPlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Print the ordered actions without doing anything.")
    @OptionGroup var options: MountPlanOptions
    @Flag(name: .customLong("local-only"), help: "Leave out the qtfs mounts, as `apply --local-only` does.")
    var localOnly = false
    @Flag(name: .customLong("as-file"), help: "Print the plan as a plan file, to start an own plan from.")
    var asFile = false

    func run() async throws {
        try await reportingErrors("dpuctl mount plan") {
            let (plan, origin) = try options.load(localOnly: localOnly)
            if asFile {
                print(PlanFile.render(plan.steps.map(\.entry)), terminator: "")
                return
            }
            let resolved = MountPlanning.resolvedTargets(of: plan)
            print("Mount plan for \(plan.root) from \(origin), \(plan.steps.count) steps:")
            for step in plan.steps {
                print("\(stepNumber(step)) \(step.summary)" + (step.skip.map { " (\($0))" } ?? ""))
                if step.skip == nil {
                    let create = step.entry.create && resolved[step.number] == nil ? "mkdir -p \(step.mountPoint) && " : ""
                    print("      \(create)\(step.command)")
                    if let path = resolved[step.number], path != step.mountPoint {
                        print("      (resolves inside the rootfs to \(path))")
                    }
                    if !step.entry.create { print("      (skipped if \(step.mountPoint) does not exist by then)") }
                }
                if let note = step.entry.note { print("      \(note)") }
            }
            let active = plan.active
            print("Revert, in this order:")
            for step in active.reversed() { print("      umount \(resolved[step.number] ?? step.mountPoint)") }
        }
    }
}

struct MountCommandError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

private func stepNumber(_ step: PlannedStep) -> String {
    let number = String(step.number)
    return String(repeating: " ", count: max(0, 3 - number.count)) + number
}

/// `proc`, `bind /var/lib`, `qtfs /proc`.
private func what(_ step: PlannedStep) -> String {
    step.entry.source == step.entry.typeName ? step.entry.typeName : "\(step.entry.typeName) \(step.entry.source)"
}

private func holderText(_ holders: [Holder]) -> String {
    if holders.isEmpty { return "no process found holding it: another mount namespace, or the kernel" }
    let shown = holders.prefix(4).map(\.description).joined(separator: "; ")
    return "held by " + shown + (holders.count > 4 ? "; and \(holders.count - 4) more processes" : "")
}

/// Left-aligned columns, two spaces apart, the last column unpadded.
func textTable(_ rows: [[String]]) -> String {
    guard let columns = rows.first?.count else { return "" }
    let widths = (0..<columns).map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { column, cell in
            column == columns - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
        }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
    }.joined()
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var text = Substring(self)
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}

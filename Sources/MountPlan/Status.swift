import DPUSystem

/// Where a step's target is on this machine right now.
public struct Placement: Sendable, Equatable {
    /// The mount point the target resolves to inside the rootfs; nil when the target does not exist.
    public var path: String?
    /// The mounts visible at `path`, bottom first (empty: nothing is mounted there).
    public var stack: [MountInfoEntry]

    public init(path: String?, stack: [MountInfoEntry]) {
        self.path = path
        self.stack = stack
    }
}

/// What a bind source is in the mount table: the device of the mount it lies in and its path within that
/// file system (a bind mount of it shows exactly these as `device` and `root`).
public struct BindSource: Sendable, Equatable {
    public var device: String
    public var root: String

    public init(device: String, root: String) {
        self.device = device
        self.root = root
    }
}

/// The state of one planned step.
public enum StepState: Sendable, Equatable {
    case present(MountInfoEntry)
    case missing
    /// Something else is mounted where the step's mount belongs.
    case different(MountInfoEntry)
    case skipped(Skip)

    public var name: String {
        switch self {
        case .present: "present"
        case .missing: "missing"
        case .different: "different"
        case .skipped: "skipped"
        }
    }
}

/// One step and its state.
public struct StepStatus: Sendable, Equatable {
    public var step: PlannedStep
    public var state: StepState
}

/// The plan compared with the mount table.
public struct MountStatus: Sendable, Equatable {
    public var steps: [StepStatus]
    /// Mounts under the rootfs that no step accounts for.
    public var extra: [MountInfoEntry]

    /// Whether everything that should be mounted is, as planned, and nothing else is.
    public var isComplete: Bool {
        extra.isEmpty && steps.allSatisfy { if case .present = $0.state { true } else if case .skipped = $0.state { true } else { false } }
    }

    /// Counts by state, for the summary line.
    public func count(_ name: String) -> Int { steps.filter { $0.state.name == name }.count }

    /// Compares: the k-th active step resolving to a mount point is matched against the k-th mount of
    /// the stack there (bottom first). `realRoot` is the rootfs's resolved path, whose own mount (if it
    /// is one) is not "under" it.
    public static func compare(
        plan: Plan, placements: [Int: Placement], bindSources: [Int: BindSource], mounts: [MountInfoEntry],
        realRoot: String
    ) -> MountStatus {
        var result: [StepStatus] = []
        var layers: [String: Int] = [:]
        var accounted: Set<Int> = []
        for step in plan.steps {
            if let skip = step.skip {
                result.append(StepStatus(step: step, state: .skipped(skip)))
                continue
            }
            guard let placement = placements[step.number], let path = placement.path else {
                // An optional target that is not made (/dev/vfio) is skipped when it is not there, as apply does.
                let absent = step.entry.optional && !step.entry.create
                result.append(StepStatus(
                    step: step, state: absent ? .skipped(.unavailable("\(step.mountPoint) does not exist (create = no)")) : .missing))
                continue
            }
            let layer = layers[path, default: 0]
            layers[path] = layer + 1
            guard layer < placement.stack.count else {
                result.append(StepStatus(step: step, state: .missing))
                continue
            }
            let mount = placement.stack[layer]
            accounted.insert(mount.id)
            if matches(step.entry, mount, bindSource: bindSources[step.number]) {
                result.append(StepStatus(step: step, state: .present(mount)))
            } else {
                result.append(StepStatus(step: step, state: .different(mount)))
            }
        }
        // The devpts a qtfs client mounts on its hidden `.qtfs-ptys` while a host terminal is in use
        // (`-o ptybridge`) is part of that qtfs mount.
        let qtfsMounts = Set(result.compactMap { status -> Int? in
            guard case .present(let mount) = status.state, status.step.entry.kind == .qtfs else { return nil }
            return mount.id
        })
        let extra = mounts.filter {
            RootPath.isStrictlyWithin($0.mountPoint, realRoot) && !accounted.contains($0.id)
                && !isTerminalBridge($0, under: qtfsMounts)
        }
        return MountStatus(steps: result, extra: extra)
    }

    /// Whether `mount` is the devpts of a pty bridge on one of the qtfs mounts `qtfsMounts` (ids).
    static func isTerminalBridge(_ mount: MountInfoEntry, under qtfsMounts: Set<Int>) -> Bool {
        mount.fileSystemType == "devpts" && qtfsMounts.contains(mount.parentID) && mount.mountPoint.hasSuffix("/.qtfs-ptys")
    }

    /// Whether `mount` is what `entry` would have mounted.
    public static func matches(_ entry: MountEntry, _ mount: MountInfoEntry, bindSource: BindSource?) -> Bool {
        if entry.attributes.contains(.readOnly) != mount.options.split(separator: ",").contains("ro") { return false }
        switch entry.kind {
        case .bind:
            guard let bindSource else { return false }
            return mount.device == bindSource.device && mount.root == bindSource.root
        case .qtfs:
            // dpuctl's FUSE client names its mounts `qtfs:HOSTPATH`; the original kernel module shows
            // type qtfs with the source as given.
            if mount.fileSystemType == "fuse.qtfs" {
                return mount.source == "qtfs:" + entry.source || mount.source == entry.source
            }
            return mount.fileSystemType == "qtfs" && mount.source == entry.source
        case .fileSystem(let type):
            guard mount.fileSystemType == type else { return false }
            if type == "cgroup" {
                let words = Set(mount.superOptions.split(separator: ",").map(String.init))
                return entry.cgroupControllers.allSatisfy { words.contains($0) }
            }
            return true
        }
    }
}

extension MountInfoEntry {
    /// `TYPE SOURCE`, for messages.
    public var summary: String {
        fileSystemType == source ? fileSystemType : "\(fileSystemType) \(source)" + (root == "/" ? "" : " (\(root))")
    }
}

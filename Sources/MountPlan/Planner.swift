/// A problem with the plan itself, found before anything is mounted: names the entry's file and line.
public struct PlanError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Why a step does not run.
public enum Skip: Sendable, Equatable, CustomStringConvertible {
    /// An optional entry whose prerequisite is missing.
    case unavailable(String)
    /// A qtfs entry under `--local-only`.
    case localOnly

    public var description: String {
        switch self {
        case .unavailable(let why): "optional, skipped: \(why)"
        case .localOnly: "qtfs, not applied with --local-only"
        }
    }
}

/// One step of the plan, in the order it is applied.
public struct PlannedStep: Sendable, Equatable {
    /// 1-based position in the plan.
    public var number: Int
    public var entry: MountEntry
    /// The rootfs plus the target, as written (a symbolic link in it is resolved inside the rootfs when
    /// applied).
    public var mountPoint: String
    public var skip: Skip?

    /// What the step does, as the equivalent command line.
    public var command: String {
        let options = entry.options.isEmpty ? "" : " -o \(entry.options.joined(separator: ","))"
        switch entry.kind {
        case .bind(let recursive):
            return "mount --\(recursive ? "rbind" : "bind")\(options) \(shellWord(entry.source)) \(shellWord(mountPoint))"
        case .qtfs:
            return "mount -t qtfs\(options) \(shellWord(entry.source)) \(shellWord(mountPoint))"
        case .fileSystem(let type):
            return "mount -t \(type)\(options) \(shellWord(entry.source)) \(shellWord(mountPoint))"
        }
    }

    /// `TYPE SOURCE -> TARGET`, short, for messages.
    public var summary: String {
        let from = entry.source == entry.kind.defaultSource ? entry.typeName : "\(entry.typeName) \(entry.source)"
        return "\(from) on \(mountPoint)"
    }
}

/// The plan for one rootfs: ordered steps.
public struct Plan: Sendable, Equatable {
    public var root: String
    public var steps: [PlannedStep]

    /// The steps that run.
    public var active: [PlannedStep] { steps.filter { $0.skip == nil } }
}

/// Orders and checks a list of entries: pure, no system access (what exists is asked through `exists`).
public enum Planner {
    /// Orders `entries` so that a mount never lands below a later one (parents first, the written order
    /// otherwise), refuses two mounts at one target unless the later says `hide = yes`, and decides which
    /// optional entries are skipped. A required entry whose prerequisite is missing is an error here,
    /// before anything is mounted.
    ///
    /// - Parameters:
    ///   - exists: whether a path exists on this machine (bind sources).
    ///   - localOnly: leave out the qtfs entries.
    public static func plan(
        _ entries: [MountEntry], root: String, facts: SystemFacts, localOnly: Bool = false,
        exists: (String) -> Bool
    ) throws(PlanError) -> Plan {
        guard root != "/" else {
            throw PlanError("the rootfs cannot be / itself: the plan would mount over this machine's own /proc, /etc and /dev; use a directory such as /another_rootfs")
        }
        var seen: [String: MountEntry] = [:]
        for entry in entries {
            if let first = seen[entry.target], !entry.hide {
                throw PlanError(
                    "\(entry.origin): [mount \(entry.target)] is also mounted by \(first.origin); a second mount there would hide the first: remove one, or say `hide = yes` in the later one")
            }
            seen[entry.target] = seen[entry.target] ?? entry
        }

        var steps: [PlannedStep] = []
        for entry in order(entries) {
            var skip: Skip?
            if let missing = missingPrerequisite(entry, facts: facts, exists: exists) {
                guard entry.optional else {
                    throw PlanError("\(entry.origin): [mount \(entry.target)] cannot be mounted: \(missing); remove it from the plan or say `optional = yes`")
                }
                skip = .unavailable(missing)
            }
            if localOnly && entry.kind == .qtfs { skip = skip ?? .localOnly }
            steps.append(PlannedStep(
                number: steps.count + 1, entry: entry, mountPoint: RootPath.join(root, entry.target), skip: skip))
        }
        return Plan(root: root, steps: steps)
    }

    /// Stable topological order: an entry comes after every entry whose target is above its own; among
    /// unrelated entries, and for a stack at one target, the written order stands.
    public static func order(_ entries: [MountEntry]) -> [MountEntry] {
        var remaining = entries
        var ordered: [MountEntry] = []
        while !remaining.isEmpty {
            let next = remaining.firstIndex { candidate in
                !remaining.contains { RootPath.isStrictlyWithin(candidate.target, $0.target) }
            }!  // the entry with the shortest target always qualifies
            ordered.append(remaining.remove(at: next))
        }
        return ordered
    }

    /// What an entry needs that this machine does not have, if anything. (A target that must already
    /// exist, `create = no`, is checked when its turn comes: an earlier mount may provide it.)
    public static func missingPrerequisite(
        _ entry: MountEntry, facts: SystemFacts, exists: (String) -> Bool
    ) -> String? {
        switch entry.kind {
        case .bind:
            return exists(entry.source) ? nil : "the source \(entry.source) does not exist on this machine"
        case .qtfs:
            return facts.fileSystems.contains("fuse") ? nil : "this kernel has no FUSE, which the qtfs client needs"
        case .fileSystem(let type):
            guard facts.fileSystems.contains(type) else { return "this kernel has no \(type) file system" }
            if type == "cgroup" {
                let missing = entry.cgroupControllers.filter {
                    !$0.hasPrefix("name=") && !facts.cgroupControllers.contains($0)
                }
                if !missing.isEmpty {
                    return "this kernel has no cgroup controller \(missing.joined(separator: ", ")) (see /proc/cgroups)"
                }
            }
            return nil
        }
    }
}

/// `word` quoted for a POSIX shell when it needs it.
func shellWord(_ word: String) -> String {
    let plain = word.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "/._-,=:+@%".contains($0)) }
    if plain && !word.isEmpty { return word }
    return "'" + word.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
}

import DPUConfig
import DPUSystem
import Glibc

/// Loading a plan and looking at the machine: the entry points the command line uses.
public enum MountPlanning {
    /// The plan for `root`: from `planPath`, else from /etc/dpuctl/mounts.conf when it exists, else the
    /// built-in plan; ordered and checked against this kernel. Returns where the plan came from too.
    public static func load(
        planPath: String?, root: String, localOnly: Bool, facts: SystemFacts
    ) throws -> (plan: Plan, origin: String) {
        let builtIn = MountPlanDefaults.builtIn(facts: facts)
        var entries = builtIn
        var origin = "the built-in plan"
        let path = planPath ?? (access(PlanFile.defaultPath, F_OK) == 0 ? PlanFile.defaultPath : nil)
        if let path, let file = try ConfigFile.load(path, optional: false) {
            entries = try PlanFile.entries(from: file, builtIn: builtIn)
            origin = path
        }
        guard let normalizedRoot = RootPath.normalize(root) else {
            throw PlanError("the rootfs `\(root)` must be an absolute path without `..`")
        }
        let plan = try Planner.plan(entries, root: normalizedRoot, facts: facts, localOnly: localOnly) {
            access($0, F_OK) == 0
        }
        return (plan, origin)
    }

    /// The plan compared with /proc/self/mountinfo.
    public static func status(of plan: Plan) throws(SystemError) -> MountStatus {
        try Survey(plan: plan).status(of: plan)
    }

    /// Where each step's target resolves inside the rootfs now (nil: it does not exist yet), for `plan`
    /// to show where a symbolic link sends a mount.
    public static func resolvedTargets(of plan: Plan) -> [Int: String] {
        guard let survey = try? Survey(plan: plan) else { return [:] }
        return survey.placements.compactMapValues(\.path)
    }
}

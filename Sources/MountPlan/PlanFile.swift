import DPUConfig

/// A mount plan file, in dpuctl's configuration format (see README.md):
///
/// ```
/// [plan]
/// base = default            # start from the built-in plan and change it; without this the file is the plan
///
/// [mount /var/lib/libvirt]  # the target, as the rootfs sees it
/// type = qtfs               # bind, rbind, qtfs, or a file system type (proc, tmpfs, cgroup2, ...)
/// source = /var/lib/libvirt # bind: a path here; qtfs: a path on the host; file systems: the name shown
/// options = nosuid,nodev    # mount options (for qtfs: what mount.qtfs -o gets)
/// optional = no             # skip with a note when a prerequisite is missing
/// create = yes              # create the target directory when missing
/// hide = no                 # may cover another mount of the plan at the same target
/// note = why it is there
/// enabled = yes             # `no` drops the base plan's entries at this target
/// ```
public enum PlanFile {
    /// The default location of an operator's plan; the built-in plan applies when it does not exist.
    public static let defaultPath = "/etc/dpuctl/mounts.conf"

    static let mountKeys: Set<String> = ["type", "source", "options", "optional", "create", "hide", "note", "enabled"]

    /// Parses a plan file and, if it says `base = default`, applies it to `builtIn`. Every error names the
    /// file and line.
    public static func entries(from file: ConfigFile, builtIn: [MountEntry]) throws(ConfigError) -> [MountEntry] {
        try file.rejectUnknownSections(["plan", "mount"])
        var useBase = false
        let planSections = file.sections(named: "plan")
        if planSections.count > 1 {
            throw ConfigError(path: file.path, line: planSections[1].line, "[plan] is given twice (first on line \(planSections[0].line))")
        }
        if let plan = planSections.first {
            try plan.rejectUnknownKeys(["base"])
            if let base = try plan.value("base") {
                switch base.value {
                case "default": useBase = true
                case "none": useBase = false
                default: throw plan.error(base, "expected `base = default` (change the built-in plan) or `base = none`, got `\(base.value)`")
                }
            }
        }

        var own: [(target: String, entry: MountEntry?)] = []
        for section in file.sections(named: "mount") {
            own.append(try parse(section, allowDisabling: useBase))
        }
        if own.isEmpty && !useBase {
            throw ConfigError(path: file.path, line: nil, "the plan has no [mount TARGET] section; add some, or `[plan]` with `base = default`")
        }
        guard useBase else { return own.compactMap(\.entry) }

        // Each target the file names replaces every base entry at that target, in the place of the first;
        // new targets go at the end (the planner still orders parents before children).
        let targets = Set(own.map(\.target))
        var result: [MountEntry] = []
        var placed: Set<String> = []
        for entry in builtIn {
            guard targets.contains(entry.target) else {
                result.append(entry)
                continue
            }
            if placed.insert(entry.target).inserted {
                result += own.filter { $0.target == entry.target }.compactMap(\.entry)
            }
        }
        for item in own where !placed.contains(item.target) {
            if let entry = item.entry { result.append(entry) }
        }
        return result
    }

    /// One `[mount TARGET]` section; `entry` is nil for `enabled = no`.
    static func parse(_ section: ConfigSection, allowDisabling: Bool) throws(ConfigError) -> (target: String, entry: MountEntry?) {
        try section.rejectUnknownKeys(mountKeys)
        let where_ = ConfigError(path: section.file, line: section.line, "")
        guard let written = section.argument, let target = RootPath.normalize(written), target != "/" else {
            var error = where_
            error.message = "expected [mount TARGET] with an absolute path inside the rootfs other than / and without `..`, like [mount /var/lib/libvirt]"
            throw error
        }
        if let enabled = try section.bool("enabled"), !enabled {
            guard allowDisabling, let entry = try section.value("enabled") else {
                var error = where_
                error.message = "`enabled = no` only makes sense with [plan] base = default"
                throw error
            }
            if section.entries.count > 1 {
                let other = section.entries.first { $0.key != "enabled" }!
                throw section.error(other, "[mount \(target)] is disabled (line \(entry.line)); it takes no other keys")
            }
            return (target, nil)
        }
        guard let typeEntry = try section.value("type") else {
            var error = where_
            error.message = "[mount \(target)] needs `type = ` (bind, rbind, qtfs, or a file system type such as proc, tmpfs, cgroup2)"
            throw error
        }
        guard let kind = MountEntry.Kind(name: typeEntry.value) else {
            throw section.error(typeEntry, "`\(typeEntry.value)` is not a mount type: expected bind, rbind, qtfs, or a file system type (lowercase letters, digits, . _ -)")
        }
        let options = try section.value("options").map { MountOptions.list($0.value) } ?? []
        var source = try section.value("source")?.value
        switch kind {
        case .bind, .qtfs:
            guard let entry = try section.value("source") else {
                var error = where_
                error.message = "[mount \(target)] of type \(kind.name) needs `source = /path` (\(kind == .qtfs ? "the path on the host" : "the path on this machine"))"
                throw error
            }
            guard entry.value.hasPrefix("/"), !entry.value.split(separator: "/").contains("..") else {
                throw section.error(entry, "`source` must be an absolute path without `..`, got `\(entry.value)`")
            }
            source = entry.value
            if case .bind = kind, let bad = options.first(where: { !MountOptions.isAttribute($0) }) {
                let line = try section.value("options")!
                throw section.error(line, "a bind mount takes only ro, rw, nosuid, nodev, noexec, noatime, relatime, strictatime, nodiratime; `\(bad)` is none of them")
            }
        case .fileSystem(let type):
            if type == "cgroup", !options.contains(where: { !MountOptions.isAttribute($0) }) {
                let line = try section.value("options") ?? typeEntry
                throw section.error(line, "a cgroup (v1) mount needs its controllers in `options` (cpu, memory, name=systemd, ...); for the unified hierarchy use type = cgroup2")
            }
        }
        let entry = MountEntry(
            target: target, kind: kind, source: source, options: options,
            optional: try section.bool("optional") ?? false, create: try section.bool("create") ?? true,
            hide: try section.bool("hide") ?? false, note: try section.value("note")?.value,
            origin: .file(section.file, line: section.line))
        return (target, entry)
    }

    /// The plan as a plan file: what `dpuctl mount plan --as-file` prints, a starting point for an
    /// operator's own plan.
    public static func render(_ entries: [MountEntry]) -> String {
        var text = "# dpuctl mount plan (format: see `man dpuctl` and Sources/MountPlan/README.md)\n"
        for entry in entries {
            text += "\n[mount \(entry.target)]\n"
            if let note = entry.note { text += "note = \(note)\n" }
            text += "type = \(entry.typeName)\n"
            if entry.source != entry.kind.defaultSource { text += "source = \(entry.source)\n" }
            if !entry.options.isEmpty { text += "options = \(entry.options.joined(separator: ","))\n" }
            if entry.optional { text += "optional = yes\n" }
            if !entry.create { text += "create = no\n" }
            if entry.hide { text += "hide = yes\n" }
        }
        return text
    }
}

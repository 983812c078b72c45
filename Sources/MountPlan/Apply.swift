import DPUSystem
import Glibc
import SystemPackage

/// How qtfs entries are mounted: the qtfs client run as a program, the way mount(8) runs `mount.qtfs`.
public struct QTFSClient: Sendable {
    /// The program: normally this dpuctl binary (/proc/self/exe), run under the name `mount.qtfs`.
    public var program: String
    public var programName: String
    /// dpuctl's configuration, passed on (`--config`): the client finds the engine's address in its
    /// [qtfs] section (`connect = URL`).
    public var configPath: String?
    /// The pre-shared key file, passed on (`--key`).
    public var keyPath: String?
    /// How long the client may take to have the mount live before the step fails.
    public var timeoutSeconds: Int32

    public init(
        program: String, programName: String = "mount.qtfs", configPath: String?, keyPath: String? = nil,
        timeoutSeconds: Int32 = 60
    ) {
        self.program = program
        self.programName = programName
        self.configPath = configPath
        self.keyPath = keyPath
        self.timeoutSeconds = timeoutSeconds
    }

    /// The client's command line for one mount.
    public func arguments(source: String, mountPoint: String, options: [String]) -> [String] {
        var arguments = [programName, source, mountPoint]
        if !options.isEmpty { arguments += ["-o", options.joined(separator: ",")] }
        if let configPath { arguments += ["--config", configPath] }
        if let keyPath { arguments += ["--key", keyPath] }
        return arguments
    }
}

/// What `apply` did, step by step.
public enum ApplyEvent: Sendable, Equatable {
    case created(String)
    case mounted(PlannedStep, at: String)
    case present(PlannedStep, at: String)
    case skipped(PlannedStep, Skip)
}

/// A failed apply: the step, what went wrong, what to do, and what was rolled back.
public struct MountApplyError: Error, Sendable, CustomStringConvertible {
    public var step: PlannedStep
    public var stepCount: Int
    public var problem: String
    /// What was undone ("unmounted 4 mounts and removed 2 directories").
    public var rolledBack: String
    /// What could not be undone, each with its reason.
    public var rollbackFailures: [String]

    public var description: String {
        var text = "step \(step.number) of \(stepCount) (\(step.summary), \(step.entry.origin)): \(problem)"
        text += rollbackFailures.isEmpty
            ? "; \(rolledBack)"
            : "; rollback incomplete: \(rollbackFailures.joined(separator: "; ")) (\(rolledBack))"
        return text
    }
}

/// Applies a plan: idempotent (what is mounted as planned stays), transactional (a failure unmounts what
/// this run mounted and removes the directories it made, in reverse).
public struct MountApplier {
    public var plan: Plan
    public var qtfs: QTFSClient

    public init(plan: Plan, qtfs: QTFSClient) {
        self.plan = plan
        self.qtfs = qtfs
    }

    /// What this run changed, for the rollback.
    private enum Done {
        case created(String)
        case mounted(String)
    }

    public func apply() throws(MountApplyError) -> [ApplyEvent] {
        var events: [ApplyEvent] = []
        var done: [Done] = []
        var layers: [String: Int] = [:]
        let count = plan.steps.count
        // The rootfs itself must exist: the plan mounts into it, `rootfs prepare` makes it.
        let root: RootDirectory
        do {
            root = try RootDirectory(plan.root)
        } catch {
            guard let first = plan.steps.first else { return [] }
            throw MountApplyError(
                step: first, stepCount: count,
                problem: "the rootfs \(plan.root) cannot be opened (\(error.errno)); create it with `dpuctl rootfs prepare --root \(plan.root)`",
                rolledBack: "nothing was changed", rollbackFailures: [])
        }
        for step in plan.steps {
            if let skip = step.skip {
                events.append(.skipped(step, skip))
                continue
            }
            do throws(StepFailure) {
                if let event = try run(step, root: root, layers: &layers, done: &done, events: &events) {
                    events.append(event)
                }
            } catch {
                let (summary, failures) = rollBack(done)
                throw MountApplyError(
                    step: step, stepCount: count, problem: error.message, rolledBack: summary, rollbackFailures: failures)
            }
        }
        return events
    }

    private struct StepFailure: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    private func run(
        _ step: PlannedStep, root: RootDirectory, layers: inout [String: Int], done: inout [Done],
        events: inout [ApplyEvent]
    ) throws(StepFailure) -> ApplyEvent? {
        let entry = step.entry
        // 1. The target, resolved inside the rootfs; created if missing and allowed.
        var target: FileDescriptor
        do {
            if let existing = try root.resolve(entry.target) {
                target = existing
            } else if entry.create {
                let (fd, created) = try root.makeDirectories(entry.target)
                target = fd
                for path in created {
                    done.append(.created(path))
                    events.append(.created(path))
                }
            } else if entry.optional {
                return .skipped(step, .unavailable("\(step.mountPoint) does not exist (create = no)"))
            } else {
                throw StepFailure("\(step.mountPoint) does not exist and the entry says create = no; create it, or make the entry optional")
            }
        } catch let error as StepFailure {
            throw error
        } catch let error as SystemError {
            throw StepFailure(explain(error, "cannot resolve or create the target \(step.mountPoint) inside the rootfs"))
        } catch {
            throw StepFailure("\(error)")
        }
        defer { target.closeQuietly() }

        // 2. What is mounted there now.
        let path: String
        let stack: [MountInfoEntry]
        let table: MountTable
        do {
            path = try target.realPath()
            table = try MountTable.read()
            stack = try table.stack(at: target, path: path)
        } catch {
            throw StepFailure(explain(error, "cannot inspect \(step.mountPoint)"))
        }
        let layer = layers[path, default: 0]
        layers[path] = layer + 1
        let source = entry.kind == .bind(recursive: false) || entry.kind == .bind(recursive: true)
            ? try? Survey.bindSource(entry.source, table: table) : nil
        if layer < stack.count {
            let mounted = stack[layer]
            if MountStatus.matches(entry, mounted, bindSource: source) { return .present(step, at: path) }
            throw StepFailure(
                "\(path) already has \(mounted.summary) mounted, not the planned \(entry.typeName) \(entry.source); unmount it (`umount \(path)`) or change the plan")
        }
        // 3. Nothing may end up hidden unless the plan says so.
        if !entry.hide {
            if let covered = stack.last {
                throw StepFailure(
                    "\(path) already has \(covered.summary) mounted, which this mount would hide; unmount it, or say `hide = yes` in the plan")
            }
            if let below = table.mounts.first(where: { RootPath.isStrictlyWithin($0.mountPoint, path) }) {
                throw StepFailure(
                    "\(below.mountPoint) (\(below.summary)) is mounted below \(path) and this mount would hide it; run `dpuctl mount revert` first, or say `hide = yes` in the plan")
            }
        }

        // 4. Mount.
        switch entry.kind {
        case .bind(let recursive):
            try bind(entry, recursive: recursive, onto: target, path: path)
        case .fileSystem(let type):
            try mountFileSystem(entry, type: type, onto: target, path: path)
        case .qtfs:
            try runClient(entry, path: path)
        }
        done.append(.mounted(path))

        // 5. The mount table must now show it.
        do {
            let after = try MountTable.read()
            guard let fresh = try root.resolve(entry.target) else { throw SystemError(.noSuchFileOrDirectory, "resolve", path) }
            defer { fresh.closeQuietly() }
            let now = try after.stack(at: fresh, path: path)
            guard now.count == layer + 1, MountStatus.matches(entry, now[layer], bindSource: source) else {
                throw StepFailure("mounted, but the mount table does not show the planned \(entry.typeName) at \(path)")
            }
        } catch let error as StepFailure {
            throw error
        } catch {
            throw StepFailure("mounted, but cannot check it: \(error)")
        }
        return .mounted(step, at: path)
    }

    private func bind(
        _ entry: MountEntry, recursive: Bool, onto target: borrowing FileDescriptor, path: String
    ) throws(StepFailure) {
        do {
            let tree = try FileDescriptor(rawValue: AT_FDCWD).cloneMountTree(entry.source, recursive: recursive)
            defer { tree.closeQuietly() }
            let attributes = entry.attributes
            if !attributes.isEmpty {
                try tree.setMountAttributes(set: attributes, recursive: recursive, subject: entry.source)
            }
            try tree.attachMount(onto: target, subject: path)
        } catch {
            throw StepFailure(explain(error, "cannot bind \(entry.source) on \(path)"))
        }
    }

    private func mountFileSystem(
        _ entry: MountEntry, type: String, onto target: borrowing FileDescriptor, path: String
    ) throws(StepFailure) {
        let context: FileSystemContext
        do {
            context = try FileSystemContext(type: type)
        } catch {
            throw StepFailure(explain(error, "cannot mount \(type) on \(path)"))
        }
        do {
            try context.set("source", entry.source)
            for parameter in entry.parameters {
                if let value = parameter.value {
                    try context.set(parameter.key, value)
                } else {
                    try context.set(flag: parameter.key)
                }
            }
            try context.create()
            let mount = try context.mount(attributes: entry.attributes)
            defer { mount.closeQuietly() }
            try mount.attachMount(onto: target, subject: path)
        } catch {
            let said = context.kernelMessages()
            let kernel = said.isEmpty ? "" : " (the kernel says: \(said.joined(separator: "; ")))"
            throw StepFailure(explain(error, "cannot mount \(type) on \(path)") + kernel)
        }
    }

    private func runClient(_ entry: MountEntry, path: String) throws(StepFailure) {
        let arguments = qtfs.arguments(source: entry.source, mountPoint: path, options: entry.options)
        // The client detaches a daemon that may keep its stderr: when ours is a pipe, whoever reads it
        // would wait for that daemon to end. Then the client writes to a file of its own, quoted on failure.
        var info = stat()
        let captured = fstat(2, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO ? try? ChildProcess.anonymousFile() : nil
        defer { captured?.closeQuietly() }
        let status: ExitStatus
        do {
            status = try ChildProcess.run(
                qtfs.program, arguments: arguments, errorOutput: captured, timeoutSeconds: qtfs.timeoutSeconds)
        } catch let error as ChildProcess.Timeout {
            throw StepFailure("\(qtfs.programName) did not have \(path) mounted within \(error.seconds) s and was stopped; check that the qtfs engine is running on the host and reachable")
        } catch let error as SystemError {
            throw StepFailure(explain(error, "cannot run the qtfs client \(qtfs.program) as \(qtfs.programName)"))
        } catch {
            throw StepFailure("\(error)")
        }
        guard status == .exited(0) else {
            var said = "its message is above"
            if let captured, let text = try? ChildProcess.contents(of: captured, limit: 4096) {
                let lines = text.split(separator: "\n").suffix(3).joined(separator: " / ")
                said = lines.isEmpty ? "it said nothing" : "it said: \(lines)"
            }
            throw StepFailure("`\(arguments.joined(separator: " "))` \(status) (\(said)); check the [qtfs] section of the configuration (connect = URL) and the key, and that the engine runs on the host; or apply with --local-only")
        }
    }

    /// Undoes `done` in reverse; returns a summary and what could not be undone.
    private func rollBack(_ done: [Done]) -> (String, [String]) {
        var unmounted = 0, removed = 0
        var failures: [String] = []
        for item in done.reversed() {
            switch item {
            case .mounted(let path):
                do {
                    try Mount.unmount(path, flags: .noFollow)
                    unmounted += 1
                } catch {
                    failures.append("cannot unmount \(path): \(error.errno)")
                }
            case .created(let path):
                if rmdir(path) == 0 { removed += 1 } else { failures.append("cannot remove \(path): \(Errno(rawValue: errno))") }
            }
        }
        if unmounted == 0 && removed == 0 && failures.isEmpty { return ("nothing had been changed", []) }
        return ("rolled back: unmounted \(unmounted) mount\(unmounted == 1 ? "" : "s") and removed \(removed) director\(removed == 1 ? "y" : "ies") made by this run", failures)
    }
}

/// A system error turned into "what failed: why; what to do".
func explain(_ error: SystemError, _ what: String) -> String {
    let hint: String
    switch error.errno {
    case .notPermitted, .permissionDenied: hint = "; mounting needs root (CAP_SYS_ADMIN in this mount namespace)"
    case .operationNotSupportedByDevice: hint = "; this kernel does not know that file system type (load its module, or mark the entry optional)"
    case .noSuchFileOrDirectory: hint = "; check that the path exists"
    case .resourceBusy: hint = "; something is in the way (already mounted, or in use)"
    default: hint = ""
    }
    return "\(what): \(error)\(hint)"
}

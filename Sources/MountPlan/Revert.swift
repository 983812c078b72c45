import DPUSystem
import Glibc
import SystemPackage

/// What `revert` did.
public struct RevertReport: Sendable {
    public enum Outcome: Sendable, Equatable {
        case unmounted
        /// Busy, detached lazily (`--lazy`): it goes away when its last user does.
        case detached([Holder])
        /// Busy, left mounted.
        case busy([Holder])
        /// Not attempted: something still mounted below it, or another error.
        case left(String)
    }

    /// Each mount considered, in the order handled.
    public var mounts: [(mount: MountInfoEntry, outcome: Outcome)] = []
    /// qtfs clients that did not end after their mount went, even after SIGTERM.
    public var lingeringClients: [Int32] = []
    /// Mounts under the rootfs that the plan did not make and that were left alone (without `--all`).
    public var untouched: [String] = []

    public var failures: [(mount: MountInfoEntry, outcome: Outcome)] {
        mounts.filter { if case .busy = $0.outcome { true } else if case .left = $0.outcome { true } else { false } }
    }
}

/// Unmounts the plan's mounts (or, with `all`, every mount under the rootfs) in strict reverse order: a
/// mount goes only after everything mounted on or below it, the newest first. Never lazily unless told.
public struct MountReverter {
    public var plan: Plan
    public var all: Bool
    public var lazy: Bool

    public init(plan: Plan, all: Bool, lazy: Bool) {
        self.plan = plan
        self.all = all
        self.lazy = lazy
    }

    public func revert() throws(SystemError) -> RevertReport {
        var report = RevertReport()
        let survey = try Survey(plan: plan)
        var selected: [MountInfoEntry]
        if all {
            selected = survey.table.mounts.filter { RootPath.isStrictlyWithin($0.mountPoint, survey.realRoot) }
        } else {
            let ours = Set(survey.status(of: plan).steps.compactMap { item -> Int? in
                if case .present(let mount) = item.state { return mount.id }
                return nil
            })
            selected = survey.table.mounts.filter { ours.contains($0.id) }
            report.untouched = survey.table.mounts.filter {
                RootPath.isStrictlyWithin($0.mountPoint, survey.realRoot) && !ours.contains($0.id)
            }.map(\.mountPoint)
        }
        // A qtfs client's pty bridge devpts goes with its qtfs mount: the client unmounts it.
        let qtfsMounts = Set(survey.table.mounts.filter { $0.fileSystemType == "fuse.qtfs" }.map(\.id))
        selected.removeAll { MountStatus.isTerminalBridge($0, under: qtfsMounts) }
        // Newest first: mountinfo lists mounts in the order they were made.
        selected.reverse()
        var table = survey.table
        var pending = selected
        var progress = true
        while progress && !pending.isEmpty {
            progress = false
            for mount in pending where !hasChildren(mount, in: table) {
                let outcome = unmount(mount)
                report.mounts.append((mount, outcome))
                pending.removeAll { $0.id == mount.id }
                if outcome == .unmounted || { if case .detached = outcome { true } else { false } }() {
                    progress = true
                    table = (try? MountTable.read()) ?? table
                    // A lazily detached qtfs mount is still in use: its client serves it until the users go.
                    if mount.fileSystemType == "fuse.qtfs" && outcome == .unmounted {
                        report.lingeringClients += awaitClients(of: mount.mountPoint)
                    }
                }
            }
        }
        for mount in pending {
            let below = table.mounts.filter { $0.parentID == mount.id && $0.id != mount.id }.map(\.mountPoint)
            let unplanned = below.filter { path in !selected.contains { $0.mountPoint == path } }
            let why = unplanned.isEmpty
                ? "\(below.joined(separator: ", ")) is still mounted on it"
                : "\(unplanned.joined(separator: ", ")) is mounted on it and is not in the plan (unmount it, or use --all)"
            report.mounts.append((mount, .left(why)))
        }
        return report
    }

    /// Whether something is mounted on `mount`, other than the devpts of its own pty bridge (a qtfs client
    /// mounted with `ptybridge` has it while a host terminal is in use; it goes when the client ends).
    private func hasChildren(_ mount: MountInfoEntry, in table: MountTable) -> Bool {
        table.mounts.contains {
            $0.parentID == mount.id && $0.id != mount.id
                && !(mount.fileSystemType == "fuse.qtfs" && MountStatus.isTerminalBridge($0, under: [mount.id]))
        }
    }

    private func unmount(_ mount: MountInfoEntry) -> RevertReport.Outcome {
        do {
            try Mount.unmount(mount.mountPoint, flags: .noFollow)
            return .unmounted
        } catch where error.errno == .resourceBusy {
            var holders = Holders.scan(under: mount.mountPoint)
            if mount.fileSystemType == "fuse.qtfs" {
                // The client itself keeps a directory of its mount open while it relays host unix sockets
                // (SocketNodes), and the terminals of its pty bridge (below it) while a host terminal is
                // in use: only it holds the mount, and it unmounts cleanly on SIGTERM. A DPU process with
                // such a terminal open is a holder like any other.
                let clients = Set(Holders.qtfsClients(for: mount.mountPoint))
                if !holders.isEmpty, holders.allSatisfy({ clients.contains($0.pid) }) {
                    if endClients(clients, of: mount) { return .unmounted }
                    holders = Holders.scan(under: mount.mountPoint)
                }
            }
            guard lazy else { return .busy(holders) }
            do {
                try Mount.unmount(mount.mountPoint, flags: [.noFollow, .detach])
                return .detached(holders)
            } catch {
                return .left("\(error)")
            }
        } catch where error.errno == .invalidArgument {
            return .left("\(mount.mountPoint) is not reachable as a mount point (covered by another mount?)")
        } catch {
            return .left(explain(error, "cannot unmount"))
        }
    }

    /// Asks the qtfs clients that are the only holders of their own mount to end, and waits up to 5 s for
    /// the mount to go with them.
    private func endClients(_ clients: Set<Int32>, of mount: MountInfoEntry) -> Bool {
        for pid in clients { kill(pid, SIGTERM) }
        for _ in 0..<50 {
            usleep(100_000)
            guard let table = try? MountTable.read() else { break }
            if !table.mounts.contains(where: { $0.id == mount.id }) { return true }
        }
        return false
    }

    /// Waits for the qtfs clients of a mount that was just unmounted to end (unmounting a FUSE mount ends
    /// its daemon); asks them with SIGTERM after 5 s; returns those still running 2 s later.
    private func awaitClients(of mountPoint: String) -> [Int32] {
        var clients = Holders.qtfsClients(for: mountPoint)
        for round in 0..<70 where !clients.isEmpty {
            if round == 50 { for pid in clients { kill(pid, SIGTERM) } }
            usleep(100_000)
            clients = clients.filter { kill($0, 0) == 0 && !isZombie($0) }
        }
        return clients
    }

    private func isZombie(_ pid: Int32) -> Bool {
        guard let stat = try? readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
    }
}

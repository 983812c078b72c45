import DPUSystem
import Glibc
import QTFS
import Rexec
import SystemPackage

/// `-o proc`: the host's /proc, except what only makes sense on the DPU. Decided per caller, from the
/// caller's own process tree (the original kept a fixed list of program names instead):
///
/// - `self` and `thread-self` are links to the caller in the DPU's procfs (`localproc`);
/// - `/proc/N` is the DPU's process N when N is the caller or one of its threads;
/// - `/proc/N` is the host's process R when N is a local rexec client standing in for R (its pid file
///   `rexecpids/N` holds R, locked while it lives): libvirt's `vm->pid` is the rexec client that runs
///   QEMU on the host, and what libvirt reads at /proc/vm->pid (threads, CPU times, memory) must be
///   QEMU's. This comes before the tree rules below: the stand-in is libvirtd's own child;
/// - `/proc/N` is the DPU's process N when N is an ancestor of the caller other than init, a
///   descendant, or runs a command named with `localcomm=`; when the host has no process N but the DPU
///   has, it is the DPU's too; otherwise it is the host's;
/// - `mounts` and `net` are the host init's (they are links to `self/...`, which would be the DPU's).
final class LocalProcesses: Sendable {
    /// The DPU's procfs, opened before the mount (the mount may cover it).
    let procfs: FileDescriptor
    let localProc: [UInt8]
    let commands: Set<String>
    /// The rexec clients' pid files (`RexecPidMap`).
    let standIns: String

    init(localProc: String, commands: [String], standIns: String) throws(SystemError) {
        procfs = try FileDescriptor.openPath("/proc", flags: O_PATH | O_DIRECTORY)
        self.localProc = Array(localProc.utf8)
        self.commands = Set(commands)
        self.standIns = standIns
    }

    struct Status {
        var name = ""
        var threadGroup: pid_t = 0
        var parent: pid_t = 0
        /// Exited, not yet reaped.
        var zombie = false
    }

    /// Name, State, Tgid and PPid of process or thread `pid` on the DPU; nil if there is none.
    func status(_ pid: pid_t) -> Status? {
        guard pid > 0, let fd = try? procfs.open(at: Array("\(pid)/status".utf8), flags: O_RDONLY) else { return nil }
        defer { fd.closeQuietly() }
        var buffer = [UInt8](repeating: 0, count: 1024)
        guard let count = try? buffer.withUnsafeMutableBytes({ try fd.read(at: 0, into: $0) }), count > 0 else { return nil }
        var status = Status()
        for line in buffer[..<count].split(separator: UInt8(ascii: "\n")).prefix(10) {
            let text = String(decoding: line, as: UTF8.self)
            let parts = text.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "Name:": status.name = String(parts[1])
            case "Tgid:": status.threadGroup = pid_t(parts[1]) ?? 0
            case "PPid:": status.parent = pid_t(parts[1]) ?? 0
            case "State:": status.zombie = parts[1].hasPrefix("Z") || parts[1].hasPrefix("X")
            default: break
            }
        }
        return status
    }

    /// The caller's thread group (process id) from its thread id, as FUSE gives it.
    func threadGroup(of thread: pid_t) -> pid_t { status(thread)?.threadGroup ?? thread }

    enum Decision: Equatable {
        case local, host, hostThenLocal
        /// A local rexec client: the host's process with this pid.
        case standIn(remote: pid_t)
    }

    /// Whose process `pid` names for a caller whose thread id is `caller`.
    func decide(_ pid: pid_t, caller: pid_t) -> Decision {
        guard let target = status(pid) else { return .host }
        let me = threadGroup(of: caller)
        if pid == me || target.threadGroup == me { return .local }
        if target.threadGroup == pid, let remote = RexecPidMap.remotePID(of: pid, directory: standIns) {
            return .standIn(remote: remote)
        }
        if commands.contains(target.name) { return .local }
        // An ancestor of the caller, except init: /proc/1 stays the host's (its mounts, its namespaces).
        var current = status(me)?.parent ?? 0
        for _ in 0..<64 where current > 1 {
            if current == pid { return .local }
            current = status(current)?.parent ?? 0
        }
        return isDescendant(target, of: me) ? .local : .hostThenLocal
    }

    /// Whether the process whose status is `target` descends from process `ancestor` (at most 64
    /// generations up).
    private func isDescendant(_ target: Status, of ancestor: pid_t) -> Bool {
        var current = target.parent
        for _ in 0..<64 where current > 1 {
            if current == ancestor { return true }
            current = status(current)?.parent ?? 0
        }
        return false
    }

    /// Whether `pid` is a live process (not a thread of another) of the DPU that is the caller's own
    /// process or one of its descendants (`caller`: a thread id, as FUSE gives it).
    func isOwn(_ pid: pid_t, caller: pid_t) -> Bool {
        guard let target = status(pid), target.threadGroup == pid, !target.zombie else { return false }
        let me = threadGroup(of: caller)
        return pid == me || isDescendant(target, of: me) || isUnexecutedFork(pid, of: me)
    }

    /// Whether `pid` looks like a fork of `writer` that has not run another program yet: it runs the same
    /// executable and started later. libvirt daemonizes the QEMU it starts (a double fork: the child is
    /// no longer its descendant) and places that child into the VM's cgroups before it execs the emulator.
    func isUnexecutedFork(_ pid: pid_t, of writer: pid_t) -> Bool {
        guard pid != writer, let image = executable(pid), image == executable(writer),
            let started = identity(pid), let writerStarted = identity(writer)
        else { return false }
        return started >= writerStarted
    }

    /// The file `pid` runs, as device and inode.
    func executable(_ pid: pid_t) -> [UInt64]? {
        guard let fd = try? procfs.open(at: Array("\(pid)/exe".utf8), flags: O_PATH) else { return nil }
        defer { fd.closeQuietly() }
        guard let info = try? fd.status() else { return nil }
        return [UInt64(info.st_dev), UInt64(info.st_ino)]
    }

    /// Which process `pid` is: its start time (clock ticks since boot, /proc/PID/stat field 22), which
    /// tells it from a later process given the same pid; nil when there is no such process, or it exited.
    func identity(_ pid: pid_t) -> UInt64? {
        guard pid > 0, let fd = try? procfs.open(at: Array("\(pid)/stat".utf8), flags: O_RDONLY) else { return nil }
        defer { fd.closeQuietly() }
        var buffer = [UInt8](repeating: 0, count: 1024)
        guard let count = try? buffer.withUnsafeMutableBytes({ try fd.read(at: 0, into: $0) }), count > 0,
            let close = buffer[..<count].lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        // After the command: state (field 3) ... starttime (field 22).
        let fields = buffer[(close + 1)..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let state = fields[0].first, state != UInt8(ascii: "Z"), state != UInt8(ascii: "X") else { return nil }
        return UInt64(String(decoding: fields[19], as: UTF8.self))
    }

    /// Where a proc-mode link points for `caller`.
    func target(of synthetic: NodeTable.Synthetic, caller: pid_t) -> [UInt8] {
        let slash = UInt8(ascii: "/")
        switch synthetic {
        case .procSelf:
            return localProc + [slash] + Array("\(threadGroup(of: caller))".utf8)
        case .procThreadSelf:
            return localProc + [slash] + Array("\(threadGroup(of: caller))/task/\(caller)".utf8)
        case .localProcess(let pid):
            return localProc + [slash] + Array("\(pid)".utf8)
        case .fixedLink(let target):
            return target
        case .socketDirectory, .terminalDirectory:
            return []
        }
    }

    /// Top-level names of /proc that are links the client makes up.
    static func fixedName(_ name: [UInt8]) -> NodeTable.Synthetic? {
        switch String(decoding: name, as: UTF8.self) {
        case "self": .procSelf
        case "thread-self": .procThreadSelf
        case "mounts": .fixedLink(Array("1/mounts".utf8))
        case "net": .fixedLink(Array("1/net".utf8))
        default: nil
        }
    }

    /// The pid a top-level /proc name stands for, if it is one.
    static func pid(_ name: [UInt8]) -> pid_t? {
        guard !name.isEmpty, name.count < 10, name.allSatisfy({ $0 >= 48 && $0 <= 57 }), name.first != 48 else { return nil }
        return pid_t(String(decoding: name, as: UTF8.self))
    }
}

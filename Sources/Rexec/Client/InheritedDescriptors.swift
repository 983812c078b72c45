import DPUSystem
import DPUWire
import Glibc
import SystemPackage

/// The client's inherited fds and how each travels, decided before the client opens anything itself:
///
/// - 0, 1, 2: streamed (stdin as input, stdout and stderr as output), `/dev/null` reopened by path, a
///   terminal given to the remote pseudo-terminal in TTY mode; a closed one stays closed.
/// - above 2: regular files on qtfs mounts (`SharedFiles`: the host's own files), directories and
///   devices reopened by path with the same flags and offset; other regular files (the DPU's alone),
///   pipes and FIFOs streamed in the direction of their access mode; connected stream sockets streamed
///   both ways; listening sockets carried as listeners.
/// - fds that name one object (stdout and stderr on one pipe) travel as one stream placed at every
///   number, so their order is kept.
///
/// Anything else (a terminal above 2, a datagram socket, an eventfd) is left out with a note.
struct DescriptorPlan {
    var descriptors: [RexecDescriptor] = []
    var streams: [PlannedStream] = []
    var listeners: [PlannedListener] = []
    var notes: [String] = []
    var terminal: PlannedTerminal?
    /// fds whose shared description we had to make non-blocking: their old flags, restored at exit.
    var restoreFlags: [(FileDescriptor, Int32)] = []

    struct PlannedStream {
        var id: UInt32
        var targets: [Int32]
        var source: LocalEnd?
        var sink: LocalEnd?
        var duplex: Bool
    }

    struct PlannedListener {
        var id: Int32
        var end: LocalEnd
    }

    struct PlannedTerminal {
        /// The local terminal (raw mode, window size); nil when TTY mode was forced without one.
        var local: FileDescriptor?
        var stream: UInt32
    }
}

enum InheritedDescriptors {
    private struct Entry {
        var number: Int32
        var status: DescriptorStatus
        var flags: Int32
        var accessMode: Int32 { flags & O_ACCMODE }
    }

    private enum Role: Equatable {
        case input, output, socket, listener
    }

    private struct GroupKey: Equatable {
        var device: UInt64
        var inode: UInt64
        var role: Role
    }

    /// Looks at every inherited fd. `tty`: nil = TTY mode when stdin is a terminal.
    static func plan(
        tty: Bool?, excluded: [Int32], excludeAll: Bool
    ) throws(RexecError) -> DescriptorPlan {
        var plan = DescriptorPlan()
        let numbers: [Int32]
        do {
            numbers = try openDescriptorNumbers()
        } catch {
            throw RexecError(.local, "cannot list the inherited file descriptors: \(error)")
        }
        var entries: [Entry] = []
        for number in numbers {
            let fd = FileDescriptor(rawValue: number)
            if number > 2 {
                if excludeAll || excluded.contains(number) { continue }
                // Inherited fds never have FD_CLOEXEC (exec would have closed them): one that has it was
                // opened by this process (the runtime's own).
                if (try? fd.isCloseOnExec()) ?? true { continue }
            }
            guard let status = try? fd.descriptorStatus(), let flags = try? fd.statusFlags() else { continue }
            entries.append(Entry(number: number, status: status, flags: flags))
        }

        let stdinIsTerminal = entries.contains { $0.number == 0 } && FileDescriptor(rawValue: 0).isTerminal
        // TTY mode: the stdio fds that are terminals share the remote pseudo-terminal (one stream, id 1).
        var terminalTargets: [Int32] = []
        if tty ?? stdinIsTerminal {
            terminalTargets = entries.filter { $0.number <= 2 && FileDescriptor(rawValue: $0.number).isTerminal }.map(\.number)
            // A private copy: fds 0-2 may be pointed elsewhere later, the terminal must still be restored.
            let local = terminalTargets.first.flatMap { try? FileDescriptor(rawValue: $0).duplicateCloseOnExec(minimum: 3) }
            if terminalTargets.isEmpty {
                // Forced with no local terminal at all: the remote still gets one on 0, 1 and 2 (ssh -t);
                // our stdin goes into it and its output comes back on our stdout.
                terminalTargets = [0, 1, 2]
            }
            func end(_ number: Int32, reading: Bool) -> LocalEnd? {
                guard let entry = entries.first(where: { $0.number == number }) else { return nil }
                return localEnd(number, entry.status, reading: reading, &plan)
            }
            let source = terminalTargets.contains(0) ? end(0, reading: true) : nil
            let open = entries.map(\.number)
            let sink = [Int32(1), 2, 0].first { terminalTargets.contains($0) && open.contains($0) }
                .flatMap { end($0, reading: false) }
            plan.descriptors.append(RexecDescriptor(targets: terminalTargets, kind: .terminal(stream: 1)))
            plan.streams.append(DescriptorPlan.PlannedStream(id: 1, targets: terminalTargets, source: source, sink: sink, duplex: false))
            plan.terminal = DescriptorPlan.PlannedTerminal(local: local, stream: 1)
        }

        // Object -> index in plan.streams (or plan.descriptors for listeners). Arrays, not dictionaries:
        // a handful of fds, and no generic metadata to instantiate at start-up.
        var groups: [(GroupKey, Int)] = []
        var listenerGroups: [(GroupKey, Int)] = []
        var sharedFiles = SharedFiles()
        for entry in entries where !terminalTargets.contains(entry.number) {
            let number = entry.number
            let fd = FileDescriptor(rawValue: number)
            let status = entry.status
            switch status.kind {
            case .regularFile where number > 2:
                if let path = sharedFiles.hostPath(of: fd) {
                    plan.descriptors.append(RexecDescriptor(
                        targets: [number],
                        kind: .file(path: Array(path.utf8), flags: UInt32(bitPattern: entry.flags), offset: UInt64(fd.currentOffset() ?? 0))))
                    continue
                }
                // Only this machine has it (a host file of the same name would be another file): its
                // bytes travel, read from or written at its offset here (`virsh restore` of a file on
                // the DPU's own disk).
                guard entry.accessMode != O_RDWR else {
                    plan.notes.append("fd \(number) is not carried: its file is open for reading and writing and only this machine has it (files on qtfs mounts are opened by path on the server)")
                    continue
                }
                let reading = entry.accessMode == O_RDONLY
                let id = UInt32(plan.streams.count + 1)
                // One stream per fd: two fds on one file may be at different offsets.
                let key = GroupKey(device: status.device, inode: status.inode, role: reading ? .input : .output)
                let end = LocalEnd(fd: fd, owned: false)
                if reading {
                    addStream(&plan, &groups, key, number, .input(stream: id), source: end, sink: nil, duplex: false)
                } else {
                    addStream(&plan, &groups, key, number, .output(stream: id), source: nil, sink: end, duplex: false)
                }
            case .characterDevice where status.isNullDevice,
                .directory where number > 2, .blockDevice where number > 2,
                .characterDevice where number > 2 && !fd.isTerminal:
                // The null device (1:3) is /dev/null on any Linux, whatever node it was opened through: no
                // readlink through /proc for the stdio of every program run from a service.
                guard let path = status.isNullDevice ? "/dev/null" : try? fd.linkTarget(), path.hasPrefix("/"),
                    !path.hasSuffix(" (deleted)")
                else {
                    plan.notes.append("fd \(number) is not carried: its file has no path the peer could open (deleted?)")
                    continue
                }
                let offset = status.kind == .regularFile ? fd.currentOffset() ?? 0 : 0
                plan.descriptors.append(RexecDescriptor(
                    targets: [number], kind: .file(path: Array(path.utf8), flags: UInt32(bitPattern: entry.flags), offset: UInt64(offset))))
            case .characterDevice where number > 2:
                plan.notes.append("fd \(number) is not carried: a terminal above fd 2 cannot be shared with the peer")
            case .socket:
                let type = (try? fd.socketOption(level: SOL_SOCKET, SO_TYPE)) ?? -1
                guard type == Int32(SOCK_STREAM.rawValue) else {
                    plan.notes.append("fd \(number) is not carried: only stream sockets can be (this one is of type \(type))")
                    continue
                }
                if (try? fd.socketOption(level: SOL_SOCKET, SO_ACCEPTCONN)) == 1 {
                    let key = GroupKey(device: status.device, inode: status.inode, role: .listener)
                    if let index = listenerGroups.first(where: { $0.0 == key })?.1 {
                        plan.descriptors[index].targets.append(number)
                        continue
                    }
                    // A listener's accept happens here; QEMU makes its monitor socket non-blocking too.
                    try? fd.setNonBlocking()
                    listenerGroups.append((key, plan.descriptors.count))
                    plan.descriptors.append(RexecDescriptor(targets: [number], kind: .listener))
                    plan.listeners.append(DescriptorPlan.PlannedListener(id: number, end: LocalEnd(fd: fd, owned: false)))
                    continue
                }
                let key = GroupKey(device: status.device, inode: status.inode, role: .socket)
                if joinStream(&plan, groups, key, number) { continue }
                let id = UInt32(plan.streams.count + 1)
                let end = LocalEnd(fd: fd, owned: false, isSharedSocket: true)
                addStream(&plan, &groups, key, number, .socket(stream: id), source: end, sink: end, duplex: true)
            case .fifo, .characterDevice, .regularFile, .directory, .blockDevice, .symbolicLink, .other:
                if status.kind == .other || status.kind == .symbolicLink || status.kind == .directory {
                    plan.notes.append("fd \(number) is not carried: an \(number <= 2 ? "unusual stdio" : "anonymous") object cannot be shared with the peer")
                    continue
                }
                // Pipes, FIFOs and (for stdio) files and terminals are streamed.
                let reading: Bool
                if number <= 2 {
                    reading = number == 0
                } else if entry.accessMode == O_RDONLY {
                    reading = true
                } else if entry.accessMode == O_WRONLY {
                    reading = false
                } else {
                    plan.notes.append("fd \(number) is not carried: a FIFO open for reading and writing has no direction to stream in")
                    continue
                }
                let role: Role = reading ? .input : .output
                let key = GroupKey(device: status.device, inode: status.inode, role: role)
                if joinStream(&plan, groups, key, number) { continue }
                let id = UInt32(plan.streams.count + 1)
                let end = localEnd(number, status, reading: reading, &plan)
                if reading {
                    addStream(&plan, &groups, key, number, .input(stream: id), source: end, sink: nil, duplex: false)
                } else {
                    addStream(&plan, &groups, key, number, .output(stream: id), source: nil, sink: end, duplex: false)
                }
            }
        }
        plan.streams.sort { $0.id < $1.id }
        return plan
    }

    /// Places `number` on an existing stream for the same object; false if there is none yet.
    private static func joinStream(_ plan: inout DescriptorPlan, _ groups: [(GroupKey, Int)], _ key: GroupKey, _ number: Int32) -> Bool {
        guard let index = groups.first(where: { $0.0 == key })?.1 else { return false }
        plan.streams[index].targets.append(number)
        if let descriptor = plan.descriptors.firstIndex(where: { $0.kind.stream == plan.streams[index].id }) {
            plan.descriptors[descriptor].targets.append(number)
        }
        return true
    }

    private static func addStream(
        _ plan: inout DescriptorPlan, _ groups: inout [(GroupKey, Int)], _ key: GroupKey, _ number: Int32,
        _ kind: RexecDescriptorKind, source: LocalEnd?, sink: LocalEnd?, duplex: Bool
    ) {
        groups.append((key, plan.streams.count))
        plan.descriptors.append(RexecDescriptor(targets: [number], kind: kind))
        plan.streams.append(DescriptorPlan.PlannedStream(
            id: kind.stream!, targets: [number], source: source, sink: sink, duplex: duplex))
    }

    /// The fd to do I/O on for a streamed pipe, FIFO, terminal or file.
    private static func localEnd(_ number: Int32, _ status: DescriptorStatus, reading: Bool, _ plan: inout DescriptorPlan) -> LocalEnd {
        switch status.kind {
        case .fifo:
            let end = reopen(number, reading ? O_RDONLY : O_WRONLY, &plan)
            // Whole frames can be spliced between the pipe and the connection, and the other end of the
            // pipe is woken less often: a larger pipe (best effort: an unprivileged user is held to
            // fs.pipe-max-size and its pipe-user-pages quota, and the pipe keeps its size otherwise).
            end.fd.setPipeCapacity(1 << 20)
            end.canSplice = true
            return end
        case .characterDevice:
            return reopen(number, reading ? O_RDONLY : O_WRONLY, &plan)
        default:
            // Regular files and devices never block for long; the shared offset must advance.
            return LocalEnd(fd: FileDescriptor(rawValue: number), owned: false)
        }
    }

    /// A private non-blocking open file description of the same pipe or terminal (through /proc), so that
    /// the caller's description keeps its flags. If that fails, the shared one is made non-blocking and
    /// restored at exit.
    private static func reopen(_ number: Int32, _ access: Int32, _ plan: inout DescriptorPlan) -> LocalEnd {
        if let fd = try? FileDescriptor.openPath("/proc/self/fd/\(number)", flags: access | O_NONBLOCK | O_NOCTTY) {
            return LocalEnd(fd: fd, owned: true)
        }
        let fd = FileDescriptor(rawValue: number)
        if let flags = try? fd.statusFlags(), flags & O_NONBLOCK == 0, (try? fd.setNonBlocking()) != nil {
            plan.restoreFlags.append((fd, flags))
        }
        return LocalEnd(fd: fd, owned: false)
    }
}

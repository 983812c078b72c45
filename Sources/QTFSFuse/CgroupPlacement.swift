import DPUSystem
import Glibc
import Logging
import NIOCore
import Synchronization

/// What a write to a cgroup's process list (`cgroup.procs`, `tasks`, `cgroup.threads`) through the mount
/// becomes. Such a file is the host's, and a pid written to it names a host process; but libvirt on the
/// DPU writes pids of its own processes:
///
/// - `vm->pid` of a running VM, which is the local rexec client standing in for QEMU on the host: the
///   write carries the remote pid instead;
/// - before that, while starting the VM, the pid of the child it forked and that has not executed the
///   emulator (the rexec wrapper) yet: nothing on the host can be placed now, so the write is answered
///   as done and carried out later, once the child runs as a rexec client (`DeferredPlacements`).
///
/// Only a pid of the writer's own process or one of its descendants is deferred: any other pid is a
/// host pid written by a DPU tool, and goes as it is.
enum ProcessListWrite: Equatable {
    case asIs
    /// A live stand-in's pid, replaced by its remote pid (the newline kept if there was one).
    case translated(pid_t, ByteBuffer)
    /// The writer's own process or descendant, not a stand-in (yet).
    case deferred(pid_t)

    /// `remote`: the remote pid a local pid stands in for, if it is a live rexec client; `own`: whether
    /// a pid is the writer's own process or a descendant.
    static func decide(_ data: ByteBuffer, remote: (pid_t) -> pid_t?, own: (pid_t) -> Bool) -> ProcessListWrite {
        guard let (pid, newline) = singlePID(data) else { return .asIs }
        if let translated = remote(pid) { return .translated(pid, ByteBuffer(string: "\(translated)" + (newline ? "\n" : ""))) }
        return own(pid) ? .deferred(pid) : .asIs
    }

    /// The pid of a write that is one decimal pid, and whether a newline followed it.
    static func singlePID(_ data: ByteBuffer) -> (pid_t, newline: Bool)? {
        guard data.readableBytes > 0, data.readableBytes <= 11 else { return nil }
        var digits = data.readableBytesView[...]
        let newline = digits.last == UInt8(ascii: "\n")
        if newline { digits = digits.dropLast() }
        guard let pid = LocalProcesses.pid(Array(digits)) else { return nil }
        return (pid, newline)
    }
}

/// Cgroup placements of DPU processes waiting for them to become rexec clients. Each pending process has
/// the host paths (relative to the export) of the process lists it was written to. While any is
/// waiting, a thread looks every 2 ms: a process that has become a stand-in is written, as its remote
/// pid, into each of its files on the host (`place`, which calls back when all are done); one that
/// exited, or did not become a stand-in within `patience`, is dropped with one line in the log. No
/// thread runs while nothing is waiting.
///
/// Order: libvirt may write the pid again once it stands in (to move QEMU into a sub-cgroup); that write
/// waits (`afterPlacing`) until the earlier placements of the pid are done, so that it is not undone.
final class DeferredPlacements: Sendable {
    /// Pending processes at most (libvirt has one per VM being started), and files per process (libvirt
    /// writes one per hierarchy, about a dozen with cgroup v1).
    static let capacity = 256
    static let filesPerProcess = 32
    static let interval: useconds_t = 2_000

    typealias Place = @Sendable (_ pid: pid_t, _ remote: pid_t, _ paths: [[UInt8]], _ done: @escaping @Sendable () -> Void) -> Void

    struct Pending: Sendable {
        var paths: [[UInt8]]
        var until: UInt64
        /// Which process it was when recorded (`identity`): a later one given the same pid is not it.
        var identity: UInt64?
        /// Paths handed to `place` so far; set once placing has begun.
        var placed = 0
        var remote: pid_t?
        /// Writes of the pid made after it became a stand-in, run once the placements are done.
        var waiters: [Waiter] = []
    }

    /// A FUSE write waiting: called once, on whichever thread finishes the placements (FUSE requests may
    /// be answered from any thread).
    struct Waiter: @unchecked Sendable {
        let call: () -> Void
    }

    private let state = Mutex((pending: [pid_t: Pending](), watching: false))
    private let patience: UInt64
    private let remote: @Sendable (pid_t) -> pid_t?
    private let identity: @Sendable (pid_t) -> UInt64?
    private let place: Place
    private let logger: Logger

    init(
        patience: Double = 60, logger: Logger, remote: @escaping @Sendable (pid_t) -> pid_t?,
        identity: @escaping @Sendable (pid_t) -> UInt64?, place: @escaping Place
    ) {
        self.patience = UInt64(patience * 1_000_000_000)
        self.logger = logger
        self.remote = remote
        self.identity = identity
        self.place = place
    }

    var pending: [pid_t: Pending] { state.withLock { $0.pending } }

    /// Records that `pid` is to be placed in the process list at `path`; false when the bounds are
    /// reached (the write is then not deferred). `watch`: start the thread that checks (tests check
    /// themselves).
    func add(_ pid: pid_t, path: [UInt8], now: UInt64 = monotonicNanoseconds(), watch: Bool = true) -> Bool {
        let identity = state.withLock { $0.pending[pid] == nil } ? identity(pid) : nil
        let start = state.withLock { state -> Bool? in
            var entry = state.pending[pid] ?? Pending(paths: [], until: now + patience, identity: identity)
            if state.pending[pid] == nil, state.pending.count >= Self.capacity { return nil }
            if !entry.paths.contains(path) {
                guard entry.paths.count < Self.filesPerProcess else { return nil }
                // Placing may have begun (the process became a stand-in a moment ago): the path is placed
                // when the paths handed over are done.
                entry.paths.append(path)
            }
            state.pending[pid] = entry
            guard watch, !state.watching else { return false }
            state.watching = true
            return true
        }
        guard let start else { return false }
        if start { startWatching() }
        return true
    }

    /// Runs `body` (a write of `pid`, a stand-in now) once the placements of `pid` recorded earlier are
    /// done; at once if there are none.
    func afterPlacing(_ pid: pid_t, _ body: @escaping () -> Void) {
        let now = state.withLock { state -> Bool in
            guard state.pending[pid] != nil else { return true }
            state.pending[pid]!.waiters.append(Waiter(call: body))
            return false
        }
        if now { body() }
    }

    /// One look at every process waiting to stand in; true if some still wait.
    @discardableResult
    func check(now: UInt64 = monotonicNanoseconds()) -> Bool {
        let waiting = state.withLock { $0.pending.filter { $0.value.remote == nil } }
        var ready: [(pid_t, pid_t)] = []
        var dropped: [(pid_t, String)] = []
        for (pid, entry) in waiting {
            if entry.identity == nil || identity(pid) != entry.identity {
                dropped.append((pid, "it exited before it ran as a rexec client"))
            } else if let remote = remote(pid) {
                ready.append((pid, remote))
            } else if now >= entry.until {
                dropped.append((pid, "it did not run as a rexec client within \(patience / 1_000_000_000) s"))
            }
        }
        let (placing, waiters, remaining) = state.withLock {
            state -> ([(pid_t, pid_t, [[UInt8]])], [Waiter], Bool) in
            var placing: [(pid_t, pid_t, [[UInt8]])] = []
            for (pid, remote) in ready where state.pending[pid] != nil {
                state.pending[pid]!.remote = remote
                state.pending[pid]!.placed = state.pending[pid]!.paths.count
                placing.append((pid, remote, state.pending[pid]!.paths))
            }
            var waiters: [Waiter] = []
            for (pid, _) in dropped { waiters += state.pending.removeValue(forKey: pid)?.waiters ?? [] }
            let remaining = state.pending.values.contains { $0.remote == nil }
            if !remaining { state.watching = false }
            return (placing, waiters, remaining)
        }
        for (pid, remote, paths) in placing { place(pid, remote, paths) { [self] in placed(pid) } }
        for (pid, reason) in dropped {
            let files = waiting[pid]!.paths.map { String(decoding: $0, as: UTF8.self) }.joined(separator: ", ")
            logger.warning("cgroups: DPU process \(pid) not placed in \(files): \(reason)")
        }
        for waiter in waiters { waiter.call() }
        return remaining
    }

    /// The paths handed to `place` for `pid` are done: the ones added meanwhile go next, or the entry ends
    /// and the writes that waited for it run.
    private func placed(_ pid: pid_t) {
        let next = state.withLock { state -> Either? in
            guard let entry = state.pending[pid], let remote = entry.remote else { return nil }
            if entry.placed < entry.paths.count {
                state.pending[pid]!.placed = entry.paths.count
                return .more(remote, Array(entry.paths[entry.placed...]))
            }
            state.pending[pid] = nil
            return .finished(entry.waiters)
        }
        switch next {
        case .more(let remote, let paths): place(pid, remote, paths) { [self] in placed(pid) }
        case .finished(let waiters): for waiter in waiters { waiter.call() }
        case nil: break
        }
    }

    private enum Either {
        case more(pid_t, [[UInt8]])
        case finished([Waiter])
    }

    /// Forgets every pending placement (the mount ends); writes waiting for them go on.
    func stop() {
        let waiters = state.withLock { state in
            defer { state.pending.removeAll() }
            return state.pending.values.flatMap(\.waiters)
        }
        for waiter in waiters { waiter.call() }
    }

    private func startWatching() {
        do {
            _ = try OSThread.start(name: "qtfs-cgroups") { [self] in
                repeat { usleep(Self.interval) } while check()
            }
        } catch {
            logger.error("cgroups: cannot start the thread that places processes deferred: \(error)")
            state.withLock { $0.watching = false }
        }
    }
}

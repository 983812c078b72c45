import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import QTFS
import SystemPackage

/// Host pseudo-terminals made real terminals on the DPU (`-o ptybridge`), for `virsh console`.
///
/// FUSE cannot carry a terminal's ioctls (TCGETS and TCSETS encode no size), so a host pty is not opened
/// through FUSE at all: its node is shown as a symbolic link to the terminal side of a pseudo-terminal of
/// this machine, whose controlling side the client keeps and relays to the host's pty (opened by the
/// engine, in raw mode). termios calls then act on the local terminal, and bytes pass both ways unchanged.
///
/// - Where: the local terminals belong to a devpts instance of the client's own, mounted on the hidden
///   directory `.qtfs-ptys` of the mount root while any terminal is bridged (a pty's terminal side opens
///   only through its own devpts; a device node of the same number elsewhere would not do). The link is
///   relative (`.qtfs-ptys/0`, `../.qtfs-ptys/0` one directory down), so it holds wherever the mount is
///   seen, inside a chroot too.
/// - When: a terminal is allocated when the link is read (a path lookup reads it just before it opens),
///   and let go once nobody has it open and its link was not read for 5 s. Its opening is noticed
///   through inotify (IN_OPEN on the devpts instance); only then is the host's pty opened: a QEMU whose
///   console pty has a reader waits for it, so a host pty opened and not read would stall the guest's
///   serial output. The relay runs while the local terminal is open; after its last close (the
///   controlling side reports POLLHUP) the host's pty is closed. When the host's end goes (QEMU closed
///   its side: the host read gives end of file), the local terminal is hung up (the DPU reader gets end
///   of file) and let go at once.
/// - How: one thread (`qtfs-ptys`) polls the controlling sides, inotify and a wake-up counter; the host
///   side is the engine's READ (one waiting at a time, on its blocking pool) and WRITE (one at a time) on
///   the pty's handle. A terminal costs one descriptor (its controlling side) and nothing else; every
///   descriptor is close-on-exec. Window sizes are not carried.
final class TerminalBridges: @unchecked Sendable {
    /// The hidden directory of the mount root where the local terminals are.
    static let directoryName = Array(".qtfs-ptys".utf8)
    /// Most terminals bridged at once (idle ones make room; the devpts instance allows no more).
    static let limit = 256
    /// How long a terminal whose link was read waits to be opened.
    static let idleNanoseconds: UInt64 = 5_000_000_000
    /// Most bytes moved in one read or write.
    static let chunk = 64 << 10

    typealias Reply = (Result<[UInt8], Errno>) -> Void

    /// Whether host attributes are those of a pseudo-terminal's terminal side (shown as a link).
    static func presents(_ a: QTFSAttributes) -> Bool {
        a.mode & 0o170000 == 0o020000 && PseudoTerminal.isTerminalDevice(a.rdev)
    }

    /// The link's target for local terminal `index`, from the host pty at `path` (relative to the root).
    static func target(index: Int, path: [UInt8]) -> [UInt8] {
        let depth = path.filter { $0 == UInt8(ascii: "/") }.count
        return Array(String(repeating: "../", count: depth).utf8) + directoryName + Array("/\(index)".utf8)
    }

    /// A local terminal standing for a host pty. Fields are read and written with `state` locked.
    private final class Bridge {
        let path: [UInt8]
        let index: Int
        /// The controlling side (non-blocking); the terminal side is `.qtfs-ptys/<index>`.
        let controller: FileDescriptor
        var idleUntil: UInt64
        var session: Session?

        init(path: [UInt8], index: Int, controller: FileDescriptor, idleUntil: UInt64) {
            self.path = path
            self.index = index
            self.controller = controller
            self.idleUntil = idleUntil
        }
    }

    /// One use of a terminal, from its opening on this side to its last close here or the end of the
    /// host's side. Fields are read and written with `state` locked.
    private final class Session {
        /// The host pty's handle, once the engine opened it.
        var host: (link: Link, handle: UInt64)?
        /// Why the host pty could not be opened.
        var failure: Errno?
        /// The READ waiting on the host, the WRITE on its way.
        var read: Outgoing?
        var write: Outgoing?
        /// What the host sent that the local terminal has not taken yet (no READ is asked meanwhile).
        var toLocal = ByteBuffer()
        var hostEnded = false
        /// The controlling side reported POLLHUP: what is left is read, then the session ends.
        var localClosed = false
        var localEnded = false
        /// Let go: an OPEN answered afterwards releases its handle.
        var abandoned = false
    }

    private struct State {
        var bridges: [Int: Bridge] = [:]
        var byPath: [[UInt8]: Bridge] = [:]
        var requests: [(path: [UInt8], host: QTFSAttributes, reply: Reply)] = []
        var stopped = false
        var finished = false
    }

    private let mountpoint: String
    private let hostPath: String
    private let client: EngineClient
    private let logger: Logger
    /// Whether a directory (its stat) is this mount's hidden directory, not one a lazy unmount uncovered.
    private let isHiddenDirectory: (Glibc.stat) -> Bool
    private let inotify: Inotify
    private let wakeup: EventCounter
    private let state = ConditionLock(State())
    /// The devpts instance (its root) and the inotify watch on it, while any terminal is bridged. Only
    /// the thread uses it.
    private var devpts: (root: FileDescriptor, watch: Int32)?

    init(
        mountpoint: String, hostPath: String, client: EngineClient, logger: Logger,
        isHiddenDirectory: @escaping (Glibc.stat) -> Bool
    ) throws(SystemError) {
        self.mountpoint = mountpoint
        self.hostPath = hostPath
        self.client = client
        self.logger = logger
        self.isHiddenDirectory = isHiddenDirectory
        inotify = try Inotify()
        do {
            wakeup = try EventCounter()
        } catch {
            inotify.close()
            throw error
        }
        try OSThread.start(name: "qtfs-ptys") { [self] in run() }
    }

    // The thread never closes these: `stop` may still signal the counter after the thread is gone.
    deinit {
        inotify.close()
        wakeup.close()
    }

    /// The link target for the host pty at `path` (attributes `host`), a local terminal allocated if it
    /// has none; `reply` is called from the bridges' thread.
    func target(for path: [UInt8], host: QTFSAttributes, _ reply: @escaping Reply) {
        let accepted = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.requests.append((path, host, reply))
            return true
        }
        guard accepted else { return reply(.failure(.ioError)) }
        wakeup.signal()
    }

    /// Ends every relay (the local terminals are hung up, the host ptys closed) and unmounts the devpts
    /// instance: before the mount goes, which it would otherwise hold busy.
    func stop() {
        let running = state.withLock { state -> Bool in
            state.stopped = true
            return !state.finished
        }
        guard running else { return }
        wakeup.signal()
        _ = state.wait(timeout: .seconds(5)) { $0.finished ? true : nil }
    }

    private func describe(_ path: [UInt8]) -> String {
        (hostPath == "/" ? "" : hostPath) + "/" + DPUSystem.describe(path)
    }

    // MARK: The thread

    private func run() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: TerminalBridges.chunk, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let now = monotonicNanoseconds()
            let plan = state.withLock { state -> (stopped: Bool, watched: [(Bridge, Int16)], timeout: Int32) in
                var watched: [(Bridge, Int16)] = []
                var next: UInt64?
                for bridge in state.bridges.values {
                    guard let session = bridge.session else {
                        next = min(next ?? .max, bridge.idleUntil)
                        continue
                    }
                    guard session.host != nil, !session.localClosed else { continue }
                    var events: Int32 = 0
                    if session.write == nil && !session.hostEnded { events |= POLLIN }
                    if session.toLocal.readableBytes > 0 { events |= POLLOUT }
                    // POLLHUP comes whatever is asked for: the last close on this side.
                    watched.append((bridge, Int16(events)))
                }
                let timeout = next.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
                return (state.stopped, watched, timeout)
            }
            if plan.stopped { break }
            var set = [
                pollfd(fd: wakeup.fd.rawValue, events: Int16(POLLIN), revents: 0),
                pollfd(fd: inotify.fd.rawValue, events: Int16(POLLIN), revents: 0),
            ]
            set += plan.watched.map { pollfd(fd: $0.0.controller.rawValue, events: $0.1, revents: 0) }
            _ = try? DPUSystem.poll(&set, timeoutMilliseconds: plan.timeout, retryOnInterrupt: true)
            wakeup.drain()
            if set[1].revents != 0 { noticeOpenings() }
            for (entry, (bridge, _)) in zip(set.dropFirst(2), plan.watched) where entry.revents != 0 {
                if entry.revents & Int16(POLLIN) != 0 { readLocal(bridge, buffer) }
                if entry.revents & Int16(POLLHUP | POLLERR) != 0 { state.withLock { _ in bridge.session?.localClosed = true } }
            }
            serveRequests()
            advance(buffer)
            releaseDevptsIfUnused()
        }
        teardown()
    }

    /// Link reads: the terminal a host pty already has, or a new one.
    private func serveRequests() {
        let requests = state.withLock { state in
            defer { state.requests = [] }
            return state.requests
        }
        for request in requests {
            let until = monotonicNanoseconds() + TerminalBridges.idleNanoseconds
            if let index = state.withLock({ state -> Int? in
                guard let bridge = state.byPath[request.path] else { return nil }
                bridge.idleUntil = max(bridge.idleUntil, until)
                return bridge.index
            }) {
                request.reply(.success(TerminalBridges.target(index: index, path: request.path)))
                continue
            }
            do {
                let index = try allocate(request.path, request.host, idleUntil: until)
                request.reply(.success(TerminalBridges.target(index: index, path: request.path)))
            } catch {
                logger.warning("cannot bridge the host's terminal \(describe(request.path)): \(error)")
                request.reply(.failure(error.errno))
            }
        }
    }

    /// A local terminal for the host pty at `path`: raw like QEMU's, with the host pty's owner and mode.
    private func allocate(_ path: [UInt8], _ host: QTFSAttributes, idleUntil: UInt64) throws(SystemError) -> Int {
        let root = try mountedDevpts()
        try makeRoom()
        let (controller, index) = try PseudoTerminal.openController(in: root, flags: O_NONBLOCK)
        do throws(SystemError) {
            try Terminal.makeRaw(controller)
            // The controlling side says POLLHUP ("nobody there") only once the terminal side was opened
            // and closed: open and close it once, so that POLLHUP tells until someone opens it.
            try Terminal.openPeer(of: controller, flags: O_RDWR).closeQuietly()
            let name = Array("\(index)".utf8)
            try? root.changeOwner(of: name, uid: host.uid, gid: host.gid)
            try? root.changeMode(of: name, mode: mode_t(host.mode & 0o777))
        } catch {
            controller.closeQuietly()
            throw error
        }
        let bridge = Bridge(path: path, index: index, controller: controller, idleUntil: idleUntil)
        state.withLock { state in
            state.bridges[index] = bridge
            state.byPath[path] = bridge
        }
        logger.debug("host terminal \(describe(path)) is local terminal \(index)")
        return index
    }

    /// Lets the terminal idle longest go when the limit is reached.
    private func makeRoom() throws(SystemError) {
        let victim = state.withLock { state -> Bridge?? in
            guard state.bridges.count >= TerminalBridges.limit else { return .some(nil) }
            return state.bridges.values.filter { $0.session == nil }.min { $0.idleUntil < $1.idleUntil }
        }
        switch victim {
        case .none: throw SystemError(.tooManyOpenFiles, "bridge (\(TerminalBridges.limit) host terminals in use)")
        case .some(nil): return
        case .some(let bridge?): close(bridge)
        }
    }

    /// The devpts instance, mounted on the hidden directory if it is not yet.
    private func mountedDevpts() throws(SystemError) -> FileDescriptor {
        if let devpts { return devpts.root }
        let hidden = mountpoint + "/" + DPUSystem.describe(TerminalBridges.directoryName)
        // Looked up through the mount (answered by the client itself), and checked: after a lazy unmount
        // the same path would lead somewhere else.
        let directory = try FileDescriptor.openPath(hidden, flags: O_PATH | O_DIRECTORY | O_NOFOLLOW)
        defer { directory.closeQuietly() }
        guard isHiddenDirectory(try directory.status()) else {
            throw SystemError(.noSuchFileOrDirectory, "bridge (the mount is no longer at this path)", hidden)
        }
        let context = try FileSystemContext(type: "devpts")
        // Only the client allocates terminals here; each gets the host pty's owner and mode.
        try context.set("source", "devpts")
        try context.set("ptmxmode", "0600")
        try context.set("mode", "0600")
        try context.set("max", "\(TerminalBridges.limit)")
        try context.create()
        let root = try context.mount(attributes: [.noSetUID, .noExec])
        do throws(SystemError) {
            try root.attachMount(onto: directory, subject: hidden)
        } catch {
            root.closeQuietly()
            throw error
        }
        do throws(SystemError) {
            let watch = try inotify.addWatch(root.procfsPath, mask: UInt32(IN_OPEN))
            devpts = (root, watch)
            return root
        } catch {
            try? Mount.unmount(root.procfsPath, flags: .detach)
            root.closeQuietly()
            throw error
        }
    }

    /// Unmounts the devpts instance once no terminal is bridged: an unused mount can then be unmounted.
    private func releaseDevptsIfUnused() {
        guard let (root, watch) = devpts, state.withLock({ $0.bridges.isEmpty && $0.requests.isEmpty }) else { return }
        inotify.removeWatch(watch)
        // Detached: the descriptor of its root would keep a plain unmount busy until it is closed.
        do {
            try Mount.unmount(root.procfsPath, flags: .detach)
        } catch {
            logger.warning("cannot unmount the terminals' devpts: \(error)")
        }
        root.closeQuietly()
        devpts = nil
    }

    /// Terminals opened on this side (inotify): their sessions start, if someone still has them open.
    private func noticeOpenings() {
        guard let events = try? inotify.read(), !events.isEmpty else { return }
        let watch = devpts?.watch
        let overflow = events.contains { $0.mask & UInt32(IN_Q_OVERFLOW) != 0 }
        let candidates = state.withLock { state -> [Bridge] in
            if overflow { return state.bridges.values.filter { $0.session == nil } }
            return events.compactMap { event -> Bridge? in
                guard event.watch == watch, event.mask & UInt32(IN_OPEN) != 0,
                    let index = Int(DPUSystem.describe(event.name)), let bridge = state.bridges[index], bridge.session == nil
                else { return nil }
                return bridge
            }
        }
        for bridge in candidates where TerminalBridges.isOpen(bridge.controller) { start(bridge) }
    }

    /// Whether someone has the terminal side open (the controlling side does not report POLLHUP).
    private static func isOpen(_ controller: FileDescriptor) -> Bool {
        var set = [pollfd(fd: controller.rawValue, events: 0, revents: 0)]
        _ = try? DPUSystem.poll(&set, timeoutMilliseconds: 0, retryOnInterrupt: true)
        return set[0].revents & Int16(POLLHUP) == 0
    }

    /// Opens the host's pty for a session of `bridge`.
    private func start(_ bridge: Bridge) {
        let session = Session()
        let path = bridge.path
        let already = state.withLock { _ -> Bool in
            if bridge.session != nil { return true }
            bridge.session = session
            return false
        }
        if already { return }
        logger.info("host terminal \(describe(path)) opened here (local terminal \(bridge.index)): relaying")
        client.send(Outgoing(.open, retry: .resend, encode: {
            .open(QTFSPath(export: $0.export, path: path), flags: UInt32(O_RDWR))
        }) { [self] result, link in
            let orphan = state.withLock { _ -> (Link, UInt64)? in
                switch (result, link) {
                case (.success(.opened(let handle, _, _, _)), let link?):
                    if session.abandoned { return (link, handle) }
                    session.host = (link, handle)
                case (.failure(let error), _):
                    session.failure = error
                default:
                    session.failure = .ioError
                }
                return nil
            }
            if let (link, handle) = orphan { release(handle, on: link) }
            wakeup.signal()
        })
    }

    private func release(_ handle: UInt64, on link: Link) {
        client.send(Outgoing(.release, pinned: link, retry: .fail, encode: { _ in .release(handle: handle) }) { _, _ in })
    }

    /// Reads what the local side wrote and sends it to the host (one WRITE at a time); true if it sent
    /// something.
    @discardableResult
    private func readLocal(_ bridge: Bridge, _ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard let (session, host) = state.withLock({ _ -> (Session, (link: Link, handle: UInt64))? in
            guard let session = bridge.session, let host = session.host, session.write == nil, !session.hostEnded else { return nil }
            return (session, host)
        }) else { return false }
        let count: Int
        do throws(SystemError) {
            guard let read = try bridge.controller.readSome(into: buffer) else { return false }
            count = read
        } catch {
            // EIO: the terminal side was closed and nothing is left to read.
            count = 0
        }
        guard count > 0 else {
            state.withLock { _ in session.localClosed = true }
            return false
        }
        let data = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        let write = Outgoing(.write, pinned: host.link, retry: .fail, encode: { _ in
            .write(handle: host.handle, offset: 0, flags: 0, data: data)
        }) { [self] result, _ in
            state.withLock { _ in
                session.write = nil
                // The host pty hung up (EIO), or the connection went: the session is over.
                if case .success(.written) = result {} else { session.hostEnded = true }
            }
            wakeup.signal()
        }
        state.withLock { _ in session.write = write }
        client.send(write)
        return true
    }

    /// Moves each session on as far as it goes now: asks the host for more, gives the local terminal what
    /// came, ends what is over, lets idle terminals go.
    private func advance(_ buffer: UnsafeMutableRawBufferPointer) {
        for bridge in state.withLock({ Array($0.bridges.values) }) {
            while step(bridge, buffer) {}
        }
    }

    /// One step of `bridge`; true if it changed something that may allow another.
    private func step(_ bridge: Bridge, _ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        enum Step {
            case wait, drainLocal, writeLocal
            case read(Outgoing)
            case free(String?)
            case endHere(Session), endOnHost(Session)
        }
        let now = monotonicNanoseconds()
        let next = state.withLock { _ -> Step in
            guard let session = bridge.session else { return bridge.idleUntil <= now ? .free(nil) : .wait }
            if let failure = session.failure {
                return .free("cannot open the host's terminal \(describe(bridge.path)): \(failure)")
            }
            guard let host = session.host else { return .wait }
            if session.hostEnded && session.write == nil && (session.toLocal.readableBytes == 0 || session.localClosed) {
                return .endOnHost(session)
            }
            if session.localEnded && session.write == nil { return .endHere(session) }
            if session.localClosed && session.write == nil { return .drainLocal }
            if session.toLocal.readableBytes > 0 && !session.localClosed { return .writeLocal }
            guard !session.hostEnded, !session.localClosed, session.read == nil else { return .wait }
            let read = Outgoing(.read, pinned: host.link, retry: .fail, encode: { _ in
                .read(handle: host.handle, offset: 0, size: UInt32(TerminalBridges.chunk), flags: 0)
            }) { [self] result, _ in
                state.withLock { _ in
                    session.read = nil
                    switch result {
                    case .success(.data(var data)) where data.readableBytes > 0:
                        session.toLocal.writeBuffer(&data)
                    default:
                        // End of file (the host's side closed), an error, or our own cancel.
                        session.hostEnded = true
                    }
                }
                wakeup.signal()
            }
            session.read = read
            return .read(read)
        }
        switch next {
        case .wait:
            return false
        case .read(let read):
            client.send(read)
            return false
        case .drainLocal:
            // What the local side wrote just before its last close still goes; then the session ends.
            if !readLocal(bridge, buffer) { state.withLock { _ in bridge.session?.localEnded = true } }
            return true
        case .writeLocal:
            return writeLocal(bridge)
        case .free(let reason):
            if let reason { logger.warning("\(reason)") }
            close(bridge)
            return false
        case .endHere(let session):
            // Someone may have opened it again since the POLLHUP: then the session goes on.
            if TerminalBridges.isOpen(bridge.controller) {
                state.withLock { _ in
                    session.localClosed = false
                    session.localEnded = false
                }
                return true
            }
            logger.info("host terminal \(describe(bridge.path)) closed here: relay ended")
            stopHostSide(session)
            // The terminal stays while its link was read lately (an opener may be on its way).
            state.withLock { _ in bridge.session = nil }
            return true
        case .endOnHost(let session):
            logger.info("host terminal \(describe(bridge.path)) closed on the host: relay ended, local terminal hung up")
            stopHostSide(session)
            close(bridge)
            return false
        }
    }

    /// Gives the local terminal what the host sent, as much as it takes now; true if it took some.
    private func writeLocal(_ bridge: Bridge) -> Bool {
        guard let (session, pending) = state.withLock({ _ -> (Session, ByteBuffer)? in
            guard let session = bridge.session else { return nil }
            return (session, session.toLocal)
        }), pending.readableBytes > 0 else { return false }
        let written = pending.withUnsafeReadableBytes { raw in
            Result { () throws(SystemError) -> Int? in try bridge.controller.writeSome(raw) }
        }
        switch written {
        case .success(nil):
            return false
        case .success(let count?):
            // No READ is out while anything waits here, so nothing was added meanwhile.
            state.withLock { _ in
                session.toLocal.moveReaderIndex(forwardBy: count)
                if session.toLocal.readableBytes == 0 { session.toLocal.clear() }
            }
            return count > 0
        case .failure:
            state.withLock { _ in session.localClosed = true }
            return true
        }
    }

    /// The host's side of a session: its waiting READ given up, the pty closed (RELEASE).
    private func stopHostSide(_ session: Session) {
        let (read, write, host) = state.withLock { _ in
            session.abandoned = true
            return (session.read, session.write, session.host)
        }
        if let read { client.cancel(read) }
        if let write { client.cancel(write) }
        if let host { release(host.handle, on: host.link) }
    }

    /// Forgets `bridge` and closes its controlling side (a reader on the terminal side gets end of file).
    private func close(_ bridge: Bridge) {
        state.withLock { state in
            if state.bridges[bridge.index] === bridge { state.bridges[bridge.index] = nil }
            if state.byPath[bridge.path] === bridge { state.byPath[bridge.path] = nil }
            bridge.session = nil
        }
        bridge.controller.closeQuietly()
    }

    private func teardown() {
        let (bridges, requests) = state.withLock { state in
            defer { state.requests = [] }
            return (Array(state.bridges.values), state.requests)
        }
        for request in requests { request.reply(.failure(.ioError)) }
        for bridge in bridges {
            if let session = state.withLock({ _ in bridge.session }) { stopHostSide(session) }
            close(bridge)
        }
        releaseDevptsIfUnused()
        state.withLock { $0.finished = true }
        state.broadcast()
    }
}

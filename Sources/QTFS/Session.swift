import DPUSystem
import DPUWire
import Glibc
import Synchronization
import SystemPackage

/// An open host file, directory or stream that a client holds by number. The descriptor is closed when
/// the last reference goes: a RELEASE that races with a READ on another worker never lets the READ touch
/// a recycled descriptor number.
final class OpenHandle: Sendable {
    enum Kind: Sendable { case file, directory, stream }

    let fd: FileDescriptor
    let kind: Kind
    /// Reads, writes and polls may wait indefinitely (FIFOs, /proc/kmsg): they run on the blocking pool.
    let mayBlock: Bool
    /// On a pseudo file system: its size means nothing.
    let volatile: Bool
    /// Directories only: where the next READDIR continues, and entries read ahead of it.
    let cursor = Mutex(DirectoryCursor())
    /// Terminals only: the modes it had before it was made raw, put back when it closes.
    private let terminalModes: termios?
    /// The export and path it was opened at: what a change made through the handle (SETATTR, SETXATTR)
    /// is checked against, as one made by path would be.
    let origin: (export: Export, path: [UInt8])

    init(
        fd: FileDescriptor, kind: Kind, mayBlock: Bool, volatile: Bool = false, terminalModes: termios? = nil, export: Export,
        path: [UInt8]
    ) {
        origin = (export, path)
        self.fd = fd
        self.kind = kind
        self.mayBlock = mayBlock
        self.volatile = volatile
        self.terminalModes = terminalModes
    }

    deinit {
        // A terminal whose other end is gone refuses (EIO): nothing left to put back then.
        if let terminalModes { try? Terminal.setAttributes(fd, terminalModes) }
        fd.closeQuietly()
    }
}

struct DirectoryCursor: Sendable {
    /// The cookie `pending` starts at (nil: the descriptor's position is unknown, seek first).
    var position: UInt64? = nil
    var pending: [DirectoryEntry] = []
    var atEnd = false
}

/// One connection's state: its exports and its handles. A client can only name handles it opened on this
/// connection, and at most `limit` of them; everything is closed when the connection ends.
final class EngineSession: Sendable {
    let limit: Int
    private let state = Mutex(State())

    private struct State {
        var exports: [UInt32: Export] = [:]
        var nextExport: UInt32 = 1
        var handles: [UInt64: OpenHandle] = [:]
        var nextHandle: UInt64 = 1
    }

    /// Most exports one connection may attach.
    static let maximumExports = 64

    init(handleLimit: Int) { limit = handleLimit }

    func attach(_ export: Export) throws(SystemError) -> UInt32 {
        try state.withLock { (state) throws(SystemError) -> UInt32 in
            if let existing = state.exports.first(where: { $0.value.hostPath == export.hostPath }) { return existing.key }
            guard state.exports.count < EngineSession.maximumExports else {
                throw SystemError(.tooManyOpenFiles, "attach (\(EngineSession.maximumExports) exports per connection)")
            }
            let id = state.nextExport
            state.nextExport += 1
            state.exports[id] = export
            return id
        }
    }

    func export(_ id: UInt32) throws(SystemError) -> Export {
        guard let export = state.withLock({ $0.exports[id] }) else {
            throw SystemError(.badFileDescriptor, "export \(id) is not attached on this connection")
        }
        return export
    }

    func add(_ handle: OpenHandle) throws(SystemError) -> UInt64 {
        try state.withLock { (state) throws(SystemError) -> UInt64 in
            guard state.handles.count < limit else {
                throw SystemError(.tooManyOpenFiles, "open (\(limit) handles per connection)")
            }
            let id = state.nextHandle
            state.nextHandle += 1
            state.handles[id] = handle
            return id
        }
    }

    func handle(_ id: UInt64) throws(SystemError) -> OpenHandle {
        guard let handle = state.withLock({ $0.handles[id] }) else {
            throw SystemError(.badFileDescriptor, "handle \(id) is not open on this connection")
        }
        return handle
    }

    func remove(_ id: UInt64) throws(SystemError) {
        guard state.withLock({ $0.handles.removeValue(forKey: id) }) != nil else {
            throw SystemError(.badFileDescriptor, "handle \(id) is not open on this connection")
        }
    }

    /// Closes every handle and detaches every export (the connection ended).
    func close() {
        let dropped = state.withLock { state in
            defer {
                state.handles = [:]
                state.exports = [:]
            }
            return (state.handles, state.exports)
        }
        _ = dropped  // released here, outside the lock
    }

    var handleCount: Int { state.withLock { $0.handles.count } }
}

/// Lets a request that waits (a FIFO open, a read of an empty pipe) be given up: the client's interrupt
/// arrives as QTFS_CANCEL, the worker's blocking call is interrupted with a signal and fails with EINTR.
final class Cancellation: Sendable {
    private let state = Mutex<(cancelled: Bool, thread: OSThread?)>((false, nil))

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Runs `body` on the calling thread, interruptible by `cancel()`.
    func run<R>(_ body: () throws(SystemError) -> R) throws(SystemError) -> R {
        // Cancelled before it started (while it moved to the blocking pool, say): do not start waiting.
        let cancelled = state.withLock { state -> Bool in
            state.thread = .current
            return state.cancelled
        }
        defer { state.withLock { $0.thread = nil } }
        if cancelled { throw SystemError(.interrupted, "interrupted by the client") }
        return try body()
    }

    /// Marks the request cancelled and interrupts its thread until it has left its blocking call. The
    /// signal is repeated because it can land just before the call starts, where it changes nothing.
    func cancel() {
        let running = state.withLock { state -> Bool in
            state.cancelled = true
            return state.thread != nil
        }
        guard running else { return }
        try? OSThread.start(name: "qtfs-cancel") { [self] in
            for _ in 0..<250 {
                let thread = state.withLock { $0.thread }
                guard let thread else { return }
                ThreadInterruption.interrupt(thread)
                usleep(20_000)
            }
        }
    }
}

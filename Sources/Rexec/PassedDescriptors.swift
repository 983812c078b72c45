import DPUSystem
import DPUWire
import Glibc
import SystemPackage

// Descriptors passed with SCM_RIGHTS on a carried unix stream socket (libvirt's `getfd` on the QEMU
// monitor: the fd of `virsh save`'s file, sent with the command that names it).
//
// The side whose local program passed them (recvmsg, at most `RexecLimits.maximumPassed` a message)
// describes each in a PASS frame just before the DATA frame with the bytes that came with it, as EXEC
// describes inherited fds: a file the host shares through qtfs by path (client only: the DPU knows its
// mounts), a file the host does not share or a pipe or FIFO as a stream in the direction of its access
// mode, a connected stream socket as a stream both ways. The other side makes them (opens the file,
// makes a pipe or socketpair whose other end it relays) and sends them with the first byte of that data
// in one sendmsg, so the program sees descriptors and command together. Both sides only when both hellos
// have `RexecCapability.passDescriptors`.

/// How a multiplexer passes descriptors: which side it is (the client numbers new streams below 2^31 and
/// knows which files the host shares; the server numbers its own from 2^31) and where notes go.
final class PassingPolicy {
    let isClient: Bool
    /// One line: stderr for the client (rexec: ...), the log for the server.
    let note: (String) -> Void
    private let allocate: () -> UInt32

    /// The client's: new streams from `allocate` (the session's own counter, shared with accepted
    /// connections).
    init(client allocate: @escaping () -> UInt32, note: @escaping (String) -> Void) {
        isClient = true
        self.allocate = allocate
        self.note = note
    }

    /// The server's: new streams from 2^31 + 1 on.
    init(serverNote note: @escaping (String) -> Void) {
        isClient = false
        var next = RexecLimits.serverStreams
        allocate = {
            next += 1
            return next
        }
        self.note = note
    }

    func newStream() -> UInt32 { allocate() }

    /// The host's path for a local file it shares (client only). The mount table is read each time: a
    /// session lasts as long as its VM, mounts may change meanwhile, and passing a file is rare.
    func hostPath(of fd: FileDescriptor) -> String? {
        guard isClient else { return nil }
        var files = SharedFiles()
        return files.hostPath(of: fd)
    }

    /// The other side, for notes.
    var peer: String { isClient ? "server" : "client" }
}

/// SCM_RIGHTS on one carried unix stream socket: what its program passed with the bytes last read (to be
/// described before them), and what the peer passed, waiting for the byte it came with.
final class DescriptorPassing {
    /// Received with the last read and not described yet.
    private var received: [FileDescriptor] = []
    /// The last read brought more descriptors than `RexecLimits.maximumPassed` (the kernel closed the
    /// rest): the connection is reset.
    private var overflowed = false
    /// Descriptors to send with the byte at `offset` of what is written to the socket; offsets increase.
    private var waiting: [(offset: UInt64, fds: [FileDescriptor])] = []
    /// Bytes written to the socket so far.
    private(set) var written: UInt64 = 0

    var hasNews: Bool { overflowed || !received.isEmpty }
    var waitingCount: Int { waiting.reduce(0) { $0 + $1.fds.count } }

    /// What the last read brought: the descriptors, and whether there were more than allowed.
    func take() -> (fds: [FileDescriptor], overflowed: Bool) {
        defer {
            received = []
            overflowed = false
        }
        return (received, overflowed)
    }

    /// Sends `fds` with the byte at `offset` (counted like `written`).
    func attach(_ fds: [FileDescriptor], at offset: UInt64) {
        precondition(offset >= written)
        if let last = waiting.last, last.offset == offset {
            waiting[waiting.count - 1].fds += fds
        } else {
            waiting.append((offset, fds))
        }
    }

    func read(_ end: LocalEnd, into buffer: UnsafeMutableRawBufferPointer) -> LocalEnd.IOResult {
        do {
            // The socket may be shared with the program that gave it to us: MSG_DONTWAIT, not O_NONBLOCK.
            guard let got = try end.fd.receive(into: buffer, maxFDs: RexecLimits.maximumPassed, flags: Int32(MSG_DONTWAIT)) else {
                end.readable = false
                return .wouldBlock
            }
            if !got.fds.isEmpty || got.truncated {
                // Each read's descriptors are described before the next read; any left here were dropped.
                for fd in received { fd.closeQuietly() }
                received = got.fds
                overflowed = overflowed || got.truncated
            }
            return got.bytes > 0 ? .bytes(got.bytes) : .endOfFile
        } catch {
            if error.errno == .connectionReset { return .endOfFile }
            return .failed(error)
        }
    }

    func write(_ end: LocalEnd, _ buffer: UnsafeRawBufferPointer) -> LocalEnd.IOResult {
        var count = buffer.count
        var fds: [FileDescriptor] = []
        if let first = waiting.first {
            if first.offset == written {
                // Their byte is next: they go with it, and the bytes up to the next descriptors' byte.
                fds = first.fds
                if waiting.count > 1 { count = min(count, Int(waiting[1].offset - written)) }
            } else {
                count = min(count, Int(first.offset - written))
            }
        }
        do {
            guard let sent = try end.fd.send(UnsafeRawBufferPointer(rebasing: buffer.prefix(count)), fds: fds, flags: Int32(MSG_DONTWAIT)) else {
                end.writable = false
                return .wouldBlock
            }
            written += UInt64(sent)
            if !fds.isEmpty && sent > 0 {
                // The program has them now; our copies go.
                for fd in fds { fd.closeQuietly() }
                waiting.removeFirst()
            }
            return .bytes(sent)
        } catch {
            return .failed(error)
        }
    }

    /// Closes whatever is held (the socket is being closed).
    func discard() {
        for fd in received { fd.closeQuietly() }
        for entry in waiting { for fd in entry.fds { fd.closeQuietly() } }
        received = []
        waiting = []
    }
}

extension Multiplexer {
    /// Lets descriptors travel on `stream` if it is a carried unix socket (one fd both ways).
    func enablePassing(_ stream: CarriedStream) {
        guard let end = stream.source, end === stream.sink, end.passing == nil,
            (try? end.fd.socketOption(level: SOL_SOCKET, SO_DOMAIN)) == AF_UNIX
        else { return }
        end.passing = DescriptorPassing()
    }

    /// Watches the ends of a stream made for a passed descriptor; one that cannot be watched is reset.
    private func watch(_ local: CarriedStream, _ policy: PassingPolicy) -> Bool {
        do throws(SystemError) {
            try local.source?.watch(loop)
            if let sink = local.sink, sink !== local.source { try sink.watch(loop) }
            return true
        } catch {
            policy.note("a file descriptor passed on a carried connection cannot be relayed: \(error)")
            reset(local, .internalError, reason: "cannot be relayed: \(error)")
            return false
        }
    }

    /// The last read of `source` brought descriptors: describes them in a PASS ahead of the DATA frame at
    /// `headerIndex` and starts relaying the ones that are streamed; or, if there were too many, resets
    /// the connection.
    func describePassed(_ stream: CarriedStream, _ source: LocalEnd, dataAt headerIndex: Int) {
        guard let policy = descriptorPassing, let passing = source.passing else { return }
        let (fds, overflowed) = passing.take()
        if overflowed {
            for fd in fds { fd.closeQuietly() }
            policy.note(
                "a program passed more than \(RexecLimits.maximumPassed) file descriptors in one message on a carried connection (stream \(stream.id)); that connection is reset")
            precede(dataAt: headerIndex, with: nil)
            reset(stream, .refused, reason: "more than \(RexecLimits.maximumPassed) file descriptors in one message")
            return
        }
        var kinds: [RexecDescriptorKind] = []
        for fd in fds {
            switch PassedDescriptors.describe(fd, policy) {
            case .carried(let kind, let local):
                if let local {
                    do throws(WireError) { try add(local) } catch {
                        policy.note("a file descriptor passed on stream \(stream.id) is not carried: \(error)")
                        local.source?.close(loop)
                        local.sink?.close(loop)
                        continue
                    }
                    if !watch(local, policy) { continue }
                }
                kinds.append(kind)
            case .notCarried(let why):
                policy.note("a file descriptor passed on stream \(stream.id) is not carried: \(why)")
            }
        }
        guard !kinds.isEmpty else { return }
        precede(dataAt: headerIndex, with: RexecMessage.pass(stream: stream.id, descriptors: kinds).frame)
        // The new streams are read in the next pass.
        pump()
    }

    /// A PASS from the peer: makes the descriptors and queues them for the first byte of the stream's
    /// next DATA. Ones that cannot be delivered are refused (their streams reset), the connection they
    /// came on too if it holds too many already.
    func receivePass(_ frame: Frame) throws(WireError) {
        guard let policy = descriptorPassing else {
            throw WireError(.protocolViolation, "PASS without the descriptor-passing capability")
        }
        guard case .pass(let id, let kinds) = try RexecMessage(frame) else { return }
        guard let carrier = liveOrRetired(id) else {
            throw WireError(.protocolViolation, "PASS for unknown stream \(id)")
        }
        for kind in kinds {
            if case .file = kind, policy.isClient {
                throw WireError(.protocolViolation, "the server passed a file by path")
            }
            if let new = kind.stream {
                guard (new >= RexecLimits.serverStreams) == policy.isClient, self.stream(new) == nil else {
                    throw WireError(.protocolViolation, "PASS names stream \(new), which is in use or not the sender's to number")
                }
            }
        }
        var target = carrier.receiveState == .open ? carrier.sink?.passing : nil
        if let passing = target, passing.waitingCount + kinds.count > RexecLimits.maximumPassedWaiting {
            policy.note(
                "the connection carried as stream \(id) holds \(passing.waitingCount) passed file descriptors its program has not read yet; more arrived, so it is reset")
            reset(carrier, .refused, reason: "too many passed file descriptors waiting")
            target = nil
        }
        var fds: [FileDescriptor] = []
        for kind in kinds {
            if target != nil {
                var made: (FileDescriptor, CarriedStream?)?
                do { made = try PassedDescriptors.materialize(kind) } catch {
                    policy.note("a file descriptor passed on stream \(id) cannot be made here: \(error)")
                }
                if let (theirs, local) = made {
                    if let local {
                        do throws(WireError) { try add(local) } catch {
                            theirs.closeQuietly()
                            local.source?.close(loop)
                            local.sink?.close(loop)
                            for fd in fds { fd.closeQuietly() }  // made for this PASS before it
                            throw error
                        }
                        if !watch(local, policy) {
                            theirs.closeQuietly()
                            continue
                        }
                    }
                    fds.append(theirs)
                    continue
                }
            }
            // Its stream is refused, so that the peer releases its end (and DATA already on its way is
            // dropped rather than taken for a protocol error).
            if let new = kind.stream { try refuse(new, .refused, reason: "not delivered") }
        }
        guard !fds.isEmpty else { return }
        guard let target else {
            for fd in fds { fd.closeQuietly() }
            return
        }
        // Everything received before this PASS was written or waits (`queuedBytes`): theirs is the byte after.
        target.attach(fds, at: target.written + UInt64(carrier.queuedBytes))
    }
}

/// Describing a passed descriptor (the side that received it from its program) and making one (the
/// side that hands it to its program).
enum PassedDescriptors {
    enum Described {
        /// How it travels; a stream to relay if it is streamed.
        case carried(RexecDescriptorKind, CarriedStream?)
        /// Closed; why.
        case notCarried(String)
    }

    /// Decides how `fd` travels. Takes it over: it ends up in the returned stream, or closed.
    static func describe(_ fd: FileDescriptor, _ policy: PassingPolicy) -> Described {
        func drop(_ why: String) -> Described {
            fd.closeQuietly()
            return .notCarried(why)
        }
        guard let status = try? fd.descriptorStatus(), let flags = try? fd.statusFlags() else {
            return drop("it cannot be looked at")
        }
        let access = flags & O_ACCMODE
        switch status.kind {
        case .regularFile:
            if let path = policy.hostPath(of: fd) {
                let offset = fd.currentOffset() ?? 0
                fd.closeQuietly()
                return .carried(.file(path: Array(path.utf8), flags: UInt32(bitPattern: flags), offset: UInt64(offset)), nil)
            }
            // Not the peer's file: its bytes travel (read from, or written at, its own offset here).
            guard access != O_RDWR else {
                return drop("a file open for reading and writing that the \(policy.peer) does not share cannot be streamed")
            }
            return streamed(LocalEnd(fd: fd, owned: true), reading: access == O_RDONLY, policy)
        case .fifo:
            guard access != O_RDWR else { return drop("a pipe open for reading and writing has no direction to stream in") }
            let end = privateEnd(fd, access)
            end.canSplice = access == O_RDONLY
            return streamed(end, reading: access == O_RDONLY, policy)
        case .socket:
            guard (try? fd.socketOption(level: SOL_SOCKET, SO_TYPE)) == Int32(SOCK_STREAM.rawValue),
                (try? fd.socketOption(level: SOL_SOCKET, SO_ACCEPTCONN)) == 0
            else { return drop("only connected stream sockets can be passed to the \(policy.peer)") }
            let id = policy.newStream()
            let end = LocalEnd(fd: fd, owned: true, isSharedSocket: true)
            let stream = CarriedStream(id: id, source: end, sink: end)
            stream.halfCloseSink = true
            return .carried(.socket(stream: id), stream)
        default:
            return drop("a \(status.kind) cannot be passed to the \(policy.peer)")
        }
    }

    /// A stream relaying `end`: read here and written by the program there (`reading`: the program
    /// reads), or the other way.
    private static func streamed(_ end: LocalEnd, reading: Bool, _ policy: PassingPolicy) -> Described {
        let id = policy.newStream()
        if reading {
            return .carried(.input(stream: id), CarriedStream(id: id, source: end, sink: nil))
        }
        return .carried(.output(stream: id), CarriedStream(id: id, source: nil, sink: end))
    }

    /// A private non-blocking open file description of a passed pipe or FIFO (through /proc), so that the
    /// program that passed it keeps its flags; failing that, the shared one made non-blocking.
    private static func privateEnd(_ fd: FileDescriptor, _ access: Int32) -> LocalEnd {
        if let own = try? FileDescriptor.openPath("/proc/self/fd/\(fd.rawValue)", flags: access | O_NONBLOCK) {
            fd.closeQuietly()
            return LocalEnd(fd: own, owned: true)
        }
        try? fd.setNonBlocking()
        return LocalEnd(fd: fd, owned: true)
    }

    /// Makes what `kind` describes: the descriptor for the program, and the stream that relays its other
    /// end (none for a file opened by path).
    static func materialize(_ kind: RexecDescriptorKind) throws(SystemError) -> (FileDescriptor, CarriedStream?) {
        switch kind {
        case .file(let path, let flags, let offset):
            return (try Launcher.open(path: path, flags: Int32(bitPattern: flags), offset: Int64(bitPattern: offset)), nil)
        case .input(let id):
            let (read, write) = try FileDescriptor.makePipe()
            try makeNonBlocking(write, else: read)
            return (read, CarriedStream(id: id, source: nil, sink: LocalEnd(fd: write, owned: true)))
        case .output(let id):
            let (read, write) = try FileDescriptor.makePipe()
            try makeNonBlocking(read, else: write)
            let source = LocalEnd(fd: read, owned: true)
            source.canSplice = true
            return (write, CarriedStream(id: id, source: source, sink: nil))
        case .socket(let id):
            let (ours, theirs) = try FileDescriptor.socketPair()
            try makeNonBlocking(ours, else: theirs)
            let end = LocalEnd(fd: ours, owned: true)
            let stream = CarriedStream(id: id, source: end, sink: end)
            stream.halfCloseSink = true
            return (theirs, stream)
        case .listener, .terminal:
            // The decoder refuses these in PASS.
            throw SystemError(.invalidArgument, "pass", "a listener or terminal")
        }
    }

    /// Makes our end of a new pair non-blocking; if that fails, both ends are closed.
    private static func makeNonBlocking(_ ours: FileDescriptor, else theirs: FileDescriptor) throws(SystemError) {
        do { try ours.setNonBlocking() } catch {
            ours.closeQuietly()
            theirs.closeQuietly()
            throw error
        }
    }
}

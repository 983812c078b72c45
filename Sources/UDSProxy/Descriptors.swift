import DPUSystem
import DPUWire
import Glibc
import SystemPackage

/// File descriptors passed with SCM_RIGHTS inside a proxied connection. A descriptor cannot cross
/// machines; what it refers to sometimes can:
///
/// - a regular file is reopened on the other machine by its path, with the same access mode and flags
///   and at the same offset — if the other machine's whitelist allows the path (resolved there);
/// - a pipe or FIFO end becomes a new pipe on the other machine whose bytes are relayed as a stream of
///   their own;
/// - anything else (sockets, devices, directories, eventfds, memfds, deleted files) is refused with a
///   log line; the bytes it came with are delivered without it.
enum Descriptors {
    /// Describes `fd`, received from the local process on `stream`, for the peer; consumes `fd`.
    /// Returns nil (after logging why) for a descriptor that cannot cross.
    static func outgoing(_ fd: FileDescriptor, stream: Stream) -> PassedDescriptor? {
        defer { fd.closeQuietly() }
        let logger = stream.logger
        func refuse(_ why: String) -> PassedDescriptor? {
            logger.warning("connection \(stream.id) to \(stream.label): not passing a descriptor to the peer: \(why); the data goes through without it")
            return nil
        }
        let info: stat
        let flags: Int32
        do {
            info = try fd.status()
            flags = try fd.statusFlags()
        } catch {
            return refuse("cannot examine it: \(error)")
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            let path: [UInt8]
            do { path = try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(fd.procfsPath.utf8)) } catch {
                return refuse("cannot name its file: \(error)")
            }
            guard path.first == UInt8(ascii: "/"), !path.reversed().starts(with: " (deleted)".utf8.reversed()),
                path.count <= UDSProxyMessage.maximumFilePath
            else {
                return refuse("the file `\(String(decoding: path, as: UTF8.self))` has no path the peer could open (deleted, memfd or anonymous)")
            }
            let offset = (try? fd.seek(to: 0, whence: SEEK_CUR)) ?? 0
            return .file(path: path, flags: passedFlags(flags), offset: UInt64(max(offset, 0)))
        case S_IFIFO:
            let end: PipeEnd
            switch flags & O_ACCMODE {
            case O_RDONLY: end = .read
            case O_WRONLY: end = .write
            default: return refuse("a FIFO open for both reading and writing has no direction to relay")
            }
            // Our own open file description of the same pipe, non-blocking, so that the process that
            // passed the descriptor keeps its own flags (O_NONBLOCK is per description).
            let ours: FileDescriptor
            do {
                ours = try fd.reopen(flags: (end == .read ? O_RDONLY : O_WRONLY) | O_NONBLOCK)
            } catch where error.errno == .noSuchAddressOrDevice {
                return refuse("nobody reads the pipe it writes to")
            } catch {
                return refuse("cannot reopen the pipe: \(error)")
            }
            guard let id = stream.link.allocateStreamID() else {
                ours.closeQuietly()
                return refuse("the link carries too many streams")
            }
            // The process on the peer reads (`end == .read`): we read our end here and send.
            let pipe = Stream(
                id: id, link: stream.link, kind: end == .read ? .pipeSource : .pipeSink, label: "pipe of \(stream.label)",
                leg: ours, opening: nil)
            stream.link.add(pipe)
            pipe.start()
            return .pipe(stream: id, end: end, nonBlocking: flags & O_NONBLOCK != 0)
        default:
            return refuse("it is \(kindName(info.st_mode)); only regular files and pipes can cross machines")
        }
    }

    /// Makes a local descriptor for what the peer passed on `stream`, to deliver with the data that
    /// follows. Returns nil (after logging why) when it is refused here.
    static func incoming(_ descriptor: PassedDescriptor, stream: Stream) -> FileDescriptor? {
        let logger = stream.logger
        switch descriptor {
        case .file(let path, let flags, let offset):
            let text = String(decoding: path, as: UTF8.self)
            do {
                let fd = try reopenAllowed(path, flags: flags, offset: offset, whitelist: stream.proxy.settings.whitelist)
                return fd
            } catch let error as RefusedPath {
                logger.warning("connection \(stream.id) to \(stream.label): the peer passed `\(text)`, which is \(error.reason); delivering the data without it")
            } catch {
                logger.warning("connection \(stream.id) to \(stream.label): cannot reopen `\(text)` passed by the peer: \(error); delivering the data without it")
            }
            return nil
        case .pipe(let id, let end, let nonBlocking):
            guard stream.link.canTakeStream else {
                logger.warning("connection \(stream.id) to \(stream.label): refusing a pipe from the peer: too many streams")
                stream.link.send(ConnectionMessage.resetStream(stream: id, .refused, reason: "too many streams").frame)
                return nil
            }
            do {
                let (reader, writer) = try FileDescriptor.makePipe()
                // The process gets `end`; we relay the other one.
                let (theirs, ours) = end == .read ? (reader, writer) : (writer, reader)
                try ours.setNonBlocking()
                if nonBlocking { try theirs.setNonBlocking() }
                let pipe = Stream(
                    id: id, link: stream.link, kind: end == .read ? .pipeSink : .pipeSource, label: "pipe of \(stream.label)",
                    leg: ours, opening: nil)
                stream.link.add(pipe)
                pipe.start()
                return theirs
            } catch {
                logger.warning("connection \(stream.id) to \(stream.label): cannot make a pipe for the peer: \(error)")
                stream.link.send(ConnectionMessage.resetStream(stream: id, .internalError, reason: "no pipe").frame)
                return nil
            }
        }
    }

    struct RefusedPath: Error {
        var reason: String
    }

    /// Opens `path` the way the whitelist allows: resolved first (symbolic links, `..`), checked as
    /// resolved, then opened through the very inode that was checked, so nothing can be swapped in
    /// between. Only a regular file.
    static func reopenAllowed(
        _ path: [UInt8], flags: PassedFileFlags, offset: UInt64, whitelist: UDSProxyWhitelist
    ) throws -> FileDescriptor {
        let handle = try FileDescriptor(rawValue: AT_FDCWD).open(beneath: path, flags: O_PATH, resolve: [.noMagicLinks])
        defer { handle.closeQuietly() }
        let resolved = try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(handle.procfsPath.utf8))
        guard whitelist.allowsResolved(resolved) else {
            throw RefusedPath(reason: "outside the whitelist (it resolves to `\(String(decoding: resolved, as: UTF8.self))`)")
        }
        guard try handle.status().st_mode & S_IFMT == S_IFREG else { throw RefusedPath(reason: "not a regular file") }
        var openFlags: Int32 =
            flags.contains([.readable, .writable]) ? O_RDWR : flags.contains(.writable) ? O_WRONLY : O_RDONLY
        if flags.contains(.append) { openFlags |= O_APPEND }
        if flags.contains(.nonBlocking) { openFlags |= O_NONBLOCK }
        if flags.contains(.sync) { openFlags |= O_SYNC }
        if flags.contains(.dataSync) { openFlags |= O_DSYNC }
        if flags.contains(.direct) { openFlags |= O_DIRECT }
        if flags.contains(.noAccessTime) { openFlags |= O_NOATIME }
        var opened = Result { () throws(SystemError) in try handle.reopen(flags: openFlags) }
        if case .failure(let error) = opened, error.errno == .notPermitted, flags.contains(.noAccessTime) {
            // O_NOATIME needs ownership of the file; the access itself does not.
            opened = Result { () throws(SystemError) in try handle.reopen(flags: openFlags & ~O_NOATIME) }
        }
        let fd = try opened.get()
        // The offset matters for reading even with O_APPEND (which only moves writes to the end).
        if offset > 0 {
            if case .failure(let error) = Result(catching: { () throws(SystemError) in try fd.seek(to: Int64(offset)) }) {
                fd.closeQuietly()
                throw error
            }
        }
        return fd
    }

    static func passedFlags(_ flags: Int32) -> PassedFileFlags {
        var passed: PassedFileFlags = []
        switch flags & O_ACCMODE {
        case O_RDWR: passed.formUnion([.readable, .writable])
        case O_WRONLY: passed.insert(.writable)
        default: passed.insert(.readable)
        }
        if flags & O_APPEND != 0 { passed.insert(.append) }
        if flags & O_NONBLOCK != 0 { passed.insert(.nonBlocking) }
        if flags & O_SYNC == O_SYNC { passed.insert(.sync) } else if flags & O_DSYNC != 0 { passed.insert(.dataSync) }
        if flags & O_DIRECT != 0 { passed.insert(.direct) }
        if flags & O_NOATIME != 0 { passed.insert(.noAccessTime) }
        return passed
    }

    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFSOCK: "a socket"
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFLNK: "a symbolic link"
        default: "an anonymous kernel object (eventfd, epoll, timerfd...)"
        }
    }
}

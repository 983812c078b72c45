import Glibc
import SystemPackage

/// An inotify(7) instance: events about files, read from one descriptor that poll(2) can wait on.
public struct Inotify: Sendable {
    public let fd: FileDescriptor

    /// One event: the watch it belongs to, what happened (IN_* bits) and, for a watched directory, the
    /// name of the entry it happened to.
    public struct Event: Sendable, Equatable {
        public var watch: Int32
        public var mask: UInt32
        public var name: [UInt8]

        public init(watch: Int32, mask: UInt32, name: [UInt8]) {
            self.watch = watch
            self.mask = mask
            self.name = name
        }
    }

    /// `inotify_init1(IN_CLOEXEC | IN_NONBLOCK)`: reads never wait, poll says when there is something.
    public init() throws(SystemError) {
        fd = FileDescriptor(rawValue: try syscall("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) })
    }

    /// `inotify_add_watch(2)`: reports `mask` events of `path` (followed if a link: a descriptor's
    /// `procfsPath` names exactly that file). Returns the watch.
    public func addWatch(_ path: String, mask: UInt32) throws(SystemError) -> Int32 {
        try syscall("inotify_add_watch", path) { inotify_add_watch(fd.rawValue, path, mask) }
    }

    /// `inotify_rm_watch(2)`; a watch the kernel already dropped (its file is gone) is not an error.
    public func removeWatch(_ watch: Int32) {
        _ = inotify_rm_watch(fd.rawValue, watch)
    }

    /// The events queued now (none: empty). An overflowed queue shows as one event with IN_Q_OVERFLOW.
    public func read() throws(SystemError) -> [Event] {
        var events: [Event] = []
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count: Int
            do throws(SystemError) {
                count = try syscall("read", "inotify") {
                    buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
                }
            } catch where error.errno == .resourceTemporarilyUnavailable {
                return events
            }
            if count <= 0 { return events }
            events += Inotify.parse(buffer[..<count])
        }
    }

    /// Splits what read(2) returned into events (`struct inotify_event`: wd, mask, cookie, len, name
    /// padded with NULs); a truncated record ends the list.
    public static func parse(_ bytes: ArraySlice<UInt8>) -> [Event] {
        var events: [Event] = []
        var offset = bytes.startIndex
        // In the machine's own byte order, as the kernel wrote them.
        func word(_ at: Int) -> UInt32 {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at - bytes.startIndex, as: UInt32.self) }
        }
        while offset + 16 <= bytes.endIndex {
            let length = Int(word(offset + 12))
            guard offset + 16 + length <= bytes.endIndex else { break }
            let name = bytes[(offset + 16)..<(offset + 16 + length)].prefix { $0 != 0 }
            events.append(Event(watch: Int32(bitPattern: word(offset)), mask: word(offset + 4), name: Array(name)))
            offset += 16 + length
        }
        return events
    }

    public func close() { fd.closeQuietly() }
}

import NIOCore

// qtfs: the file protocol between the DPU's FUSE client and the host's engine (service `.qtfs`).
//
// Every request is one frame whose type is its operation (0x20...) and whose stream id is a request id the
// client picked (non-zero, unique among its requests in flight on that connection). The engine answers each
// with one QTFS_REPLY frame on the same id, in any order. Paths are relative to an export root the
// connection attached, as raw bytes (Linux names need not be UTF-8), and never contain `.` or `..`
// components, so the engine never has to interpret them beyond walking beneath the root.
//
// All integers are big-endian; byte strings are u32-length-prefixed. Every length is checked against a limit
// below before anything is allocated.

/// Limits of the qtfs protocol.
public enum QTFSLimits {
    /// Longest path (bytes), as Linux's PATH_MAX.
    public static let maximumPath = 4096
    /// Longest name of one directory entry or path component (NAME_MAX).
    public static let maximumName = 255
    /// Largest read or write in one request: the FUSE kernel module sends at most 1 MiB (256 pages).
    public static let maximumIO = 1 << 20
    /// Largest extended-attribute value (XATTR_SIZE_MAX) and name list (XATTR_LIST_MAX).
    public static let maximumXattr = 64 << 10
    /// Most bytes an OPEN reply carries of the file's start.
    public static let maximumPrefetch = 64 << 10
    /// Most directory entries in one READDIR reply.
    public static let maximumEntries = 4096
}

extension FrameType {
    /// The engine's answer to request `stream`: i32 status (0, or a positive errno) then the body.
    public static let qtfsReply = FrameType(rawValue: 0x10)
    /// Engine → client, stream 0: u64 poll id — a file registered by POLL with that id may be ready.
    public static let qtfsPollReady = FrameType(rawValue: 0x11)
    /// Client → engine: give up request `stream` (the caller was interrupted). The engine interrupts it if
    /// it is blocked and answers it with EINTR; a request already answered is not affected.
    public static let qtfsCancel = FrameType(rawValue: 0x12)
}

/// The operations, numbered as frame types.
public enum QTFSOperation: UInt8, CaseIterable, Sendable {
    case attach = 0x20, lookup, getattr, setattr, readlink, opendir, readdir, open, create, read, write, release
    case fsync, mkdir, mknod, symlink, link, unlink, rmdir, rename, statfs, getxattr, listxattr, setxattr
    case removexattr, poll

    public var frameType: FrameType { FrameType(rawValue: rawValue) }

    /// Requests that give the same result when sent twice, and may therefore be sent again on a new
    /// connection when the one they went out on broke before the answer came.
    public var isIdempotent: Bool {
        switch self {
        case .attach, .lookup, .getattr, .readlink, .opendir, .readdir, .open, .read, .write, .fsync, .statfs,
            .getxattr, .listxattr, .poll, .release:
            true
        case .setattr, .create, .mkdir, .mknod, .symlink, .link, .unlink, .rmdir, .rename, .setxattr,
            .removexattr:
            false
        }
    }
}

/// A path beneath an export root: `export` is the id ATTACH returned on this connection; `path` is
/// relative ("" is the root itself), components separated by single slashes.
public struct QTFSPath: Hashable, Sendable, CustomStringConvertible {
    public var export: UInt32
    public var path: [UInt8]

    public init(export: UInt32, path: [UInt8]) {
        self.export = export
        self.path = path
    }

    /// Why `path` is not a valid relative path, or nil. Empty, `.` and `..` components, a leading or
    /// trailing slash, NUL bytes and overlong names are refused.
    public static func problem(_ path: [UInt8]) -> String? {
        guard path.count <= QTFSLimits.maximumPath else { return "path of \(path.count) bytes is too long" }
        if path.isEmpty { return nil }
        for component in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if let problem = QTFSPath.nameProblem(Array(component)) { return problem }
        }
        return nil
    }

    /// Why `name` is not a valid single component, or nil.
    public static func nameProblem(_ name: [UInt8]) -> String? {
        if name.isEmpty { return "empty path component" }
        if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] {
            return "`.` or `..` component"
        }
        if name.count > QTFSLimits.maximumName { return "name of \(name.count) bytes is too long" }
        if name.contains(0) { return "NUL byte in a name" }
        if name.contains(UInt8(ascii: "/")) { return "slash in a name" }
        return nil
    }

    public var description: String { "\(export):/" + String(decoding: path, as: UTF8.self) }
}

/// What a handle-or-path operation applies to.
public enum QTFSTarget: Hashable, Sendable {
    case path(QTFSPath)
    case handle(UInt64)
}

/// Who creates a new entry (the caller on the DPU); the engine makes it the owner.
public struct QTFSOwner: Hashable, Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) {
        self.uid = uid
        self.gid = gid
    }
    public static let root = QTFSOwner(uid: 0, gid: 0)
}

/// A point in time: seconds and nanoseconds since the epoch.
public struct QTFSTime: Hashable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32
    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// The attributes of a host file, as lstat(2) gives them.
public struct QTFSAttributes: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    public var blocks: UInt64
    public var blockSize: UInt32
    public var accessTime: QTFSTime
    public var modificationTime: QTFSTime
    public var changeTime: QTFSTime
    public var flags: Flags

    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The file lives on a pseudo file system (proc, sysfs, cgroup, debugfs...): its size and contents
        /// are made when read, so the client must neither cache them nor trust `size`.
        public static let volatile = Flags(rawValue: 1)
        /// The file has no extended attributes (so that `ls -l`'s getxattr calls need no round trip).
        public static let noExtendedAttributes = Flags(rawValue: 2)
    }

    public init(
        device: UInt64 = 0, inode: UInt64 = 0, mode: UInt32 = 0, linkCount: UInt32 = 1, uid: UInt32 = 0,
        gid: UInt32 = 0, rdev: UInt64 = 0, size: UInt64 = 0, blocks: UInt64 = 0, blockSize: UInt32 = 4096,
        accessTime: QTFSTime = QTFSTime(seconds: 0, nanoseconds: 0),
        modificationTime: QTFSTime = QTFSTime(seconds: 0, nanoseconds: 0),
        changeTime: QTFSTime = QTFSTime(seconds: 0, nanoseconds: 0), flags: Flags = []
    ) {
        self.device = device
        self.inode = inode
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.blocks = blocks
        self.blockSize = blockSize
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.flags = flags
    }

    static let encodedSize = 97
}

/// Which attributes SETATTR changes, and to what.
public struct QTFSSetAttributes: Hashable, Sendable {
    public struct Fields: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let mode = Fields(rawValue: 1 << 0)
        public static let uid = Fields(rawValue: 1 << 1)
        public static let gid = Fields(rawValue: 1 << 2)
        public static let size = Fields(rawValue: 1 << 3)
        public static let accessTime = Fields(rawValue: 1 << 4)
        public static let modificationTime = Fields(rawValue: 1 << 5)
        /// The access time is "now" (the host's clock), not `accessTime`.
        public static let accessTimeNow = Fields(rawValue: 1 << 6)
        public static let modificationTimeNow = Fields(rawValue: 1 << 7)
    }
    public var fields: Fields
    public var mode: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var size: UInt64 = 0
    public var accessTime = QTFSTime(seconds: 0, nanoseconds: 0)
    public var modificationTime = QTFSTime(seconds: 0, nanoseconds: 0)

    public init(fields: Fields) { self.fields = fields }
}

/// How a handle must be used, decided by the engine from what it opened.
public struct QTFSOpenFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// No page cache: every read and write goes to the host (pseudo files, FIFOs, devices).
    public static let directIO = QTFSOpenFlags(rawValue: 1)
    /// Not seekable: a stream (FIFO, socket, character device); offsets mean nothing.
    public static let stream = QTFSOpenFlags(rawValue: 2)
}

/// One READDIR entry. `cookie` is where the next READDIR continues after this entry.
public struct QTFSDirectoryEntry: Hashable, Sendable {
    public var name: [UInt8]
    /// d_type (DT_REG, DT_DIR, ...).
    public var type: UInt8
    public var inode: UInt64
    public var cookie: UInt64
    /// Present when the request asked for attributes and the entry could be stat'ed.
    public var attributes: QTFSAttributes?

    public init(name: [UInt8], type: UInt8, inode: UInt64, cookie: UInt64, attributes: QTFSAttributes? = nil) {
        self.name = name
        self.type = type
        self.inode = inode
        self.cookie = cookie
        self.attributes = attributes
    }
}

/// STATFS result (statvfs(3) fields).
public struct QTFSFileSystemStatistics: Hashable, Sendable {
    public var blockSize: UInt64
    public var fragmentSize: UInt64
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var maximumNameLength: UInt64
    /// The host file system's f_type (PROC_SUPER_MAGIC...), for diagnostics: FUSE cannot pass it on.
    public var type: UInt64

    public init(
        blockSize: UInt64, fragmentSize: UInt64, blocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
        files: UInt64, freeFiles: UInt64, maximumNameLength: UInt64, type: UInt64
    ) {
        self.blockSize = blockSize
        self.fragmentSize = fragmentSize
        self.blocks = blocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.files = files
        self.freeFiles = freeFiles
        self.maximumNameLength = maximumNameLength
        self.type = type
    }
}

/// What ATTACH tells the client about an export.
public struct QTFSExportInfo: Hashable, Sendable {
    /// The id to use in paths on this connection.
    public var export: UInt32
    /// The engine refuses every change beneath it.
    public var readOnly: Bool
    /// The largest read or write the engine takes in one request.
    public var maximumIO: UInt32
    public var root: QTFSAttributes

    public init(export: UInt32, readOnly: Bool, maximumIO: UInt32, root: QTFSAttributes) {
        self.export = export
        self.readOnly = readOnly
        self.maximumIO = maximumIO
        self.root = root
    }
}

// MARK: - Requests

public enum QTFSRequest: Hashable, Sendable {
    /// Attach the export at this absolute host path (it must be a whitelisted mount root).
    case attach(hostPath: [UInt8])
    case lookup(QTFSPath)
    case getattr(QTFSTarget)
    case setattr(QTFSTarget, QTFSSetAttributes)
    case readlink(QTFSPath)
    case opendir(QTFSPath)
    case readdir(handle: UInt64, cookie: UInt64, maximumEntries: UInt32, withAttributes: Bool)
    /// `flags` are open(2) flags; O_CREAT and O_EXCL are not allowed here (that is CREATE).
    case open(QTFSPath, flags: UInt32)
    case create(QTFSPath, flags: UInt32, mode: UInt32, owner: QTFSOwner)
    /// `flags`: the caller's file status flags for this read (O_NONBLOCK).
    case read(handle: UInt64, offset: UInt64, size: UInt32, flags: UInt32)
    case write(handle: UInt64, offset: UInt64, flags: UInt32, data: ByteBuffer)
    case release(handle: UInt64)
    case fsync(handle: UInt64, dataOnly: Bool)
    case mkdir(QTFSPath, mode: UInt32, owner: QTFSOwner)
    /// Only FIFOs and regular files: the engine never creates device nodes.
    case mknod(QTFSPath, mode: UInt32, owner: QTFSOwner)
    case symlink(QTFSPath, target: [UInt8], owner: QTFSOwner)
    /// A new name `newPath` (same export) for the file at the first path.
    case link(QTFSPath, newPath: [UInt8])
    case unlink(QTFSPath)
    case rmdir(QTFSPath)
    /// renameat2(2) flags: RENAME_NOREPLACE, RENAME_EXCHANGE.
    case rename(QTFSPath, newPath: [UInt8], flags: UInt32)
    case statfs(QTFSPath)
    /// `size` 0 asks only for the value's size.
    case getxattr(QTFSTarget, name: [UInt8], size: UInt32)
    case listxattr(QTFSTarget, size: UInt32)
    case setxattr(QTFSTarget, name: [UInt8], value: [UInt8], flags: UInt32)
    case removexattr(QTFSTarget, name: [UInt8])
    /// `notify` non-zero: if nothing is ready, send QTFS_POLL_READY with this id once something may be.
    case poll(handle: UInt64, events: UInt32, notify: UInt64)

    public var operation: QTFSOperation {
        switch self {
        case .attach: .attach
        case .lookup: .lookup
        case .getattr: .getattr
        case .setattr: .setattr
        case .readlink: .readlink
        case .opendir: .opendir
        case .readdir: .readdir
        case .open: .open
        case .create: .create
        case .read: .read
        case .write: .write
        case .release: .release
        case .fsync: .fsync
        case .mkdir: .mkdir
        case .mknod: .mknod
        case .symlink: .symlink
        case .link: .link
        case .unlink: .unlink
        case .rmdir: .rmdir
        case .rename: .rename
        case .statfs: .statfs
        case .getxattr: .getxattr
        case .listxattr: .listxattr
        case .setxattr: .setxattr
        case .removexattr: .removexattr
        case .poll: .poll
        }
    }

    /// The request as a frame with request id `id`.
    public func frame(id: UInt32) -> Frame {
        var payload = ByteBuffer()
        encode(into: &payload)
        return Frame(type: operation.frameType, stream: id, payload: payload)
    }

    /// Appends the frame for request `id` to `buffer` (one copy of a write's data, no more).
    public func encodeFrame(id: UInt32, into buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        Frame.encodeHeader(type: operation.frameType, stream: id, payloadLength: 0, into: &buffer)
        encode(into: &buffer)
        let length = buffer.writerIndex - start - Frame.headerSize
        buffer.setInteger(UInt32(length), at: start, endianness: .big)
    }

    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .attach(let hostPath):
            buffer.writeWireBytes(hostPath)
        case .lookup(let path), .readlink(let path), .opendir(let path), .unlink(let path), .rmdir(let path),
            .statfs(let path):
            buffer.writeQTFSPath(path)
        case .getattr(let target):
            buffer.writeQTFSTarget(target)
        case .setattr(let target, let changes):
            buffer.writeQTFSTarget(target)
            buffer.writeInteger(changes.fields.rawValue, endianness: .big)
            buffer.writeInteger(changes.mode, endianness: .big)
            buffer.writeInteger(changes.uid, endianness: .big)
            buffer.writeInteger(changes.gid, endianness: .big)
            buffer.writeInteger(changes.size, endianness: .big)
            buffer.writeQTFSTime(changes.accessTime)
            buffer.writeQTFSTime(changes.modificationTime)
        case .readdir(let handle, let cookie, let maximumEntries, let withAttributes):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(cookie, endianness: .big)
            buffer.writeInteger(maximumEntries, endianness: .big)
            buffer.writeInteger(withAttributes ? UInt8(1) : 0)
        case .open(let path, let flags):
            buffer.writeQTFSPath(path)
            buffer.writeInteger(flags, endianness: .big)
        case .create(let path, let flags, let mode, let owner):
            buffer.writeQTFSPath(path)
            buffer.writeInteger(flags, endianness: .big)
            buffer.writeInteger(mode, endianness: .big)
            buffer.writeQTFSOwner(owner)
        case .read(let handle, let offset, let size, let flags):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(offset, endianness: .big)
            buffer.writeInteger(size, endianness: .big)
            buffer.writeInteger(flags, endianness: .big)
        case .write(let handle, let offset, let flags, let data):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(offset, endianness: .big)
            buffer.writeInteger(flags, endianness: .big)
            buffer.writeInteger(UInt32(data.readableBytes), endianness: .big)
            var data = data
            buffer.writeBuffer(&data)
        case .release(let handle):
            buffer.writeInteger(handle, endianness: .big)
        case .fsync(let handle, let dataOnly):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(dataOnly ? UInt8(1) : 0)
        case .mkdir(let path, let mode, let owner), .mknod(let path, let mode, let owner):
            buffer.writeQTFSPath(path)
            buffer.writeInteger(mode, endianness: .big)
            buffer.writeQTFSOwner(owner)
        case .symlink(let path, let target, let owner):
            buffer.writeQTFSPath(path)
            buffer.writeWireBytes(target)
            buffer.writeQTFSOwner(owner)
        case .link(let path, let newPath):
            buffer.writeQTFSPath(path)
            buffer.writeWireBytes(newPath)
        case .rename(let path, let newPath, let flags):
            buffer.writeQTFSPath(path)
            buffer.writeWireBytes(newPath)
            buffer.writeInteger(flags, endianness: .big)
        case .getxattr(let target, let name, let size):
            buffer.writeQTFSTarget(target)
            buffer.writeWireBytes(name)
            buffer.writeInteger(size, endianness: .big)
        case .listxattr(let target, let size):
            buffer.writeQTFSTarget(target)
            buffer.writeInteger(size, endianness: .big)
        case .setxattr(let target, let name, let value, let flags):
            buffer.writeQTFSTarget(target)
            buffer.writeWireBytes(name)
            buffer.writeWireBytes(value)
            buffer.writeInteger(flags, endianness: .big)
        case .removexattr(let target, let name):
            buffer.writeQTFSTarget(target)
            buffer.writeWireBytes(name)
        case .poll(let handle, let events, let notify):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(events, endianness: .big)
            buffer.writeInteger(notify, endianness: .big)
        }
    }

    /// Decodes a request frame. Throws `unknownMessage` for a type that is not a qtfs operation.
    public init(_ frame: Frame) throws(WireError) {
        guard let operation = QTFSOperation(rawValue: frame.type.rawValue) else {
            throw WireError(.unknownMessage, "frame type \(frame.type) is not a qtfs request")
        }
        var payload = frame.payload
        self = try QTFSRequest.decode(operation, &payload)
        // The message is only built for the error: this runs for every request.
        if payload.readableBytes != 0 { try payload.expectFullyRead("qtfs \(operation)") }
    }

    private static func decode(_ operation: QTFSOperation, _ payload: inout ByteBuffer) throws(WireError) -> Self {
        switch operation {
        case .attach:
            let path = try payload.readWireBytes("ATTACH path", maximum: QTFSLimits.maximumPath)
            guard path.first == UInt8(ascii: "/"), !path.contains(0) else {
                throw WireError(.malformed, "ATTACH path must be absolute and contain no NUL")
            }
            return .attach(hostPath: path)
        case .lookup: return .lookup(try payload.readQTFSPath())
        case .readlink: return .readlink(try payload.readQTFSPath())
        case .opendir: return .opendir(try payload.readQTFSPath())
        case .unlink: return .unlink(try payload.readQTFSPath())
        case .rmdir: return .rmdir(try payload.readQTFSPath())
        case .statfs: return .statfs(try payload.readQTFSPath())
        case .getattr: return .getattr(try payload.readQTFSTarget())
        case .setattr:
            let target = try payload.readQTFSTarget()
            let raw: UInt32 = try payload.readWireInteger("SETATTR fields")
            let fields = QTFSSetAttributes.Fields(rawValue: raw)
            guard fields.rawValue & ~0xff == 0 else { throw WireError(.malformed, "SETATTR names unknown fields") }
            var changes = QTFSSetAttributes(fields: fields)
            changes.mode = try payload.readWireInteger("SETATTR mode")
            changes.uid = try payload.readWireInteger("SETATTR uid")
            changes.gid = try payload.readWireInteger("SETATTR gid")
            changes.size = try payload.readFileOffset("SETATTR size")
            changes.accessTime = try payload.readQTFSTime()
            changes.modificationTime = try payload.readQTFSTime()
            return .setattr(target, changes)
        case .readdir:
            let handle: UInt64 = try payload.readWireInteger("READDIR handle")
            let cookie: UInt64 = try payload.readWireInteger("READDIR cookie")
            let maximum: UInt32 = try payload.readWireInteger("READDIR count")
            guard maximum > 0, maximum <= QTFSLimits.maximumEntries else {
                throw WireError(.oversized, "READDIR asks for \(maximum) entries; 1 to \(QTFSLimits.maximumEntries) allowed")
            }
            let plus = try payload.readWireBool("READDIR attributes flag")
            return .readdir(handle: handle, cookie: cookie, maximumEntries: maximum, withAttributes: plus)
        case .open:
            let path = try payload.readQTFSPath()
            return .open(path, flags: try payload.readWireInteger("OPEN flags"))
        case .create:
            let path = try payload.readQTFSPath()
            let flags: UInt32 = try payload.readWireInteger("CREATE flags")
            let mode: UInt32 = try payload.readWireInteger("CREATE mode")
            return .create(path, flags: flags, mode: mode, owner: try payload.readQTFSOwner())
        case .read:
            let handle: UInt64 = try payload.readWireInteger("READ handle")
            let offset = try payload.readFileOffset("READ offset")
            let size: UInt32 = try payload.readWireInteger("READ size")
            guard size <= QTFSLimits.maximumIO else {
                throw WireError(.oversized, "READ of \(size) bytes is over the limit of \(QTFSLimits.maximumIO)")
            }
            return .read(handle: handle, offset: offset, size: size, flags: try payload.readWireInteger("READ flags"))
        case .write:
            let handle: UInt64 = try payload.readWireInteger("WRITE handle")
            let offset = try payload.readFileOffset("WRITE offset")
            let flags: UInt32 = try payload.readWireInteger("WRITE flags")
            let length = Int(try payload.readWireInteger(as: UInt32.self, "WRITE length"))
            guard length <= QTFSLimits.maximumIO else {
                throw WireError(.oversized, "WRITE of \(length) bytes is over the limit of \(QTFSLimits.maximumIO)")
            }
            guard let data = payload.readSlice(length: length) else { throw WireError(.truncated, "truncated WRITE data") }
            return .write(handle: handle, offset: offset, flags: flags, data: data)
        case .release:
            return .release(handle: try payload.readWireInteger("RELEASE handle"))
        case .fsync:
            let handle: UInt64 = try payload.readWireInteger("FSYNC handle")
            return .fsync(handle: handle, dataOnly: try payload.readWireBool("FSYNC data-only flag"))
        case .mkdir, .mknod:
            let path = try payload.readQTFSPath()
            let mode: UInt32 = try payload.readWireInteger("mode")
            let owner = try payload.readQTFSOwner()
            return operation == .mkdir ? .mkdir(path, mode: mode, owner: owner) : .mknod(path, mode: mode, owner: owner)
        case .symlink:
            let path = try payload.readQTFSPath()
            let target = try payload.readWireBytes("SYMLINK target", maximum: QTFSLimits.maximumPath)
            guard !target.isEmpty, !target.contains(0) else {
                throw WireError(.malformed, "SYMLINK target is empty or contains NUL")
            }
            return .symlink(path, target: target, owner: try payload.readQTFSOwner())
        case .link:
            let path = try payload.readQTFSPath()
            return .link(path, newPath: try payload.readQTFSRelativePath("LINK new path"))
        case .rename:
            let path = try payload.readQTFSPath()
            let newPath = try payload.readQTFSRelativePath("RENAME new path")
            return .rename(path, newPath: newPath, flags: try payload.readWireInteger("RENAME flags"))
        case .getxattr:
            let target = try payload.readQTFSTarget()
            let name = try payload.readXattrName()
            let size: UInt32 = try payload.readWireInteger("GETXATTR size")
            guard size <= QTFSLimits.maximumXattr else { throw WireError(.oversized, "GETXATTR size \(size) is too large") }
            return .getxattr(target, name: name, size: size)
        case .listxattr:
            let target = try payload.readQTFSTarget()
            let size: UInt32 = try payload.readWireInteger("LISTXATTR size")
            guard size <= QTFSLimits.maximumXattr else { throw WireError(.oversized, "LISTXATTR size \(size) is too large") }
            return .listxattr(target, size: size)
        case .setxattr:
            let target = try payload.readQTFSTarget()
            let name = try payload.readXattrName()
            let value = try payload.readWireBytes("SETXATTR value", maximum: QTFSLimits.maximumXattr)
            return .setxattr(target, name: name, value: value, flags: try payload.readWireInteger("SETXATTR flags"))
        case .removexattr:
            let target = try payload.readQTFSTarget()
            return .removexattr(target, name: try payload.readXattrName())
        case .poll:
            let handle: UInt64 = try payload.readWireInteger("POLL handle")
            let events: UInt32 = try payload.readWireInteger("POLL events")
            return .poll(handle: handle, events: events, notify: try payload.readWireInteger("POLL notify id"))
        }
    }
}

// MARK: - Replies

/// The successful answer to a request; failures are `QTFSReplyFrame.failure`.
public enum QTFSReply: Hashable, Sendable {
    /// ATTACH.
    case attached(QTFSExportInfo)
    /// LOOKUP, GETATTR, SETATTR, MKDIR, MKNOD, SYMLINK, LINK.
    case attributes(QTFSAttributes)
    /// READLINK.
    case linkTarget([UInt8])
    /// OPENDIR: the handle and the directory's first entries with their attributes (`end` when that is
    /// all of it), so that a listing starts without another round trip.
    case directory(handle: UInt64, [QTFSDirectoryEntry], end: Bool)
    /// OPEN, CREATE. `prefetch`: the file's first bytes (the whole of a small file), read at open so that
    /// its first read needs no round trip; empty when the engine did not read ahead.
    case opened(handle: UInt64, QTFSOpenFlags, QTFSAttributes, prefetch: ByteBuffer)
    /// READDIR: `end` is true when the directory has no entries after these.
    case entries([QTFSDirectoryEntry], end: Bool)
    /// READ: the bytes (fewer than asked at end of file; none at or past it).
    case data(ByteBuffer)
    /// WRITE: bytes written.
    case written(UInt32)
    /// RELEASE, FSYNC, UNLINK, RMDIR, RENAME, SETXATTR, REMOVEXATTR.
    case done
    /// STATFS.
    case fileSystem(QTFSFileSystemStatistics)
    /// GETXATTR, LISTXATTR: the size, and the bytes unless the request asked for the size only.
    case xattr(size: UInt32, value: [UInt8])
    /// POLL: the events ready now.
    case polled(UInt32)

    /// Appends the reply frame for request `id` (status 0).
    public func encodeFrame(id: UInt32, into buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        Frame.encodeHeader(type: .qtfsReply, stream: id, payloadLength: 0, into: &buffer)
        buffer.writeInteger(Int32(0), endianness: .big)
        encode(into: &buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - start - Frame.headerSize), at: start, endianness: .big)
    }

    /// The failure reply frame for request `id`: status `errno` (positive).
    public static func encodeFailure(id: UInt32, errno: Int32, into buffer: inout ByteBuffer) {
        precondition(errno > 0, "a failure needs a positive errno")
        Frame.encodeHeader(type: .qtfsReply, stream: id, payloadLength: 4, into: &buffer)
        buffer.writeInteger(errno, endianness: .big)
    }

    /// The header of a successful READ reply carrying `length` bytes, written by the caller after it (so
    /// that file data is not copied into a buffer first).
    public static func encodeDataHeader(id: UInt32, length: Int, into buffer: inout ByteBuffer) {
        Frame.encodeHeader(type: .qtfsReply, stream: id, payloadLength: 8 + length, into: &buffer)
        buffer.writeInteger(Int32(0), endianness: .big)
        buffer.writeInteger(UInt32(length), endianness: .big)
    }

    func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .attached(let info):
            buffer.writeInteger(info.export, endianness: .big)
            buffer.writeInteger(info.readOnly ? UInt8(1) : 0)
            buffer.writeInteger(info.maximumIO, endianness: .big)
            buffer.writeQTFSAttributes(info.root)
        case .attributes(let attributes):
            buffer.writeQTFSAttributes(attributes)
        case .linkTarget(let target):
            buffer.writeWireBytes(target)
        case .directory(let handle, let entries, let end):
            buffer.writeInteger(handle, endianness: .big)
            QTFSReply.entries(entries, end: end).encode(into: &buffer)
        case .opened(let handle, let flags, let attributes, let prefetch):
            buffer.writeInteger(handle, endianness: .big)
            buffer.writeInteger(flags.rawValue)
            buffer.writeQTFSAttributes(attributes)
            buffer.writeInteger(UInt32(prefetch.readableBytes), endianness: .big)
            var prefetch = prefetch
            buffer.writeBuffer(&prefetch)
        case .entries(let entries, let end):
            buffer.writeInteger(UInt32(entries.count), endianness: .big)
            for entry in entries {
                buffer.writeWireBytes(entry.name)
                buffer.writeInteger(entry.type)
                buffer.writeInteger(entry.inode, endianness: .big)
                buffer.writeInteger(entry.cookie, endianness: .big)
                if let attributes = entry.attributes {
                    buffer.writeInteger(UInt8(1))
                    buffer.writeQTFSAttributes(attributes)
                } else {
                    buffer.writeInteger(UInt8(0))
                }
            }
            buffer.writeInteger(end ? UInt8(1) : 0)
        case .data(let data):
            buffer.writeInteger(UInt32(data.readableBytes), endianness: .big)
            var data = data
            buffer.writeBuffer(&data)
        case .written(let count):
            buffer.writeInteger(count, endianness: .big)
        case .done:
            break
        case .fileSystem(let stats):
            for value in [
                stats.blockSize, stats.fragmentSize, stats.blocks, stats.freeBlocks, stats.availableBlocks,
                stats.files, stats.freeFiles, stats.maximumNameLength, stats.type,
            ] {
                buffer.writeInteger(value, endianness: .big)
            }
        case .xattr(let size, let value):
            buffer.writeInteger(size, endianness: .big)
            buffer.writeWireBytes(value)
        case .polled(let events):
            buffer.writeInteger(events, endianness: .big)
        }
    }

    /// Decodes a QTFS_REPLY payload to a request of `operation`: the reply, or the errno it failed with.
    public static func decode(
        _ payload: ByteBuffer, for operation: QTFSOperation
    ) throws(WireError) -> Result<QTFSReply, QTFSFailure> {
        var payload = payload
        let status: Int32 = try payload.readWireInteger("reply status")
        if status != 0 {
            guard status > 0, status < 4096 else { throw WireError(.malformed, "reply status \(status) is not an errno") }
            try payload.expectFullyRead("qtfs failure reply")
            return .failure(QTFSFailure(errno: status))
        }
        let reply = try decodeBody(&payload, operation)
        if payload.readableBytes != 0 { try payload.expectFullyRead("qtfs \(operation) reply") }
        return .success(reply)
    }

    private static func decodeBody(_ payload: inout ByteBuffer, _ operation: QTFSOperation) throws(WireError) -> Self {
        switch operation {
        case .attach:
            let export: UInt32 = try payload.readWireInteger("ATTACH export id")
            let readOnly = try payload.readWireBool("ATTACH read-only flag")
            let maximumIO: UInt32 = try payload.readWireInteger("ATTACH maximum I/O")
            guard maximumIO >= 4096, maximumIO <= QTFSLimits.maximumIO else {
                throw WireError(.malformed, "ATTACH maximum I/O \(maximumIO) is outside 4096...\(QTFSLimits.maximumIO)")
            }
            let root = try payload.readQTFSAttributes()
            return .attached(QTFSExportInfo(export: export, readOnly: readOnly, maximumIO: maximumIO, root: root))
        case .lookup, .getattr, .setattr, .mkdir, .mknod, .symlink, .link:
            return .attributes(try payload.readQTFSAttributes())
        case .readlink:
            let target = try payload.readWireBytes("READLINK target", maximum: QTFSLimits.maximumPath)
            guard !target.contains(0) else { throw WireError(.malformed, "READLINK target contains NUL") }
            return .linkTarget(target)
        case .opendir:
            let handle: UInt64 = try payload.readWireInteger("OPENDIR handle")
            guard case .entries(let entries, let end) = try decodeBody(&payload, .readdir) else {
                throw WireError(.malformed, "OPENDIR entries")
            }
            return .directory(handle: handle, entries, end: end)
        case .open, .create:
            let handle: UInt64 = try payload.readWireInteger("OPEN handle")
            let flags = QTFSOpenFlags(rawValue: try payload.readWireInteger("OPEN flags"))
            let attributes = try payload.readQTFSAttributes()
            let length = Int(try payload.readWireInteger(as: UInt32.self, "OPEN prefetch length"))
            guard length <= QTFSLimits.maximumPrefetch else {
                throw WireError(.oversized, "OPEN prefetch of \(length) bytes is over \(QTFSLimits.maximumPrefetch)")
            }
            guard let prefetch = payload.readSlice(length: length) else { throw WireError(.truncated, "truncated OPEN prefetch") }
            return .opened(handle: handle, flags, attributes, prefetch: prefetch)
        case .readdir:
            let count = Int(try payload.readWireInteger(as: UInt32.self, "READDIR count"))
            guard count <= QTFSLimits.maximumEntries else {
                throw WireError(.oversized, "READDIR reply has \(count) entries, over \(QTFSLimits.maximumEntries)")
            }
            // Each entry takes at least 22 bytes: refuse a count the payload cannot hold before allocating.
            guard count * 22 <= payload.readableBytes else { throw WireError(.truncated, "truncated READDIR entries") }
            var entries: [QTFSDirectoryEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let name = try payload.readWireBytes("READDIR name", maximum: QTFSLimits.maximumName)
                if let problem = QTFSPath.nameProblem(name), name != [46], name != [46, 46] {
                    throw WireError(.malformed, "READDIR entry: \(problem)")
                }
                let type: UInt8 = try payload.readWireInteger("READDIR type")
                let inode: UInt64 = try payload.readWireInteger("READDIR inode")
                let cookie: UInt64 = try payload.readWireInteger("READDIR cookie")
                let attributes = try payload.readWireBool("READDIR attributes flag") ? try payload.readQTFSAttributes() : nil
                entries.append(QTFSDirectoryEntry(name: name, type: type, inode: inode, cookie: cookie, attributes: attributes))
            }
            return .entries(entries, end: try payload.readWireBool("READDIR end flag"))
        case .read:
            let length = Int(try payload.readWireInteger(as: UInt32.self, "READ length"))
            guard length <= QTFSLimits.maximumIO else { throw WireError(.oversized, "READ reply of \(length) bytes") }
            guard let data = payload.readSlice(length: length) else { throw WireError(.truncated, "truncated READ data") }
            return .data(data)
        case .write:
            return .written(try payload.readWireInteger("WRITE count"))
        case .release, .fsync, .unlink, .rmdir, .rename, .setxattr, .removexattr:
            return .done
        case .statfs:
            var values: [UInt64] = []
            for _ in 0..<9 { values.append(try payload.readWireInteger("STATFS field")) }
            return .fileSystem(QTFSFileSystemStatistics(
                blockSize: values[0], fragmentSize: values[1], blocks: values[2], freeBlocks: values[3],
                availableBlocks: values[4], files: values[5], freeFiles: values[6], maximumNameLength: values[7],
                type: values[8]))
        case .getxattr, .listxattr:
            let size: UInt32 = try payload.readWireInteger("xattr size")
            let value = try payload.readWireBytes("xattr value", maximum: QTFSLimits.maximumXattr)
            return .xattr(size: size, value: value)
        case .poll:
            return .polled(try payload.readWireInteger("POLL events"))
        }
    }
}

/// A request the engine answered with an errno.
public struct QTFSFailure: Error, Hashable, Sendable {
    public var errno: Int32
    public init(errno: Int32) { self.errno = errno }
}

/// QTFS_POLL_READY payload.
public enum QTFSPollReady {
    public static func frame(pollID: UInt64) -> Frame {
        var payload = ByteBuffer()
        payload.writeInteger(pollID, endianness: .big)
        return Frame(type: .qtfsPollReady, payload: payload)
    }

    public static func decode(_ frame: Frame) throws(WireError) -> UInt64 {
        var payload = frame.payload
        let id: UInt64 = try payload.readWireInteger("POLL_READY id")
        try payload.expectFullyRead("POLL_READY")
        return id
    }
}

// MARK: - Field codecs

extension ByteBuffer {
    mutating func writeQTFSPath(_ path: QTFSPath) {
        writeInteger(path.export, endianness: .big)
        writeWireBytes(path.path)
    }

    mutating func readQTFSPath() throws(WireError) -> QTFSPath {
        let export: UInt32 = try readWireInteger("export id")
        return QTFSPath(export: export, path: try readQTFSRelativePath("path"))
    }

    mutating func readQTFSRelativePath(_ field: StaticString) throws(WireError) -> [UInt8] {
        let path = try readWireBytes(field, maximum: QTFSLimits.maximumPath)
        if let problem = QTFSPath.problem(path) { throw WireError(.malformed, "\(field): \(problem)") }
        return path
    }

    mutating func writeQTFSTarget(_ target: QTFSTarget) {
        switch target {
        case .path(let path):
            writeInteger(UInt8(0))
            writeQTFSPath(path)
        case .handle(let handle):
            writeInteger(UInt8(1))
            writeInteger(handle, endianness: .big)
        }
    }

    mutating func readQTFSTarget() throws(WireError) -> QTFSTarget {
        switch try readWireInteger(as: UInt8.self, "target kind") {
        case 0: return .path(try readQTFSPath())
        case 1: return .handle(try readWireInteger("handle"))
        case let kind: throw WireError(.malformed, "target kind \(kind) is neither path nor handle")
        }
    }

    mutating func writeQTFSOwner(_ owner: QTFSOwner) {
        writeInteger(owner.uid, endianness: .big)
        writeInteger(owner.gid, endianness: .big)
    }

    mutating func readQTFSOwner() throws(WireError) -> QTFSOwner {
        let uid: UInt32 = try readWireInteger("owner uid")
        return QTFSOwner(uid: uid, gid: try readWireInteger("owner gid"))
    }

    /// A file offset or size: unsigned on the wire, at most Int64.max (what off_t holds; the kernel sends
    /// no more), so that the server can hand it to pread, pwrite and ftruncate as it is.
    mutating func readFileOffset(_ field: StaticString) throws(WireError) -> UInt64 {
        let value: UInt64 = try readWireInteger(field)
        guard value <= UInt64(Int64.max) else { throw WireError(.malformed, "\(field) \(value) is beyond the largest file offset") }
        return value
    }

    mutating func writeQTFSTime(_ time: QTFSTime) {
        writeInteger(time.seconds, endianness: .big)
        writeInteger(time.nanoseconds, endianness: .big)
    }

    mutating func readQTFSTime() throws(WireError) -> QTFSTime {
        let seconds: Int64 = try readWireInteger("time seconds")
        let nanoseconds: UInt32 = try readWireInteger("time nanoseconds")
        guard nanoseconds < 1_000_000_000 else { throw WireError(.malformed, "time has \(nanoseconds) nanoseconds") }
        return QTFSTime(seconds: seconds, nanoseconds: nanoseconds)
    }

    mutating func writeQTFSAttributes(_ a: QTFSAttributes) {
        writeInteger(a.device, endianness: .big)
        writeInteger(a.inode, endianness: .big)
        writeInteger(a.mode, endianness: .big)
        writeInteger(a.linkCount, endianness: .big)
        writeInteger(a.uid, endianness: .big)
        writeInteger(a.gid, endianness: .big)
        writeInteger(a.rdev, endianness: .big)
        writeInteger(a.size, endianness: .big)
        writeInteger(a.blocks, endianness: .big)
        writeInteger(a.blockSize, endianness: .big)
        writeQTFSTime(a.accessTime)
        writeQTFSTime(a.modificationTime)
        writeQTFSTime(a.changeTime)
        writeInteger(a.flags.rawValue)
    }

    mutating func readQTFSAttributes() throws(WireError) -> QTFSAttributes {
        guard readableBytes >= QTFSAttributes.encodedSize else { throw WireError(.truncated, "truncated attributes") }
        var a = QTFSAttributes()
        a.device = try readWireInteger("device")
        a.inode = try readWireInteger("inode")
        a.mode = try readWireInteger("mode")
        a.linkCount = try readWireInteger("link count")
        a.uid = try readWireInteger("uid")
        a.gid = try readWireInteger("gid")
        a.rdev = try readWireInteger("rdev")
        a.size = try readWireInteger("size")
        a.blocks = try readWireInteger("blocks")
        a.blockSize = try readWireInteger("block size")
        a.accessTime = try readQTFSTime()
        a.modificationTime = try readQTFSTime()
        a.changeTime = try readQTFSTime()
        let flags: UInt8 = try readWireInteger("attribute flags")
        guard flags & ~(QTFSAttributes.Flags.volatile.rawValue | QTFSAttributes.Flags.noExtendedAttributes.rawValue) == 0 else {
            throw WireError(.malformed, "unknown attribute flags \(flags)")
        }
        a.flags = QTFSAttributes.Flags(rawValue: flags)
        return a
    }

    mutating func readWireBool(_ field: StaticString) throws(WireError) -> Bool {
        switch try readWireInteger(as: UInt8.self, field) {
        case 0: return false
        case 1: return true
        case let value: throw WireError(.malformed, "\(field) is \(value), neither 0 nor 1")
        }
    }

    mutating func readXattrName() throws(WireError) -> [UInt8] {
        let name = try readWireBytes("xattr name", maximum: QTFSLimits.maximumName)
        guard !name.isEmpty, !name.contains(0) else { throw WireError(.malformed, "xattr name is empty or contains NUL") }
        return name
    }
}

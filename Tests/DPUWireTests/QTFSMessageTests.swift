import NIOCore
import Testing

@testable import DPUWire

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private let attributes = QTFSAttributes(
    device: 0x801, inode: 1234, mode: 0o100644, linkCount: 2, uid: 1000, gid: 100, rdev: 0, size: 4097,
    blocks: 16, blockSize: 4096, accessTime: QTFSTime(seconds: 1_700_000_000, nanoseconds: 5),
    modificationTime: QTFSTime(seconds: -1, nanoseconds: 999_999_999), changeTime: QTFSTime(seconds: 3, nanoseconds: 0),
    flags: .volatile)

private let path = QTFSPath(export: 1, path: bytes("dir/file"))
private let rawName: [UInt8] = [0xff, 0x80, 0x41]  // not UTF-8: Linux names are bytes

private let requests: [QTFSRequest] = {
    var changes = QTFSSetAttributes(fields: [.mode, .size, .accessTimeNow, .modificationTime])
    changes.mode = 0o600
    changes.size = 1 << 40
    changes.modificationTime = QTFSTime(seconds: 42, nanoseconds: 7)
    return [
        .attach(hostPath: bytes("/var/lib/libvirt")),
        .lookup(QTFSPath(export: 0, path: [])),
        .lookup(QTFSPath(export: 2, path: rawName)),
        .getattr(.path(path)), .getattr(.handle(77)),
        .setattr(.handle(3), changes), .setattr(.path(path), QTFSSetAttributes(fields: [])),
        .readlink(path), .opendir(path),
        .readdir(handle: 9, cookie: 0x7fff_ffff_ffff_ffff, maximumEntries: 128, withAttributes: true),
        .open(path, flags: 0o2), .create(path, flags: 0o1101, mode: 0o644, owner: QTFSOwner(uid: 1, gid: 2)),
        .read(handle: 5, offset: 1 << 33, size: UInt32(QTFSLimits.maximumIO), flags: 0o4000),
        .write(handle: 5, offset: 10, flags: 0, data: ByteBuffer(bytes: Array(repeating: 0xab, count: 3000))),
        .write(handle: 5, offset: 0, flags: 0, data: ByteBuffer()),
        .release(handle: 5), .fsync(handle: 5, dataOnly: true),
        .mkdir(path, mode: 0o755, owner: .root), .mknod(path, mode: 0o10644, owner: .root),
        .symlink(path, target: bytes("../../etc/passwd"), owner: .root),
        .link(path, newPath: bytes("other")), .unlink(path), .rmdir(path),
        .rename(path, newPath: bytes("a/b"), flags: 1), .statfs(path),
        .getxattr(.path(path), name: bytes("user.test"), size: 0), .listxattr(.handle(1), size: 65536),
        .setxattr(.path(path), name: bytes("security.selinux"), value: [0, 1, 2], flags: 1),
        .removexattr(.handle(8), name: bytes("user.x")),
        .poll(handle: 4, events: 1, notify: 99),
    ]
}()

private let replies: [(QTFSOperation, QTFSReply)] = [
    (.attach, .attached(QTFSExportInfo(export: 3, readOnly: true, maximumIO: 1 << 20, root: attributes))),
    (.lookup, .attributes(attributes)), (.readlink, .linkTarget(bytes("/proc/1"))), (.opendir, .directory(handle: 12, [QTFSDirectoryEntry(name: bytes("x"), type: 8, inode: 9, cookie: 3, attributes: attributes)], end: true)),
    (.open, .opened(handle: 13, [.directIO, .stream], attributes, prefetch: ByteBuffer())),
    (.create, .opened(handle: 14, [], attributes, prefetch: ByteBuffer(bytes: Array(repeating: 7, count: 1000)))),
    (
        .readdir,
        .entries(
            [
                QTFSDirectoryEntry(name: bytes("."), type: 4, inode: 2, cookie: 1),
                QTFSDirectoryEntry(name: rawName, type: 8, inode: 3, cookie: 2, attributes: attributes),
            ], end: true)
    ),
    (.readdir, .entries([], end: false)),
    (.read, .data(ByteBuffer(bytes: Array(0..<255)))), (.read, .data(ByteBuffer())),
    (.write, .written(4096)), (.unlink, .done),
    (
        .statfs,
        .fileSystem(QTFSFileSystemStatistics(
            blockSize: 4096, fragmentSize: 4096, blocks: 100, freeBlocks: 50, availableBlocks: 40, files: 10,
            freeFiles: 5, maximumNameLength: 255, type: 0x9fa0))
    ),
    (.getxattr, .xattr(size: 3, value: [1, 2, 3])), (.listxattr, .xattr(size: 10, value: [])),
    (.poll, .polled(5)),
]

private func replyPayload(_ reply: QTFSReply) -> ByteBuffer {
    var buffer = ByteBuffer()
    reply.encodeFrame(id: 1, into: &buffer)
    return try! FrameDecoder().decode(&buffer)!.payload
}

@Suite struct QTFSRequests {
    @Test func everyRequestSurvivesARoundTrip() throws {
        for request in requests {
            #expect(try QTFSRequest(request.frame(id: 7)) == request)
        }
    }

    @Test func encodeFrameMatchesFrame() throws {
        for request in requests {
            var direct = ByteBuffer()
            request.encodeFrame(id: 9, into: &direct)
            var viaFrame = ByteBuffer()
            request.frame(id: 9).encode(into: &viaFrame)
            #expect(direct == viaFrame)
        }
    }

    @Test func byteByByteInputGivesTheSameRequests() throws {
        var all = ByteBuffer()
        for (index, request) in requests.enumerated() { request.encodeFrame(id: UInt32(index + 1), into: &all) }
        var pending = ByteBuffer()
        var decoded: [QTFSRequest] = []
        for byte in all.readableBytesView {
            pending.writeInteger(byte)
            for frame in try FrameDecoder().decodeAll(&pending) { decoded.append(try QTFSRequest(frame)) }
        }
        #expect(decoded == requests)
    }

    @Test func everyTruncationIsRefused() {
        for request in requests {
            let frame = request.frame(id: 1)
            for cut in 0..<frame.payload.readableBytes {
                var short = frame
                short.payload = frame.payload.getSlice(at: frame.payload.readerIndex, length: cut)!
                #expect(throws: WireError.self) { try QTFSRequest(short) }
            }
        }
    }

    @Test func trailingBytesAreRefused() {
        var frame = QTFSRequest.release(handle: 1).frame(id: 1)
        frame.payload.writeInteger(UInt8(0))
        #expect(throws: WireError.self) { try QTFSRequest(frame) }
    }

    @Test(arguments: ["..", "a/../b", "/etc", "a//b", "a/", ".", "a/./b"])
    func pathsThatCouldLeaveTheExportAreRefused(_ text: String) {
        let frame = QTFSRequest.lookup(QTFSPath(export: 0, path: bytes(text))).frame(id: 1)
        #expect { try QTFSRequest(frame) } throws: { ($0 as? WireError)?.code == .malformed }
    }

    @Test func aNulInAPathIsRefused() {
        let frame = QTFSRequest.unlink(QTFSPath(export: 0, path: [0x61, 0, 0x62])).frame(id: 1)
        #expect(throws: WireError.self) { try QTFSRequest(frame) }
    }

    @Test func oversizedFieldsAreRefused() {
        let tooLong = QTFSRequest.lookup(QTFSPath(export: 0, path: Array(repeating: 0x61, count: 256))).frame(id: 1)
        #expect { try QTFSRequest(tooLong) } throws: { ($0 as? WireError)?.code == .malformed }
        let path = Array(repeating: Array(bytes("aaaaaaa/")), count: 600).flatMap { $0 } + bytes("a")
        #expect(throws: WireError.self) { try QTFSRequest(QTFSRequest.opendir(QTFSPath(export: 0, path: path)).frame(id: 1)) }
        let read = QTFSRequest.read(handle: 1, offset: 0, size: UInt32(QTFSLimits.maximumIO + 1), flags: 0).frame(id: 1)
        #expect { try QTFSRequest(read) } throws: { ($0 as? WireError)?.code == .oversized }
        let readdir = QTFSRequest.readdir(handle: 1, cookie: 0, maximumEntries: 100_000, withAttributes: false).frame(id: 1)
        #expect { try QTFSRequest(readdir) } throws: { ($0 as? WireError)?.code == .oversized }
        let xattr = QTFSRequest.setxattr(.handle(1), name: bytes("user.a"), value: Array(repeating: 0, count: 65537), flags: 0)
        #expect { try QTFSRequest(xattr.frame(id: 1)) } throws: { ($0 as? WireError)?.code == .oversized }
        // A write whose length field claims more than the limit is refused before its data is looked for.
        var write = ByteBuffer()
        write.writeInteger(UInt64(1), endianness: .big)
        write.writeInteger(UInt64(0), endianness: .big)
        write.writeInteger(UInt32(0), endianness: .big)
        write.writeInteger(UInt32.max, endianness: .big)
        #expect { try QTFSRequest(Frame(type: QTFSOperation.write.frameType, stream: 1, payload: write)) } throws: {
            ($0 as? WireError)?.code == .oversized
        }
    }

    // Offsets and sizes past Int64.max: no kernel sends them, and the server would trap converting one
    // for pread, pwrite or ftruncate, ending every client's connection.
    @Test func offsetsBeyondOffTAreRefused() {
        let huge = UInt64(Int64.max) + 1
        let requests: [QTFSRequest] = [
            .read(handle: 1, offset: huge, size: 1, flags: 0),
            .write(handle: 1, offset: UInt64.max, flags: 0, data: ByteBuffer(bytes: [1])),
            .setattr(.handle(1), { var changes = QTFSSetAttributes(fields: .size); changes.size = huge; return changes }()),
        ]
        for request in requests {
            #expect { try QTFSRequest(request.frame(id: 1)) } throws: { ($0 as? WireError)?.code == .malformed }
        }
        #expect(throws: Never.self) { try QTFSRequest(QTFSRequest.read(handle: 1, offset: UInt64(Int64.max), size: 1, flags: 0).frame(id: 1)) }
    }

    @Test func unknownTypesAndBadFlagsAreRefused() {
        #expect { try QTFSRequest(Frame(type: FrameType(rawValue: 0x7f), stream: 1)) } throws: {
            ($0 as? WireError)?.code == .unknownMessage
        }
        var frame = QTFSRequest.fsync(handle: 1, dataOnly: true).frame(id: 1)
        frame.payload.setInteger(UInt8(2), at: frame.payload.writerIndex - 1)
        #expect { try QTFSRequest(frame) } throws: { ($0 as? WireError)?.code == .malformed }
        #expect(throws: WireError.self) { try QTFSRequest(QTFSRequest.attach(hostPath: bytes("relative")).frame(id: 1)) }
    }

    @Test func garbageNeverCrashesTheDecoder() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let type = FrameType(rawValue: UInt8.random(in: 0x20...0x3a, using: &generator))
            let length = Int.random(in: 0..<160, using: &generator)
            let payload = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            _ = try? QTFSRequest(Frame(type: type, stream: 1, payload: payload))
            for operation in QTFSOperation.allCases { _ = try? QTFSReply.decode(payload, for: operation) }
        }
    }
}

@Suite struct QTFSReplies {
    @Test func everyReplySurvivesARoundTrip() throws {
        for (operation, reply) in replies {
            #expect(try QTFSReply.decode(replyPayload(reply), for: operation).get() == reply)
        }
    }

    @Test func failuresCarryTheirErrno() throws {
        var buffer = ByteBuffer()
        QTFSReply.encodeFailure(id: 3, errno: 13, into: &buffer)
        let frame = try #require(try FrameDecoder().decode(&buffer))
        #expect(frame.type == .qtfsReply && frame.stream == 3)
        #expect(try QTFSReply.decode(frame.payload, for: .open) == .failure(QTFSFailure(errno: 13)))
        var negative = ByteBuffer()
        negative.writeInteger(Int32(-5), endianness: .big)
        #expect(throws: WireError.self) { try QTFSReply.decode(negative, for: .open) }
    }

    @Test func theDataHeaderAgreesWithTheDecoder() throws {
        var buffer = ByteBuffer()
        QTFSReply.encodeDataHeader(id: 4, length: 3, into: &buffer)
        buffer.writeBytes([7, 8, 9])
        let frame = try #require(try FrameDecoder().decode(&buffer))
        #expect(try QTFSReply.decode(frame.payload, for: .read).get() == .data(ByteBuffer(bytes: [7, 8, 9])))
    }

    @Test func everyTruncationIsRefused() {
        for (operation, reply) in replies {
            let payload = replyPayload(reply)
            for cut in 0..<payload.readableBytes {
                let short = payload.getSlice(at: payload.readerIndex, length: cut)!
                #expect(throws: WireError.self) { try QTFSReply.decode(short, for: operation) }
            }
        }
    }

    @Test func aDirectoryCountThePayloadCannotHoldIsRefusedBeforeAllocating() {
        var payload = ByteBuffer()
        payload.writeInteger(Int32(0), endianness: .big)
        payload.writeInteger(UInt32(4000), endianness: .big)
        payload.writeBytes([0, 0, 0])
        #expect { try QTFSReply.decode(payload, for: .readdir) } throws: { ($0 as? WireError)?.code == .truncated }
        var many = ByteBuffer()
        many.writeInteger(Int32(0), endianness: .big)
        many.writeInteger(UInt32(QTFSLimits.maximumEntries + 1), endianness: .big)
        #expect { try QTFSReply.decode(many, for: .readdir) } throws: { ($0 as? WireError)?.code == .oversized }
    }

    @Test func anEntryNameWithASlashIsRefused() {
        let reply = QTFSReply.entries([QTFSDirectoryEntry(name: bytes("../x"), type: 8, inode: 1, cookie: 1)], end: true)
        #expect { try QTFSReply.decode(replyPayload(reply), for: .readdir) } throws: {
            ($0 as? WireError)?.code == .malformed
        }
    }

    @Test func pollReadyRoundTrips() throws {
        #expect(try QTFSPollReady.decode(QTFSPollReady.frame(pollID: 0xfeed)) == 0xfeed)
        #expect(throws: WireError.self) { try QTFSPollReady.decode(Frame(type: .qtfsPollReady)) }
    }
}

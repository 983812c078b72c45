import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage
import Testing

@testable import Rexec

/// Descriptors passed with SCM_RIGHTS on a carried unix socket: a client and a server multiplexer joined
/// by a socketpair, each with a carried connection whose far end plays the program (libvirt on the DPU,
/// QEMU on the host).
@Suite struct PassedDescriptorsRelay {
    typealias FD = SystemPackage.FileDescriptor

    final class Notes {
        var lines: [String] = []
    }

    final class Link {
        let loop: IOLoop
        let client: Multiplexer
        let server: Multiplexer
        let notes = Notes()
        /// The programs' ends of carried connections: `dpu[i]` is carried to `host[i]` (stream i + 1).
        var dpu: [FD] = []
        var host: [FD] = []
        var closed: [Error?] = []

        init(connections: Int = 1) throws {
            loop = try IOLoop()
            let (a, b) = try FD.socketPair(nonBlocking: true)
            client = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
            server = Multiplexer(loop: loop, link: LocalEnd(fd: b, owned: true))
            var next = UInt32(connections + 1)
            let notes = notes
            client.descriptorPassing = PassingPolicy(client: {
                defer { next += 1 }
                return next
            }, note: { notes.lines.append("client: " + $0) })
            server.descriptorPassing = PassingPolicy(serverNote: { notes.lines.append("server: " + $0) })
            for mux in [client, server] {
                mux.onControl = { _ throws(WireError) in }
                mux.onClosed = { [unowned self] in closed.append($0) }
                try mux.start()
            }
            for id in 1...UInt32(connections) {
                let (dpuProgram, clientEnd) = try FD.socketPair(nonBlocking: true)
                let (serverEnd, hostProgram) = try FD.socketPair(nonBlocking: true)
                dpu.append(dpuProgram)
                host.append(hostProgram)
                for (mux, fd) in [(client, clientEnd), (server, serverEnd)] {
                    let end = LocalEnd(fd: fd, owned: true)
                    let stream = CarriedStream(id: id, source: end, sink: end)
                    stream.halfCloseSink = true
                    try mux.add(stream)
                    try end.watch(loop)
                }
            }
        }

        func turn() throws { try loop.runOnce(timeoutMilliseconds: 1) }

        /// Turns the loop until `body` returns something (at most about two seconds).
        func until<T>(_ what: String, _ body: () throws -> T?) throws -> T {
            for _ in 0..<2000 {
                if let value = try body() { return value }
                try turn()
            }
            Issue.record("timed out waiting for \(what)")
            throw Errno.timedOut
        }

        /// Passes `fd` (then closes it here) with `command` from one program to the other; returns what
        /// the other program received with the command.
        func pass(_ fd: FD, with command: String, from: FD, to: FD) throws -> FD {
            try PassedDescriptorsRelay.send(from, command, fds: [fd])
            fd.closeQuietly()
            let message = try until("the command") { try PassedDescriptorsRelay.receive(to) }
            #expect(message.text == command, "the command and its fd in one recvmsg")
            #expect(message.fds.count == 1)
            return try #require(message.fds.first)
        }

        func close() {
            for fd in dpu + host { fd.closeQuietly() }
            client.close(nil)
            server.close(nil)
            client.releaseAll()
            server.releaseAll()
        }
    }

    /// A message as the program's recvmsg sees it.
    struct Received {
        var bytes: [UInt8]
        var fds: [FD]
        var text: String { String(decoding: bytes, as: UTF8.self) }
    }

    static func send(_ fd: FD, _ text: String, fds: [FD] = []) throws {
        let sent = try Array(text.utf8).withUnsafeBytes { try fd.send($0, fds: fds) }
        #expect(sent == text.utf8.count)
    }

    /// One recvmsg: nil when nothing is there; empty bytes at end of file.
    static func receive(_ fd: FD) throws -> Received? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let got = try buffer.withUnsafeMutableBytes { try fd.receive(into: $0, maxFDs: 64, flags: Int32(MSG_DONTWAIT)) }
        guard let got else { return nil }
        return Received(bytes: Array(buffer[..<got.bytes]), fds: got.fds)
    }

    /// Reads `fd` (non-blocking) until end of file, turning the loop.
    static func readAll(_ fd: FD, _ link: Link) throws -> String {
        var result: [UInt8] = []
        return try link.until("end of file") { () throws -> String? in
            var chunk = [UInt8](repeating: 0, count: 4096)
            do {
                guard let count = try chunk.withUnsafeMutableBytes({ try fd.readSome(into: $0) }) else { return nil }
                if count == 0 { return String(decoding: result, as: UTF8.self) }
                result += chunk[..<count]
                return nil
            } catch let error as SystemError where error.errno == .connectionReset {
                return String(decoding: result, as: UTF8.self)
            }
        }
    }

    static func write(_ fd: FD, _ text: String) throws {
        try fd.writeFully(Array(text.utf8))
    }

    static func temporaryFile(_ contents: String) throws -> String {
        var template = Array("/tmp/dpuctl-passfd-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        #expect(fd >= 0)
        let path = String(cString: template)
        try FD(rawValue: fd).writeFully(Array(contents.utf8))
        Glibc.close(fd)
        return path
    }

    @Test func aPipePassedWithACommandArrivesWithItsBytes() throws {
        let link = try Link()
        defer { link.close() }
        let (read, write) = try FD.makePipe(nonBlocking: true)
        defer { read.closeQuietly() }
        let getfd = #"{"execute":"getfd","arguments":{"fdname":"migrate"}}"#
        let passed = try link.pass(write, with: getfd, from: link.dpu[0], to: link.host[0])
        #expect(try passed.descriptorStatus().kind == .fifo)
        #expect(try passed.isCloseOnExec(), "received close-on-exec (MSG_CMSG_CLOEXEC)")
        try Self.write(passed, "migration stream")
        passed.closeQuietly()
        // End of file here means no copy of the write end is left on either side.
        #expect(try Self.readAll(read, link) == "migration stream")
        #expect(link.notes.lines.isEmpty, "\(link.notes.lines)")
    }

    @Test func aFileOnlyThisSideHasIsWrittenAtItsOffset() throws {
        let link = try Link()
        defer { link.close() }
        let path = try Self.temporaryFile("")
        defer { unlink(path) }
        let file = try FD.openPath(path, flags: O_WRONLY)
        try Self.write(file, "HEADER:")
        let passed = try link.pass(file, with: "save", from: link.dpu[0], to: link.host[0])
        #expect(try passed.descriptorStatus().kind == .fifo, "streamed: the host gets a pipe")
        try Self.write(passed, "guest memory")
        passed.closeQuietly()
        let contents = try link.until("the file written") { () -> String? in
            let text = try readTextFile(path)
            return text.count >= "HEADER:guest memory".count ? text : nil
        }
        #expect(contents == "HEADER:guest memory")
    }

    @Test func aReadOnlyFileIsReadFromItsOffset() throws {
        let link = try Link()
        defer { link.close() }
        let path = try Self.temporaryFile("HEADER:saved state")
        defer { unlink(path) }
        let file = try FD.openPath(path, flags: O_RDONLY)
        try file.seek(to: 7)
        let passed = try link.pass(file, with: "restore", from: link.dpu[0], to: link.host[0])
        #expect(try passed.descriptorStatus().kind == .fifo)
        try passed.setNonBlocking()
        #expect(try Self.readAll(passed, link) == "saved state")
        passed.closeQuietly()
    }

    @Test func aConnectedSocketCarriesBothWays() throws {
        let link = try Link()
        defer { link.close() }
        let (ours, theirs) = try FD.socketPair(nonBlocking: true)
        defer { ours.closeQuietly() }
        let passed = try link.pass(theirs, with: "socket", from: link.dpu[0], to: link.host[0])
        defer { passed.closeQuietly() }
        #expect(try passed.descriptorStatus().kind == .socket)
        try passed.setNonBlocking()
        try Self.write(passed, "ping")
        let ping = try link.until("ping") { try Self.receive(ours) }
        #expect(ping.text == "ping")
        try Self.write(ours, "pong")
        let pong = try link.until("pong") { try Self.receive(passed) }
        #expect(pong.text == "pong")
    }

    @Test func theHostCanPassDescriptorsBack() throws {
        let link = try Link()
        defer { link.close() }
        let (read, write) = try FD.makePipe(nonBlocking: true)
        defer { read.closeQuietly() }
        let passed = try link.pass(write, with: "reply", from: link.host[0], to: link.dpu[0])
        try Self.write(passed, "back")
        passed.closeQuietly()
        #expect(try Self.readAll(read, link) == "back")
    }

    @Test func tooManyDescriptorsResetOnlyThatConnection() throws {
        let link = try Link(connections: 2)
        defer { link.close() }
        let (read, write) = try FD.makePipe(nonBlocking: true)
        defer { read.closeQuietly() }
        let copies = try (0...RexecLimits.maximumPassed).map { _ in try write.duplicateCloseOnExec(minimum: 3) }
        try Self.send(link.dpu[0], "too many", fds: copies)
        for fd in copies + [write] { fd.closeQuietly() }
        // Both programs see their connection end, the host without the message.
        #expect(try link.until("the DPU side's end") { try Self.receive(link.dpu[0]) }.bytes.isEmpty)
        #expect(try link.until("the host side's end") { try Self.receive(link.host[0]) }.bytes.isEmpty)
        #expect(link.notes.lines.contains { $0.contains("more than \(RexecLimits.maximumPassed) file descriptors in one message") })
        // None of them was kept: the pipe's reader sees end of file.
        #expect(try Self.readAll(read, link) == "")
        // The other connection goes on.
        try Self.send(link.dpu[1], "still here")
        #expect(try link.until("the other connection") { try Self.receive(link.host[1]) }.text == "still here")
        #expect(link.closed.isEmpty, "the multiplexers are still connected")
    }

    @Test func descriptorsWaitingForAReaderAreBounded() throws {
        let link = try Link(connections: 2)
        defer { link.close() }
        // The host program reads nothing: fill its socket, so that what follows waits on the server
        // (less than a window: the client keeps reading the DPU side).
        let chunk = [UInt8](repeating: 0x61, count: 1 << 16)
        var written = 0
        while written < 1 << 20 {
            written += try chunk.withUnsafeBytes { try link.dpu[0].writeSome($0) } ?? 0
            try link.turn()
        }
        for _ in 0..<20 { try link.turn() }
        let (read, write) = try FD.makePipe(nonBlocking: true)
        defer { read.closeQuietly() }
        let waves = RexecLimits.maximumPassedWaiting / RexecLimits.maximumPassed + 1
        var sent = 0
        for _ in 0..<waves {
            let copies = try (0..<RexecLimits.maximumPassed).map { _ in try write.duplicateCloseOnExec(minimum: 3) }
            // The DPU side may be full too: wait until it takes one byte with its descriptors.
            _ = try link.until("room for a message") { () -> Bool? in
                (try? Array("x".utf8).withUnsafeBytes { try link.dpu[0].send($0, fds: copies, flags: Int32(MSG_DONTWAIT)) }).flatMap { $0 }.map { _ in true }
            }
            for fd in copies { fd.closeQuietly() }
            sent += 1
        }
        write.closeQuietly()
        _ = try link.until("the reset") { link.notes.lines.contains { $0.contains("passed file descriptors its program has not read yet") } ? true : nil }
        // Every copy was closed: nothing on either side holds the pipe's write end.
        #expect(try Self.readAll(read, link) == "")
        try Self.send(link.dpu[1], "still here")
        #expect(try link.until("the other connection") { try Self.receive(link.host[1]) }.text == "still here")
        #expect(link.closed.isEmpty)
    }

    @Test func aPassFromThePeerIsChecked() throws {
        func closedBy(_ frame: Frame, client: Bool) throws -> WireError? {
            let loop = try IOLoop()
            let (a, b) = try FD.socketPair(nonBlocking: true)
            defer { b.closeQuietly() }
            let mux = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
            var next: UInt32 = 2
            mux.descriptorPassing = client
                ? PassingPolicy(client: {
                    defer { next += 1 }
                    return next
                }, note: { _ in })
                : PassingPolicy(serverNote: { _ in })
            var closedWith: Error?
            var closed = false
            mux.onControl = { _ throws(WireError) in }
            mux.onClosed = { closedWith = $0; closed = true }
            let (x, y) = try FD.socketPair(nonBlocking: true)
            defer { y.closeQuietly() }
            let end = LocalEnd(fd: x, owned: true)
            try mux.add(CarriedStream(id: 1, source: end, sink: end))
            try mux.start()
            var bytes = ByteBuffer()
            frame.encode(into: &bytes)
            _ = try bytes.readableBytesView.withUnsafeBytes { try b.writeSome($0) }
            for _ in 0..<100 where !closed { try loop.runOnce(timeoutMilliseconds: 1) }
            mux.close(nil)
            mux.releaseAll()
            return closedWith as? WireError
        }
        // The server numbers its streams from 2^31, the client below; the server never passes by path.
        #expect(try closedBy(RexecMessage.pass(stream: 1, descriptors: [.output(stream: 5)]).frame, client: true)?.code == .protocolViolation)
        #expect(try closedBy(RexecMessage.pass(stream: 1, descriptors: [.output(stream: 1 << 31 | 5)]).frame, client: false)?.code == .protocolViolation)
        #expect(
            try closedBy(RexecMessage.pass(stream: 1, descriptors: [.file(path: Array("/etc/shadow".utf8), flags: 0, offset: 0)]).frame, client: true)?
                .code == .protocolViolation)
        #expect(try closedBy(RexecMessage.pass(stream: 9, descriptors: [.output(stream: 1 << 31 | 5)]).frame, client: true)?.code == .protocolViolation)
        // A well-formed one is taken (and its descriptor waits for its byte).
        #expect(try closedBy(RexecMessage.pass(stream: 1, descriptors: [.output(stream: 1 << 31 | 5)]).frame, client: true) == nil)
    }

    @Test func whatFollowsOnARefusedStreamIsDropped() throws {
        // The server refuses an accepted connection (the program does not accept): the client may have sent
        // a command and passed an fd on it before it heard.
        let loop = try IOLoop()
        let (a, b) = try FD.socketPair(nonBlocking: true)
        defer { b.closeQuietly() }
        let mux = Multiplexer(loop: loop, link: LocalEnd(fd: a, owned: true))
        mux.descriptorPassing = PassingPolicy(serverNote: { _ in })
        var closed = false
        mux.onControl = { _ throws(WireError) in }
        mux.onClosed = { _ in closed = true }
        try mux.start()
        try mux.refuse(7, .refused, reason: "the program does not accept connections")
        var bytes = ByteBuffer()
        RexecMessage.pass(stream: 7, descriptors: [.output(stream: 8)]).frame.encode(into: &bytes)
        Frame(type: RexecFrame.data, stream: 7, payload: ByteBuffer(bytes: Array("getfd\n".utf8))).encode(into: &bytes)
        Frame(type: RexecFrame.data, stream: 8, payload: ByteBuffer(bytes: [1, 2, 3])).encode(into: &bytes)
        _ = try bytes.readableBytesView.withUnsafeBytes { try b.writeSome($0) }
        for _ in 0..<50 { try loop.runOnce(timeoutMilliseconds: 1) }
        #expect(!closed, "the connection goes on")
        // The peer hears that both streams are refused.
        var reply = [UInt8](repeating: 0, count: 4096)
        let count = try reply.withUnsafeMutableBytes { try b.readSome(into: $0) } ?? 0
        var buffer = ByteBuffer(bytes: reply[..<count])
        let resets = try FrameDecoder().decodeAll(&buffer).compactMap { frame -> UInt32? in
            guard case .resetStream(let stream, _, _)? = try? ConnectionMessage(frame) else { return nil }
            return stream
        }
        #expect(resets == [7, 8])
        mux.close(nil)
        mux.releaseAll()
    }

    @Test func theHostSharesOnlyFilesOnQtfsMounts() {
        func entry(_ mountPoint: String, _ root: String = "/", type: String = "fuse.qtfs", source: String) -> MountInfoEntry {
            MountInfo.parse("40 1 0:52 \(root) \(mountPoint) rw,nosuid - \(type) \(source) rw")[0]
        }
        let offload = entry("/home/VMs", source: "qtfs:/home/VMs")
        #expect(SharedFiles.hostPath("/home/VMs/vm.save", on: offload) == "/home/VMs/vm.save")
        #expect(SharedFiles.hostPath("/home/VMs", on: offload) == "/home/VMs")
        #expect(SharedFiles.hostPath("/home/VMsX/vm.save", on: offload) == nil)
        let elsewhere = entry("/mnt/host", "/images", source: "qtfs:/srv/export")
        #expect(SharedFiles.hostPath("/mnt/host/a/b.img", on: elsewhere) == "/srv/export/images/a/b.img")
        #expect(SharedFiles.hostPath("/etc/passwd", on: entry("/", source: "qtfs:/")) == "/etc/passwd")
        #expect(SharedFiles.hostPath("/root/vm.save", on: entry("/root", type: "ext4", source: "/dev/sda1")) == nil)
        #expect(SharedFiles.hostPath("/x/y", on: entry("/x", type: "fuse.sshfs", source: "qtfs:/x")) == nil)
    }

    @Test func aLocalFileIsNotTheHosts() throws {
        let path = try Self.temporaryFile("dpu only")
        defer { unlink(path) }
        let file = try FD.openPath(path, flags: O_RDONLY)
        defer { file.closeQuietly() }
        var shared = SharedFiles()
        #expect(SharedFiles.mountID(of: file) != nil)
        #expect(shared.hostPath(of: file) == nil)
    }
}

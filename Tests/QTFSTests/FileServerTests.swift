import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage
import Testing

@testable import QTFS

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A scratch tree: `export/` is served, `outside/` holds what must never be reached.
final class Scratch {
    let base: String
    let server: QTFSFileServer
    let session = EngineSession(handleLimit: 8)
    var export: UInt32 = 0

    init(whitelist extra: (String) -> String = { _ in "" }, allKinds: Bool = true, readOnly: Bool = false) throws {
        var template = Array("/tmp/qtfs-test.XXXXXX".utf8CString)
        base = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        mkdir(base + "/export", 0o755)
        mkdir(base + "/outside", 0o755)
        let secret = open(base + "/outside/secret", O_CREAT | O_WRONLY, 0o644)
        _ = write(secret, "secret", 6)
        close(secret)
        var text = ""
        if allKinds {
            for kind in QTFSWhitelist.Kind.allCases { text += "[\(kind.rawValue)]\nPath=\(base)/export\n" }
        }
        text += extra(base)
        var whitelist = try QTFSWhitelist(text: text, path: "test")
        if readOnly { try whitelist.addReadOnlyRoot(base + "/export", file: "test", line: nil) }
        server = QTFSFileServer(whitelist: whitelist, handleLimit: 8)
        if case .attached(let info) = try run(.attach(hostPath: bytes(base + "/export"))) { export = info.export }
    }

    deinit { _ = system("rm -rf '\(base)'") }

    func path(_ text: String) -> QTFSPath { QTFSPath(export: export, path: bytes(text)) }

    @discardableResult
    func run(_ request: QTFSRequest, session: EngineSession? = nil) throws -> QTFSReply {
        do {
            return try server.perform(request, in: session ?? self.session, blocking: true, cancellation: Cancellation())
        } catch .failed(let error) {
            throw error
        } catch .mustBlock {
            throw SystemError(.wouldBlock, "must block")
        }
    }

    func errno(_ request: QTFSRequest) -> Errno? {
        do {
            try run(request)
            return nil
        } catch let error as SystemError {
            return error.errno
        } catch {
            return nil
        }
    }
}

@Suite(.serialized) struct Confinement {
    @Test func dotDotIsRefusedByTheKernel() throws {
        let scratch = try Scratch()
        #expect(scratch.errno(.lookup(scratch.path("../outside/secret"))) == .improperLink)
    }

    @Test func symbolicLinksAreNeverFollowedOnTheHost() throws {
        let scratch = try Scratch()
        symlink("/", scratch.base + "/export/absolute")
        symlink("../outside", scratch.base + "/export/relative")
        for path in ["absolute/etc/passwd", "relative/secret"] {
            #expect(scratch.errno(.lookup(scratch.path(path))) == .tooManySymbolicLinkLevels)
            #expect(scratch.errno(.open(scratch.path(path), flags: UInt32(O_RDONLY))) == .tooManySymbolicLinkLevels)
            #expect(scratch.errno(.unlink(scratch.path(path))) == .tooManySymbolicLinkLevels)
            #expect(scratch.errno(.mkdir(scratch.path(path + "x"), mode: 0o755, owner: .root)) == .tooManySymbolicLinkLevels)
        }
        // The link itself is visible, and its target is what the client follows on its side.
        #expect(try scratch.run(.readlink(scratch.path("relative"))) == .linkTarget(bytes("../outside")))
        // Opening the link itself is refused too: the client resolves it.
        #expect(scratch.errno(.open(scratch.path("relative"), flags: 0)) == .tooManySymbolicLinkLevels)
        #expect(scratch.errno(.setattr(.path(scratch.path("absolute")), { var c = QTFSSetAttributes(fields: .mode); c.mode = 0o777; return c }())) == .notSupported)
    }

    @Test func renameRacesNeverReachOutside() throws {
        let scratch = try Scratch()
        mkdir(scratch.base + "/export/a", 0o755)
        mkdir(scratch.base + "/export/a/b", 0o755)
        let stop = ConditionLock(false)
        let base = scratch.base
        try OSThread.start(name: "renamer") {
            while !stop.withLock({ $0 }) {
                rename(base + "/export/a/b", base + "/outside/b")
                rename(base + "/outside/b", base + "/export/a/b")
            }
        }
        defer { stop.withLock { $0 = true } }
        for _ in 0..<2000 {
            if case .attributes(let info) = try? scratch.run(.lookup(scratch.path("a/b/../../secret"))) {
                Issue.record("reached \(info.inode) outside the export")
            }
        }
    }

    @Test func deviceNodesAreNeitherCreatedNorOpened() throws {
        let scratch = try Scratch()
        #expect(scratch.errno(.mknod(scratch.path("null"), mode: UInt32(S_IFCHR) | 0o666, owner: .root)) == .notPermitted)
        #expect(scratch.errno(.mknod(scratch.path("disk"), mode: UInt32(S_IFBLK) | 0o666, owner: .root)) == .notPermitted)
        mknod(scratch.base + "/export/null", S_IFCHR | 0o666, (1 << 8) | 3)
        #expect(scratch.errno(.open(scratch.path("null"), flags: UInt32(O_RDWR))) == .permissionDenied)
        #expect(try scratch.run(.mknod(scratch.path("fifo"), mode: UInt32(S_IFIFO) | 0o600, owner: .root)) != .done)
        #expect(scratch.errno(.rename(scratch.path("fifo"), newPath: bytes("x"), flags: 4)) == .invalidArgument)
    }

    @Test func hardLinksAndRenamesMayNotGainRights() throws {
        let scratch = try Scratch(
            whitelist: { base in
                """
                [Mount]
                Path=\(base)/export
                [Open]
                Path=\(base)/export/public
                [Read]
                Path=\(base)/export/public
                [Create]
                Path=\(base)/export
                [Rename]
                Path=\(base)/export

                """
            }, allKinds: false)
        let base = scratch.base
        mkdir(base + "/export/public", 0o755)
        mkdir(base + "/export/private", 0o755)
        close(open(base + "/export/private/key", O_CREAT | O_WRONLY, 0o600))
        #expect(scratch.errno(.link(scratch.path("private/key"), newPath: bytes("public/key"))) == .permissionDenied)
        #expect(scratch.errno(.rename(scratch.path("private/key"), newPath: bytes("public/key"), flags: 0)) == .permissionDenied)
        #expect(scratch.errno(.open(scratch.path("private/key"), flags: 0)) == .permissionDenied)
        // The other way loses rights, which is fine.
        close(open(base + "/export/public/note", O_CREAT | O_WRONLY, 0o600))
        #expect(scratch.errno(.link(scratch.path("public/note"), newPath: bytes("private/note"))) == nil)
    }
}

@Suite(.serialized) struct FileOperations {
    @Test func createWriteReadAndReleaseAFile() throws {
        let scratch = try Scratch()
        guard case .opened(let handle, _, _, _) = try scratch.run(.create(scratch.path("f"), flags: UInt32(O_RDWR), mode: 0o640, owner: QTFSOwner(uid: 1234, gid: 5678))) else {
            Issue.record("no handle")
            return
        }
        #expect(try scratch.run(.write(handle: handle, offset: 3, flags: 0, data: ByteBuffer(bytes: bytes("hello")))) == .written(5))
        #expect(try scratch.run(.read(handle: handle, offset: 3, size: 100, flags: 0)) == .data(ByteBuffer(bytes: bytes("hello"))))
        guard case .attributes(let info) = try scratch.run(.getattr(.handle(handle))) else { return }
        #expect(info.size == 8 && info.uid == 1234 && info.gid == 5678 && info.mode == UInt32(S_IFREG) | 0o640)
        try scratch.run(.release(handle: handle))
        #expect(scratch.errno(.read(handle: handle, offset: 0, size: 1, flags: 0)) == .badFileDescriptor)
        #expect(scratch.errno(.create(scratch.path("f"), flags: UInt32(O_RDWR | O_EXCL), mode: 0o600, owner: .root)) == .fileExists)
    }

    /// CREATE of a name that exists (not exclusive: the client's negative entry was stale) opens what is
    /// there. A FIFO there used to block the open, on a fast worker, until some reader came.
    @Test func createOverAnExistingFIFOIsRefusedWithoutWaiting() throws {
        let scratch = try Scratch()
        let fifo = scratch.base + "/export/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let outcome = ConditionLock<Errno??>(nil)
        nonisolated(unsafe) let creator = scratch  // used by the thread alone until it reports
        try OSThread.start(name: "creator") {
            let errno = creator.errno(.create(creator.path("fifo"), flags: UInt32(O_WRONLY), mode: 0o600, owner: .root))
            outcome.withLock { $0 = .some(errno) }
            outcome.broadcast()
        }
        let errno = outcome.wait(timeout: .seconds(5)) { $0 }
        if errno == nil {
            Issue.record("CREATE still waits for a reader of the FIFO after 5 s")
            close(open(fifo, O_RDONLY | O_NONBLOCK))  // let it go
        }
        #expect(errno != nil && errno! != nil)
        // An existing regular file is opened, blocking as asked.
        close(open(scratch.base + "/export/plain", O_CREAT | O_WRONLY, 0o644))
        guard case .opened(let handle, _, _, _) = try scratch.run(.create(scratch.path("plain"), flags: UInt32(O_RDWR), mode: 0o600, owner: .root)) else {
            Issue.record("no handle")
            return
        }
        #expect(try scratch.session.handle(handle).fd.statusFlags() & O_NONBLOCK == 0)
    }

    @Test func handlesBelongToTheirConnectionAndAreBounded() throws {
        let scratch = try Scratch()
        close(open(scratch.base + "/export/f", O_CREAT | O_WRONLY, 0o644))
        guard case .opened(let handle, _, _, _) = try scratch.run(.open(scratch.path("f"), flags: 0)) else { return }
        let other = EngineSession(handleLimit: 8)
        #expect(throws: SystemError.self) { try scratch.run(.read(handle: handle, offset: 0, size: 1, flags: 0), session: other) }
        for _ in 1..<8 { try scratch.run(.open(scratch.path("f"), flags: 0)) }
        #expect(scratch.errno(.open(scratch.path("f"), flags: 0)) == .tooManyOpenFiles)
    }

    @Test func readOnlyExportsRefuseChanges() throws {
        let scratch = try Scratch(allKinds: false, readOnly: true)
        close(open(scratch.base + "/export/f", O_CREAT | O_WRONLY, 0o644))
        #expect(scratch.errno(.open(scratch.path("f"), flags: 0)) == nil)
        #expect(scratch.errno(.open(scratch.path("f"), flags: UInt32(O_WRONLY))) == .readOnlyFileSystem)
        #expect(scratch.errno(.unlink(scratch.path("f"))) == .readOnlyFileSystem)
        #expect(scratch.errno(.mkdir(scratch.path("d"), mode: 0o755, owner: .root)) == .readOnlyFileSystem)
        // Through a handle too: fchmod and fsetxattr work on a read-only open file, so the export decides.
        guard case .opened(let handle, _, _, _) = try scratch.run(.open(scratch.path("f"), flags: 0)) else {
            Issue.record("no handle")
            return
        }
        #expect(scratch.errno(.setattr(.handle(handle), Self.chmod(0o777))) == .readOnlyFileSystem)
        #expect(scratch.errno(.setxattr(.handle(handle), name: bytes("user.a"), value: [1], flags: 0)) == .readOnlyFileSystem)
        #expect(scratch.errno(.removexattr(.handle(handle), name: bytes("user.a"))) == .readOnlyFileSystem)
        var info = stat()
        stat(scratch.base + "/export/f", &info)
        #expect(info.st_mode & 0o7777 == 0o644)
    }

    /// A handle opened where Open and Read are whitelisted gives no Setattr or Setxattr there.
    @Test func changesThroughAHandleNeedTheirWhitelistEntry() throws {
        let scratch = try Scratch(
            whitelist: { base in "[Mount]\nPath=\(base)/export\n[Open]\nPath=\(base)/export\n[Read]\nPath=\(base)/export\n" },
            allKinds: false)
        close(open(scratch.base + "/export/f", O_CREAT | O_WRONLY, 0o644))
        guard case .opened(let handle, _, _, _) = try scratch.run(.open(scratch.path("f"), flags: 0)) else {
            Issue.record("no handle")
            return
        }
        #expect(scratch.errno(.setattr(.handle(handle), Self.chmod(0o777))) == .permissionDenied)
        #expect(scratch.errno(.setxattr(.handle(handle), name: bytes("user.a"), value: [1], flags: 0)) == .permissionDenied)
        var info = stat()
        stat(scratch.base + "/export/f", &info)
        #expect(info.st_mode & 0o7777 == 0o644)
    }

    private static func chmod(_ mode: UInt32) -> QTFSSetAttributes {
        var changes = QTFSSetAttributes(fields: .mode)
        changes.mode = mode
        return changes
    }

    @Test func attachIsLimitedToMountEntries() throws {
        let scratch = try Scratch()
        #expect(scratch.errno(.attach(hostPath: bytes(scratch.base + "/outside"))) == .permissionDenied)
        #expect(scratch.errno(.attach(hostPath: bytes(scratch.base + "/export/../outside"))) == .invalidArgument)
        mkdir(scratch.base + "/export/sub", 0o755)
        symlink(scratch.base + "/outside", scratch.base + "/export/link")
        #expect(scratch.errno(.attach(hostPath: bytes(scratch.base + "/export/sub"))) == nil)
        #expect(scratch.errno(.attach(hostPath: bytes(scratch.base + "/export/link"))) == .tooManySymbolicLinkLevels)
    }

    @Test func readdirReturnsEveryEntryOnceAcrossBatches() throws {
        let scratch = try Scratch()
        mkdir(scratch.base + "/export/d", 0o755)
        for index in 0..<3000 { close(open(scratch.base + "/export/d/file\(index)", O_CREAT | O_WRONLY, 0o644)) }
        guard case .directory(let handle, let first, let firstEnd) = try scratch.run(.opendir(scratch.path("d"))) else {
            Issue.record("no handle")
            return
        }
        #expect(first.count == QTFSFileServer.firstBatch && !firstEnd)
        var names = Set<[UInt8]>()
        for entry in first { names.insert(entry.name) }
        var cookie = first.last!.cookie
        while true {
            guard case .entries(let entries, let end) = try scratch.run(.readdir(handle: handle, cookie: cookie, maximumEntries: 100, withAttributes: true)) else { return }
            for entry in entries {
                #expect(names.insert(entry.name).inserted)
                if entry.name.first != 46 { #expect(entry.attributes?.mode == UInt32(S_IFREG) | 0o644) }
            }
            if let last = entries.last { cookie = last.cookie }
            if end { break }
        }
        #expect(names.count == 3002)
    }

    @Test func xattrsAreReadWrittenAndRemoved() throws {
        let scratch = try Scratch()
        close(open(scratch.base + "/export/f", O_CREAT | O_WRONLY, 0o644))
        let target = QTFSTarget.path(scratch.path("f"))
        try scratch.run(.setxattr(target, name: bytes("user.colour"), value: bytes("blue"), flags: 0))
        #expect(try scratch.run(.getxattr(target, name: bytes("user.colour"), size: 0)) == .xattr(size: 4, value: []))
        #expect(try scratch.run(.getxattr(target, name: bytes("user.colour"), size: 100)) == .xattr(size: 4, value: bytes("blue")))
        #expect(try scratch.run(.listxattr(target, size: 100)) == .xattr(size: 12, value: bytes("user.colour") + [0]))
        try scratch.run(.removexattr(target, name: bytes("user.colour")))
        #expect(scratch.errno(.getxattr(target, name: bytes("user.colour"), size: 0)) == .noData)
    }
}

/// The one kind of device node the engine opens: a pty's terminal side (for the client's pty bridge).
@Suite(.serialized) struct Terminals {
    @Test func aPtySlaveIsARawStreamWhileOpenAndOtherDevicesStayClosed() throws {
        let pty = try PseudoTerminal.open()
        defer {
            pty.controller.closeQuietly()
            pty.terminal.closeQuietly()
        }
        let name = try #require(try pty.terminal.linkTarget().split(separator: "/").last.map(String.init))
        let cooked = try Terminal.attributes(pty.terminal)
        #expect(cooked.c_lflag & tcflag_t(ICANON) != 0)
        var text = ""
        for kind in QTFSWhitelist.Kind.allCases { text += "[\(kind.rawValue)]\nPath=/dev/pts\n" }
        let server = QTFSFileServer(whitelist: try QTFSWhitelist(text: text, path: "test"))
        let session = EngineSession(handleLimit: 8)
        func run(_ request: QTFSRequest) throws -> QTFSReply {
            do {
                return try server.perform(request, in: session, blocking: true, cancellation: Cancellation())
            } catch .failed(let error) {
                throw error
            } catch .mustBlock {
                throw SystemError(.wouldBlock, "must block")
            }
        }
        guard case .attached(let info) = try run(.attach(hostPath: bytes("/dev/pts"))) else { Issue.record("no attach"); return }
        let path = QTFSPath(export: info.export, path: bytes(name))
        guard case .opened(let handle, let flags, _, _) = try run(.open(path, flags: UInt32(O_RDWR))) else {
            Issue.record("no handle")
            return
        }
        #expect(flags.contains(.stream))
        let raw = try Terminal.attributes(pty.terminal)
        #expect(raw.c_lflag & tcflag_t(ICANON | ECHO) == 0 && raw.c_oflag & tcflag_t(OPOST) == 0)
        #expect(server.pool(for: .read(handle: handle, offset: 0, size: 10, flags: 0), in: session) == .blocking)

        // Both ways unchanged: no \n -> \r\n on output, no \r -> \n on input, no echo.
        #expect(try run(.write(handle: handle, offset: 0, flags: 0, data: ByteBuffer(string: "a\nb\r"))) == .written(4))
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        while received.count < 4, let count = try chunk.withUnsafeMutableBytes({ try pty.controller.readSome(into: $0) }), count > 0 {
            received += chunk[..<count]
        }
        #expect(received == bytes("a\nb\r"))
        _ = try bytes("x\ry\n").withUnsafeBytes { try pty.controller.writeOnce($0) }
        var sent: [UInt8] = []
        while sent.count < 4, case .data(let data) = try run(.read(handle: handle, offset: 0, size: 64, flags: 0)) {
            sent += Array(data.readableBytesView)
            if data.readableBytes == 0 { break }
        }
        #expect(sent == bytes("x\ry\n"))

        // Released: the pty has its modes back.
        try run(.release(handle: handle))
        let back = try Terminal.attributes(pty.terminal)
        #expect(back.c_lflag == cooked.c_lflag && back.c_oflag == cooked.c_oflag && back.c_iflag == cooked.c_iflag)

        // The multiplexer (5:2) is no terminal: refused like every other device node.
        let ptmx = QTFSPath(export: info.export, path: bytes("ptmx"))
        #expect(throws: SystemError.self) { try run(.open(ptmx, flags: UInt32(O_RDWR))) }
        do {
            _ = try run(.open(ptmx, flags: UInt32(O_RDWR)))
        } catch let error as SystemError {
            #expect(error.errno == .permissionDenied)
        }
    }

    @Test func theWhitelistStillDecides() throws {
        let pty = try PseudoTerminal.open()
        defer {
            pty.controller.closeQuietly()
            pty.terminal.closeQuietly()
        }
        let name = try #require(try pty.terminal.linkTarget().split(separator: "/").last.map(String.init))
        let server = QTFSFileServer(whitelist: try QTFSWhitelist(text: "[Mount]\nPath=/dev/pts\n[Open]\nPath=/dev/pts\n", path: "test"))
        let session = EngineSession(handleLimit: 8)
        guard case .attached(let info) = try server.perform(
            .attach(hostPath: bytes("/dev/pts")), in: session, blocking: true, cancellation: Cancellation())
        else { Issue.record("no attach"); return }
        // Open but neither Read nor Write: no terminal.
        do {
            _ = try server.perform(
                .open(QTFSPath(export: info.export, path: bytes(name)), flags: UInt32(O_RDWR)), in: session, blocking: true,
                cancellation: Cancellation())
            Issue.record("opened without Read and Write")
        } catch .failed(let error) {
            #expect(error.errno == .permissionDenied)
        } catch {
            Issue.record("\(error)")
        }
        #expect(try Terminal.attributes(pty.terminal).c_lflag & tcflag_t(ICANON) != 0)
    }
}

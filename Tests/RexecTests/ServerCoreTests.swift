import DPUSystem
import DPUWire
import Glibc
import Logging
import NIOCore
import SystemPackage
import Testing

@testable import Rexec

/// The server's event loop, driven by the test: a real listening unix socket, real connections, the
/// native protocol spoken by hand, real programs started and reaped.
@Suite struct ServerCoreTests {
    @Test func finishedSessionsLeaveNoTimersBehind() throws {
        // Each session bounds its last flush and its handshake with timers; a server that kept them after
        // the session ended carried one per program started for the next 30 s, and paid for the list on
        // every later connection. (withServer checks that none is left.)
        try withServer { core, path in
            for round in 1...3 {
                let exit = try runTrue(core: core, path: path)
                #expect(exit == .exited(code: 0), "round \(round)")
            }
        }
    }

    // A client that connects and then stops short of a request holds a session, one of max-sessions, for
    // as long as it keeps the connection open, unless the server bounds the wait.
    @Test func aNativeClientThatSendsNoRequestIsDropped() throws {
        try withServer { core, path in
            var (connection, handshake, outbound) = try connectNative(path)
            defer { connection.closeQuietly() }
            var inbound = ByteBuffer()
            var opened = false
            var closed = false
            let start = IOLoop.now()
            while !closed && IOLoop.now() - start < 3_000_000_000 {
                closed = try turn(core, connection, &outbound, &inbound)
                if !opened, case .finished(var send, _) = try handshake.feed(&inbound) {
                    outbound.writeBuffer(&send)  // the handshake completes; no EXEC follows
                    opened = true
                }
            }
            #expect(opened)
            #expect(closed, "the connection is still open 3 s after the handshake")
        }
    }

    @Test func anOriginalClientThatStopsMidHeaderIsDropped() throws {
        try withServer { core, path in
            let connection = try Socket.connect(to: .unix(path: path))
            defer { connection.closeQuietly() }
            try connection.setNonBlocking()
            // The first 5 of the original EXEC header's 24 bytes.
            let partial: [UInt8] = [0x5a, 0x5a, 0, 0, 2]
            #expect(partial.withUnsafeBytes { Glibc.write(connection.rawValue, $0.baseAddress, $0.count) } == partial.count)
            var (outbound, inbound) = (ByteBuffer(), ByteBuffer())
            var closed = false
            let start = IOLoop.now()
            while !closed && IOLoop.now() - start < 3_000_000_000 {
                closed = try turn(core, connection, &outbound, &inbound)
            }
            #expect(closed, "the connection is still open 3 s after half a header")
        }
    }

    /// A server on a fresh unix socket with a 200 ms bound on the request; shut down afterwards, when no
    /// timer may be left.
    private func withServer(_ body: (ServerCore, String) throws -> Void) throws {
        var template = Array("/tmp/dpuctl-servercore-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let path = directory + "/rexec.sock"
        defer { rmdir(directory) }
        var settings = RexecServerSettings()
        settings.handshakeTimeout = .milliseconds(200)
        settings.allowedUIDs = [getuid()]
        let core = try ServerCore(
            settings: settings, whitelist: Whitelist(path: "test", programs: [Array("/bin/true".utf8)]),
            logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }, snapshot: Snapshot())
        let listener = try Socket.listen(on: .unix(path: path))
        try core.adopt(listener, endpoint: .unix(path: path), key: nil, ownsPath: true)
        defer {
            core.shutDown()
            unlink(path)
        }
        try body(core, path)
        for _ in 0..<20 { try core.loop.runOnce(timeoutMilliseconds: 1) }
        #expect(core.loop.pendingTimers == 0)
    }

    /// A dpuctl client's connection (non-blocking), its handshake and the hello it starts with.
    private func connectNative(_ path: String) throws -> (SystemPackage.FileDescriptor, Handshake, ByteBuffer) {
        let connection = try Socket.connect(to: .unix(path: path))
        try connection.setNonBlocking()
        let handshake = Handshake(role: .client, service: .rexec, capabilities: 0, key: nil)
        return (connection, handshake, handshake.clientOpening)
    }

    /// One turn of a client and the server: what is queued goes out, the server's loop runs once, what
    /// came back is appended to `inbound`. Returns whether the server has closed the connection.
    private func turn(_ core: ServerCore, _ connection: SystemPackage.FileDescriptor, _ outbound: inout ByteBuffer, _ inbound: inout ByteBuffer) throws -> Bool {
        if outbound.readableBytes > 0 {
            let written = outbound.readableBytesView.withUnsafeBytes { Glibc.write(connection.rawValue, $0.baseAddress, $0.count) }
            if written > 0 { outbound.moveReaderIndex(forwardBy: written) }
        }
        try core.loop.runOnce(timeoutMilliseconds: 2)
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = Glibc.read(connection.rawValue, &chunk, chunk.count)
        if count > 0 { inbound.writeBytes(chunk[..<count]) }
        return count == 0 || (count < 0 && errno != EAGAIN)
    }

    /// One `/bin/true` through the native protocol, with /dev/null as its stdio; returns what EXITED said.
    private func runTrue(core: ServerCore, path: String) throws -> RexecExit? {
        var (connection, handshake, outbound) = try connectNative(path)
        defer { connection.closeQuietly() }
        var inbound = ByteBuffer()
        var opened = false
        var exit: RexecExit?
        let decoder = FrameDecoder()
        let null = Array("/dev/null".utf8)
        let request = RexecExecRequest(
            program: Array("/bin/true".utf8), arguments: [Array("true".utf8)], environment: [], workingDirectory: Array("/".utf8),
            umask: 0o22,
            descriptors: [
                RexecDescriptor(targets: [0], kind: .file(path: null, flags: UInt32(O_RDONLY), offset: 0)),
                RexecDescriptor(targets: [1, 2], kind: .file(path: null, flags: UInt32(O_WRONLY), offset: 0)),
            ])
        for _ in 0..<5000 where exit == nil {
            _ = try turn(core, connection, &outbound, &inbound)
            if !opened {
                switch try handshake.feed(&inbound) {
                case .continue(var send): outbound.writeBuffer(&send)
                case .finished(var send, _):
                    outbound.writeBuffer(&send)
                    RexecMessage.exec(request).frame.encode(into: &outbound)
                    opened = true
                case .rejected(_, let error): throw error
                }
            }
            while opened, let frame = try decoder.decode(&inbound) {
                if let message = try? RexecMessage(frame), case .exited(let status) = message { exit = status }
            }
        }
        return exit
    }
}

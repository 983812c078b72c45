import Glibc
import SystemPackage
import Testing

@testable import DPUSystem

@Suite struct Sockets {
    func temporaryPath(_ name: String) -> String { "/tmp/dpusystem-\(getpid())-\(name)" }

    @Test func fileDescriptorsTravelWithTheBytesAndArriveCloseOnExec() throws {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.closeQuietly(); b.closeQuietly() }
        let (pipeRead, pipeWrite) = try FileDescriptor.makePipe()
        defer { pipeRead.closeQuietly(); pipeWrite.closeQuietly() }
        let sent = try Array("hello".utf8).withUnsafeBytes { try a.send($0, fds: [pipeWrite]) }
        #expect(sent == 5)
        var buffer = [UInt8](repeating: 0, count: 16)
        let received = try #require(try buffer.withUnsafeMutableBytes { try b.receive(into: $0, maxFDs: 4) })
        #expect(received.bytes == 5 && received.fds.count == 1 && !received.truncated)
        let passed = received.fds[0]
        defer { passed.closeQuietly() }
        #expect(try passed.isCloseOnExec())
        // The passed fd is the pipe's write end: what we write through it comes out of the read end.
        _ = try Array("x".utf8).withUnsafeBytes { try passed.writeSome($0) }
        var byte: UInt8 = 0
        _ = try withUnsafeMutableBytes(of: &byte) { try pipeRead.readSome(into: $0) }
        #expect(byte == UInt8(ascii: "x"))
    }

    @Test func descriptorsBeyondTheLimitAreClosedAndReported() throws {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.closeQuietly(); b.closeQuietly() }
        let files = try (0..<3).map { _ in try FileDescriptor.openPath("/dev/null", flags: O_RDONLY) }
        defer { files.forEach { $0.closeQuietly() } }
        _ = try [UInt8(0)].withUnsafeBytes { try a.send($0, fds: files) }
        var buffer = [UInt8](repeating: 0, count: 4)
        let received = try #require(try buffer.withUnsafeMutableBytes { try b.receive(into: $0, maxFDs: 1) })
        #expect(received.fds.count == 1 && received.truncated)
        received.fds.forEach { $0.closeQuietly() }
    }

    @Test func peerCredentialsNameThisProcess() throws {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.closeQuietly(); b.closeQuietly() }
        let credentials = try a.peerCredentials()
        #expect(credentials == PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid()))
    }

    @Test func aStaleUnixSocketIsReplacedButALiveOneIsNot() throws {
        let path = temporaryPath("stale.sock")
        defer { unlink(path) }
        // Leave a socket node behind with nobody listening.
        let dead = try Socket.listen(on: .unix(path: path))
        dead.closeQuietly()
        let live = try Socket.listen(on: .unix(path: path))
        defer { live.closeQuietly() }
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect { try Socket.listen(on: .unix(path: path)) } throws: { ($0 as? SystemError)?.errno == .addressInUse }
    }

    @Test func aFileThatIsNotASocketIsNeverRemoved() throws {
        let path = temporaryPath("regular")
        let fd = try FileDescriptor.openPath(path, flags: O_CREAT | O_WRONLY, mode: 0o600)
        fd.closeQuietly()
        defer { unlink(path) }
        #expect(throws: SystemError.self) { try Socket.listen(on: .unix(path: path)) }
        #expect(access(path, F_OK) == 0)
    }

    @Test func tcpOnLoopbackConnectsWithNoDelay() throws {
        let server = try Socket.listen(on: .tcp(host: "127.0.0.1", port: 0))  // port 0: any free port
        defer { server.closeQuietly() }
        let port = try server.localAddress().port
        let client = try Socket.connect(to: .tcp(host: "127.0.0.1", port: port))
        defer { client.closeQuietly() }
        #expect(try client.socketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY) == 1)
        let accepted = try #require(try server.accept())
        defer { accepted.closeQuietly() }
        #expect(try accepted.isCloseOnExec())
        #expect(try accepted.peerAddress().port == client.localAddress().port)
    }

    @Test func connectingToNothingNamesTheAddress() {
        #expect { try Socket.connect(to: .unix(path: "/nonexistent/dpuctl.sock")) } throws: { error in
            (error as? SystemError)?.description.contains("/nonexistent/dpuctl.sock") == true
        }
    }
}

@Suite struct Endpoints {
    @Test(arguments: [
        ("tcp://198.51.100.1:7777", Endpoint.tcp(host: "198.51.100.1", port: 7777)),
        ("tcp://[::1]:80", .tcp(host: "::1", port: 80)),
        ("tcp://localhost:1", .tcp(host: "localhost", port: 1)),
        ("unix:///var/run/rexec/rexec_uds.sock", .unix(path: "/var/run/rexec/rexec_uds.sock")),
        ("vsock://2:1234", .vsock(cid: 2, port: 1234)),
        ("vsock://any:5", .vsock(cid: UInt32.max, port: 5)),
    ])
    func validAddressesParse(_ text: String, _ expected: Endpoint) throws {
        let endpoint = try Endpoint(parsing: text)
        #expect(endpoint == expected)
        #expect(try Endpoint(parsing: endpoint.description) == endpoint)
    }

    @Test(arguments: [
        ("7777", "expected tcp://"), ("tcp//host:1", "expected tcp://"), ("udp://h:1", "unknown scheme"),
        ("tcp://host", "missing `:PORT`"), ("tcp://host:0", "port must be"), ("tcp://host:70000", "port must be"),
        ("tcp://:80", "host is missing"), ("tcp://::1:80", "brackets"), ("unix://relative", "absolute"),
        ("unix:///" + String(repeating: "a", count: 200), "longer than"), ("vsock://x:1", "CID"),
    ])
    func invalidAddressesSayWhatIsWrong(_ text: String, _ fragment: String) {
        #expect { try Endpoint(parsing: text) } throws: { error in
            let description = (error as? EndpointError)?.description ?? ""
            return description.contains(fragment) && description.contains(text.prefix(20))
        }
    }

    @Test func onlyLoopbackAndUnixAreLocal() throws {
        #expect(try Endpoint(parsing: "tcp://127.0.0.1:1").isLocalOnly)
        #expect(try Endpoint(parsing: "unix:///x").isLocalOnly)
        #expect(!(try Endpoint(parsing: "tcp://0.0.0.0:1").isLocalOnly))
        #expect(!(try Endpoint(parsing: "tcp://198.51.100.1:1").isLocalOnly))
        #expect(!(try Endpoint(parsing: "vsock://3:1").isLocalOnly))
    }
}

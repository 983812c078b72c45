import DPUSystem
import DPUWire
import Glibc
import Logging
import QTFS
import SystemPackage
import Synchronization
import Testing

@testable import QTFSFuse

/// The client's pool against a real engine in this process, on a unix socket.
@Suite struct EngineClientPool {
    /// An engine exporting a fresh directory, serving while `body` runs. `body` blocks (the client's calls
    /// do), so it runs on a thread of its own: on a test's task it could hold the last free thread of the
    /// concurrency pool while the engine's serving task waits for one (seen in CI, on two cores).
    private func withEngine<T: Sendable>(_ body: @escaping @Sendable (String, String) throws -> T) async throws -> T {
        var template = Array("/tmp/dpuctl-pool-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let whitelist = "\(directory)/whitelist", socket = "\(directory)/engine.sock"
        defer {
            unlink(whitelist)
            unlink(socket)
            rmdir(directory)
        }
        let fd = try FileDescriptor.openPath(whitelist, flags: O_CREAT | O_WRONLY, mode: 0o600)
        try fd.writeFully("[Mount]\nPath=\(directory)\n[Read]\nPath=\(directory)\n".utf8)
        fd.closeQuietly()
        let configuration = QTFSEngineConfiguration(
            listeners: [.endpoint(.unix(path: socket))], whitelistPath: whitelist, whitelistOptional: false,
            configPath: "\(directory)/none.conf", keyPath: "\(directory)/none.key", insecure: true, workers: 2)
        let engine = try QTFSEngine(configuration, logger: Logger(label: "engine"))
        // The engine's start sets umask 0 for the process: give the other tests theirs back.
        let mask = umask(0)
        try await engine.start()
        umask(mask)
        let serving = Task { try await engine.serve() }
        defer { serving.cancel() }
        return try await OSThread.run(name: "pool-test") { try body(directory, socket) }
    }

    private static func waitUntil(_ condition: () -> Bool) -> Bool {
        let end = monotonicNanoseconds() + 10_000_000_000
        while !condition() {
            if monotonicNanoseconds() > end { return false }
            usleep(1000)
        }
        return true
    }

    struct Seen: Sendable {
        var allUp = false, slotDown = false, answered = false, stale = false, redialled = false
        var answer = ""
    }

    /// A request pinned to a connection that is down waits for it even while other connections are up
    /// (it once bounced between parking and sending until the stack ran out, killing mount.qtfs), and
    /// once its connection is back it learns its handle is stale.
    @Test func aRequestForADownConnectionWaitsWhileAnotherIsUp() async throws {
        let seen = try await withEngine { directory, socket in
            var seen = Seen()
            let client = EngineClient(
                endpoint: .unix(path: socket), key: nil, hostPath: Array(directory.utf8), connections: 2,
                patience: .seconds(10), logger: Logger(label: "client"))
            try client.start()
            defer { client.stop() }
            seen.allUp = Self.waitUntil { client.slots.allSatisfy { $0.current != nil } }
            guard seen.allUp, let old = client.slots[1].current else { return seen }
            old.socket.shutdown()
            // The reader notices and redials after a pause: the slot is down, the other one up.
            seen.slotDown = Self.waitUntil { client.slots[1].current == nil }
            let result = Mutex<Result<QTFSReply, Errno>?>(nil)
            let request = Outgoing(.statfs, pinned: old.link, encode: { link in
                .statfs(QTFSPath(export: link.export, path: []))
            }) { answer, _ in result.withLock { $0 = answer } }
            client.send(request)
            seen.answered = Self.waitUntil { result.withLock { $0 != nil } }
            let answer = result.withLock { $0 }
            seen.answer = String(describing: answer)
            seen.stale = if case .failure(.staleNFSFileHandle)? = answer { true } else { false }
            seen.redialled = client.slots[1].current.map { $0.link.generation > old.link.generation } == true
            return seen
        }
        #expect(seen.allUp, "both connections come up")
        #expect(seen.slotDown, "the shut connection goes down")
        #expect(seen.answered && seen.stale, "\(seen.answer)")
        #expect(seen.redialled)
    }
}

/// What the engine's errnos become for the FUSE kernel.
@Suite struct EngineErrnos {
    @Test func onlyErrnosTheKernelTakesReachIt() {
        #expect(ClientConnection.localErrno(EACCES) == .permissionDenied)
        #expect(ClientConnection.localErrno(ESTALE) == .staleNFSFileHandle)
        // The kernel's internal ENOTSUPP (sysfs leaks it): refused by the kernel, its caller would hang.
        #expect(ClientConnection.localErrno(524) == .notSupported)
        #expect(ClientConnection.localErrno(600) == .ioError)
        #expect(ClientConnection.localErrno(0) == .ioError)
        // ENOSYS would switch the operation off for the whole mount.
        #expect(ClientConnection.localErrno(ENOSYS) == .notSupported)
    }
}

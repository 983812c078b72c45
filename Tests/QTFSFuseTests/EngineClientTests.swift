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
    /// An engine exporting a fresh directory, serving until `body` returns.
    private func withEngine(_ body: (String, String) async throws -> Void) async throws {
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
        try await body(directory, socket)
    }

    private func waitUntil(_ condition: () -> Bool) -> Bool {
        let end = monotonicNanoseconds() + 10_000_000_000
        while !condition() {
            if monotonicNanoseconds() > end { return false }
            usleep(1000)
        }
        return true
    }

    /// A request pinned to a connection that is down waits for it even while other connections are up
    /// (it once bounced between parking and sending until the stack ran out, killing mount.qtfs), and
    /// once its connection is back it learns its handle is stale.
    @Test func aRequestForADownConnectionWaitsWhileAnotherIsUp() async throws {
        try await withEngine { directory, socket in
            let client = EngineClient(
                endpoint: .unix(path: socket), key: nil, hostPath: Array(directory.utf8), connections: 2,
                patience: .seconds(10), logger: Logger(label: "client"))
            try client.start()
            defer { client.stop() }
            #expect(waitUntil { client.slots.allSatisfy { $0.current != nil } })
            let old = try #require(client.slots[1].current)
            old.socket.shutdown()
            // The reader notices and redials after a pause: the slot is down, the other one up.
            #expect(waitUntil { client.slots[1].current == nil })
            let result = Mutex<Result<QTFSReply, Errno>?>(nil)
            let request = Outgoing(.statfs, pinned: old.link, encode: { link in
                .statfs(QTFSPath(export: link.export, path: []))
            }) { answer, _ in result.withLock { $0 = answer } }
            client.send(request)
            #expect(waitUntil { result.withLock { $0 != nil } })
            let stale = if case .failure(.staleNFSFileHandle)? = result.withLock({ $0 }) { true } else { false }
            #expect(stale, "\(String(describing: result.withLock { $0 }))")
            #expect(client.slots[1].current.map { $0.link.generation > old.link.generation } == true)
        }
    }
}

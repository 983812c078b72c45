import DPUSystem
import Glibc
import SystemPackage
import Testing

@testable import Rexec

/// Files the client names by path (inherited at exec, or passed on a carried socket) are opened on the
/// server's one event loop: nothing there may wait.
@Suite struct LauncherOpensByPath {
    @Test func aRegularFileKeepsItsFlagsAndOffset() throws {
        let path = "/tmp/dpuctl-launcher-\(getpid())"
        defer { unlink(path) }
        let setup = try FileDescriptor.openPath(path, flags: O_CREAT | O_WRONLY, mode: 0o600)
        try setup.writeFully("0123456789".utf8)
        setup.closeQuietly()
        let fd = try Launcher.open(path: Array(path.utf8), flags: O_RDWR | O_APPEND, offset: 4)
        defer { fd.closeQuietly() }
        #expect(try fd.statusFlags() & (O_ACCMODE | O_APPEND) == O_RDWR | O_APPEND)
        #expect(try fd.seek(to: 0, whence: SEEK_CUR) == 4)
    }

    /// A FIFO there used to block the open until a peer came (and with it every session of the server).
    @Test func aFIFOIsRefusedWithoutWaiting() async throws {
        let path = "/tmp/dpuctl-launcher-fifo-\(getpid())"
        #expect(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        let outcome = ConditionLock<String?>(nil)
        try OSThread.start(name: "opener") {
            let result: String
            do {
                let fd = try Launcher.open(path: Array(path.utf8), flags: O_WRONLY, offset: 0)
                fd.closeQuietly()
                result = "opened"
            } catch let error as SystemError {
                result = "\(error.errno)"
            } catch {
                result = "\(error)"
            }
            outcome.withLock { $0 = result }
            outcome.broadcast()
        }
        let result = try await OSThread.run(name: "waiter") { outcome.wait(timeout: .seconds(5)) { $0 } }
        if result == nil { close(open(path, O_RDONLY | O_NONBLOCK)) }  // let a waiting open go
        #expect(result == "\(Errno.noSuchAddressOrDevice)")
    }
}

import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage
import Testing

@testable import QTFS

@Suite struct FramedSocketSending {
    /// Runs `body` with SIGPIPE blocked on this thread and says whether it raised one (a blocked signal
    /// stays pending even where the process ignores it), consuming it.
    private func raisesSIGPIPE(_ body: () -> Void) -> Bool {
        var pipeOnly = sigset_t(), previous = sigset_t(), pending = sigset_t()
        sigemptyset(&pipeOnly)
        sigaddset(&pipeOnly, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeOnly, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        body()
        sigpending(&pending)
        guard sigismember(&pending, SIGPIPE) == 1 else { return false }
        var zero = timespec()
        _ = sigtimedwait(&pipeOnly, nil, &zero)
        return true
    }

    /// mount.qtfs once died of SIGPIPE, silently, when a FUSE worker sent a request on a connection its
    /// reader had just shut down (the engine had restarted): a send on a dead connection is an error.
    @Test(arguments: ["own shutdown", "peer closed"])
    func aSendOnADeadConnectionIsAnErrorNotASignal(_ how: String) throws {
        let (near, far) = try FileDescriptor.socketPair()
        let socket = FramedSocket(fd: near, leftover: ByteBuffer())
        if how == "own shutdown" { socket.shutdown() }
        far.closeQuietly()
        var errors: [Errno] = []
        let raised = raisesSIGPIPE {
            for _ in 0..<2 {
                do throws(SystemError) { try socket.send(Frame(type: .ping, stream: 0)) } catch { errors.append(error.errno) }
            }
        }
        #expect(!raised)
        #expect(errors == [.brokenPipe, .brokenPipe])
    }
}

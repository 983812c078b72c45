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

@Suite struct FramedSocketBounds {
    /// The handshake's time limit is for all of it: a peer that sends a byte now and then (each read
    /// returning in time) used to hold the thread until it chose to finish.
    @Test func aHandshakeDrippedByteByByteEndsAtItsDeadline() throws {
        let (near, far) = try FileDescriptor.socketPair()
        defer { far.closeQuietly() }
        let hello = Array(Handshake(role: .client, service: .qtfs, capabilities: 0, key: nil).clientOpening.readableBytesView)
        let sent = ConditionLock(0)
        try OSThread.start(name: "dripper") {
            for byte in hello {
                var byte = byte
                guard Glibc.write(far.rawValue, &byte, 1) == 1 else { return }
                sent.withLock { $0 += 1 }
                usleep(200_000)
            }
        }
        #expect(throws: ConnectionError.self) { _ = try FramedSocket.open(near, role: .server, key: nil, timeoutSeconds: 1) }
        // Ended by its deadline, not by the hello's end (which takes the dripper ~19 s).
        #expect(sent.withLock { $0 } < hello.count)
        near.closeQuietly()
    }

    /// A peer that stops reading: a send that can move nothing fails after the send timeout instead of
    /// blocking the sender (and, through the write lock, every other sender) for good.
    @Test func aSendToAPeerThatStoppedReadingFailsAfterTheSendTimeout() throws {
        let (near, far) = try FileDescriptor.socketPair()
        defer { far.closeQuietly() }
        try near.setSendTimeout(seconds: 1)
        let socket = FramedSocket(fd: near, leftover: ByteBuffer())
        let outcome = ConditionLock<Errno?>(nil)
        try OSThread.start(name: "sender") {
            let payload = ByteBuffer(repeating: 0, count: 60_000)
            while true {
                do throws(SystemError) {
                    try socket.send(Frame(type: .ping, stream: 0, payload: payload))
                } catch {
                    outcome.withLock { $0 = error.errno }
                    outcome.broadcast()
                    return
                }
            }
        }
        let errno = outcome.wait(timeout: .seconds(20)) { $0 }
        #expect(errno == .resourceTemporarilyUnavailable)
    }
}

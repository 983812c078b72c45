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

@Suite struct FramedSocketFrameTimeout {
    /// Reads frames from `near` on a thread; reports each outcome ("frame N bytes" or the error).
    private func reader(_ socket: FramedSocket) throws -> ConditionLock<[String]> {
        let outcomes = ConditionLock<[String]>([])
        try OSThread.start(name: "reader") {
            while true {
                do throws(ConnectionError) {
                    guard let frame = try socket.readFrame() else { return }
                    outcomes.withLock { $0.append("frame \(frame.payload.readableBytes) bytes") }
                    outcomes.broadcast()
                } catch {
                    outcomes.withLock { $0.append("\(error)") }
                    outcomes.broadcast()
                    return
                }
            }
        }
        return outcomes
    }

    private func encoded(_ count: Int) -> [UInt8] {
        var buffer = ByteBuffer()
        Frame(type: .ping, stream: 0, payload: ByteBuffer(repeating: 7, count: count)).encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// A peer that stops inside a frame (in its header, or its payload) loses its connection after the
    /// frame timeout; one that is idle between frames, for longer than that, does not.
    @Test(arguments: [5, Frame.headerSize + 10])
    func aFrameBegunMustBeFinishedInTimeButIdleIsFine(_ sentOfTheNext: Int) throws {
        let (near, far) = try FileDescriptor.socketPair()
        defer { far.closeQuietly() }
        let socket = FramedSocket(fd: near, leftover: ByteBuffer(), frameTimeoutSeconds: 1)
        let outcomes = try reader(socket)
        usleep(1_500_000)  // idle, longer than the timeout
        let whole = encoded(100)
        #expect(whole.withUnsafeBytes { Glibc.write(far.rawValue, $0.baseAddress, $0.count) } == whole.count)
        #expect(outcomes.wait(timeout: .seconds(10)) { $0.count >= 1 ? $0 : nil } == ["frame 100 bytes"])
        let part = Array(encoded(100000).prefix(sentOfTheNext))
        #expect(part.withUnsafeBytes { Glibc.write(far.rawValue, $0.baseAddress, $0.count) } == part.count)
        let ended = outcomes.wait(timeout: .seconds(10)) { $0.count >= 2 ? $0 : nil }
        #expect(ended?.last == "the peer sent nothing for 1 s inside a frame")
        socket.shutdown()
    }
}

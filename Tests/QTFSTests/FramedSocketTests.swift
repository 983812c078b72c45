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

// These wait for seconds: on threads of their own (OSThread.run), not on the cooperative pool that other
// tests' tasks need (an engine's serving task starved behind them on two cores).

@Suite struct FramedSocketBounds {
    /// The handshake's time limit is for all of it: a peer that sends a byte now and then (each read
    /// returning in time) used to hold the thread until it chose to finish.
    @Test func aHandshakeDrippedByteByByteEndsAtItsDeadline() async throws {
        let hello = Array(Handshake(role: .client, service: .qtfs, capabilities: 0, key: nil).clientOpening.readableBytesView)
        let (failed, sent, dripperStopped) = try await OSThread.run(name: "handshake") { () throws -> (Bool, Int, Bool) in
            let (near, far) = try FileDescriptor.socketPair()
            // `far` is closed only once the dripper has stopped, or its number could go to another test's
            // socket and get the rest of the hello.
            let dripper = ConditionLock((sent: 0, stopped: false))
            try OSThread.start(name: "dripper") {
                defer {
                    dripper.withLock { $0.stopped = true }
                    dripper.broadcast()
                }
                for byte in hello {
                    var byte = byte
                    guard send(far.rawValue, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { return }
                    dripper.withLock { $0.sent += 1 }
                    usleep(200_000)
                }
            }
            let failed = (try? FramedSocket.open(near, role: .server, key: nil, timeoutSeconds: 1)) == nil
            let sent = dripper.withLock { $0.sent }
            near.closeQuietly()  // the dripper's next send fails
            let stopped = dripper.wait(timeout: .seconds(5)) { $0.stopped ? true : nil } == true
            far.closeQuietly()
            return (failed, sent, stopped)
        }
        #expect(failed)
        // Ended by its deadline, not by the hello's end (which takes the dripper ~10 s).
        #expect(sent < hello.count)
        #expect(dripperStopped)
    }

    /// A peer that stops reading: a send that can move nothing fails after the send timeout instead of
    /// blocking the sender (and, through the write lock, every other sender) for good.
    @Test func aSendToAPeerThatStoppedReadingFailsAfterTheSendTimeout() async throws {
        let errno = try await OSThread.run(name: "sender") { () throws -> Errno? in
            let (near, far) = try FileDescriptor.socketPair()
            defer { far.closeQuietly() }
            try near.setSendTimeout(seconds: 1)
            let socket = FramedSocket(fd: near, leftover: ByteBuffer())
            let payload = ByteBuffer(repeating: 0, count: 60_000)
            for _ in 0..<10_000 {
                do throws(SystemError) {
                    try socket.send(Frame(type: .ping, stream: 0, payload: payload))
                } catch {
                    return error.errno
                }
            }
            return nil
        }
        #expect(errno == .resourceTemporarilyUnavailable)
    }
}

@Suite struct FramedSocketFrameTimeout {
    private func encoded(_ count: Int) -> [UInt8] {
        var buffer = ByteBuffer()
        Frame(type: .ping, stream: 0, payload: ByteBuffer(repeating: 7, count: count)).encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// A peer that stops inside a frame (in its header, or its payload) loses its connection after the
    /// frame timeout; one that is idle between frames, for longer than that, does not.
    @Test(arguments: [5, Frame.headerSize + 10])
    func aFrameBegunMustBeFinishedInTimeButIdleIsFine(_ sentOfTheNext: Int) async throws {
        let whole = encoded(100)
        let part = Array(encoded(100000).prefix(sentOfTheNext))
        let outcomes = try await OSThread.run(name: "frames") { () throws -> [String] in
            let (near, far) = try FileDescriptor.socketPair()
            let socket = FramedSocket(fd: near, leftover: ByteBuffer(), frameTimeoutSeconds: 1)
            let writerDone = ConditionLock(false)
            defer {
                _ = writerDone.wait(timeout: .seconds(10)) { $0 ? true : nil }  // before `far` may be reused
                far.closeQuietly()
            }
            var outcomes: [String] = []
            try OSThread.start(name: "writer") {
                usleep(1_500_000)  // idle, longer than the timeout
                _ = whole.withUnsafeBytes { send(far.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                usleep(100_000)
                _ = part.withUnsafeBytes { send(far.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                writerDone.withLock { $0 = true }
                writerDone.broadcast()
            }
            for _ in 0..<2 {
                do throws(ConnectionError) {
                    guard let frame = try socket.readFrame() else { break }
                    outcomes.append("frame \(frame.payload.readableBytes) bytes")
                } catch {
                    outcomes.append("\(error)")
                }
            }
            return outcomes
        }
        #expect(outcomes == ["frame 100 bytes", "the peer sent nothing for 1 s inside a frame"])
    }
}

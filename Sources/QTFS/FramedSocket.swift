import DPUSystem
import DPUWire
import Glibc
import NIOCore
import Synchronization
import SystemPackage

/// A connected stream socket that speaks DPUWire frames with blocking calls: one thread reads, any thread
/// writes (whole frames, under a lock). qtfs is request/response work done by threads that block in
/// file system calls on both sides (FUSE workers, engine workers), so plain threads and blocking sockets
/// are the simplest fast design; an event loop would only add hops.
public final class FramedSocket: @unchecked Sendable {
    public let fd: SystemPackage.FileDescriptor
    private let writeLock = Mutex(())
    private let decoder: FrameDecoder
    // Read side: used by the single reader thread only.
    private let readAhead: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// A frame begun (header or payload) must be finished within this time: a peer that stops inside one
    /// would otherwise hold the reader, and all the connection holds, for good. Between frames a
    /// connection may be idle as long as it likes.
    private let frameTimeoutSeconds: Int
    private var frameTimeoutArmed = false

    static let readAheadSize = 256 << 10

    init(fd: SystemPackage.FileDescriptor, leftover: ByteBuffer, maximumPayload: Int = Frame.maximumPayload, frameTimeoutSeconds: Int = 30) {
        self.fd = fd
        self.frameTimeoutSeconds = frameTimeoutSeconds
        decoder = FrameDecoder(maximumPayload: maximumPayload)
        readAhead = .allocate(byteCount: max(FramedSocket.readAheadSize, leftover.readableBytes), alignment: 16)
        leftover.withUnsafeReadableBytes { raw in
            readAhead.copyMemory(from: raw)
            end = raw.count
        }
    }

    deinit {
        readAhead.deallocate()
        fd.closeQuietly()
    }

    /// Runs the opening handshake on a connected blocking socket and returns the framed connection. A
    /// peer that has not finished it within `timeoutSeconds` is dropped (the whole handshake: a peer
    /// sending a byte now and then does not extend it).
    public static func open(
        _ fd: SystemPackage.FileDescriptor, role: Hello.Role, key: PreSharedKey?, capabilities: UInt64 = 0, timeoutSeconds: Int = 10
    ) throws(ConnectionError) -> (FramedSocket, HandshakeResult) {
        var handshake = Handshake(role: role, service: .qtfs, capabilities: capabilities, key: key)
        let deadline = monotonicNanoseconds() + UInt64(timeoutSeconds) * 1_000_000_000
        do {
            if role == .client { try send(fd, handshake.clientOpening) }
            var input = ByteBuffer()
            while true {
                let progress: Handshake.Progress
                do { progress = try handshake.feed(&input) } catch { throw ConnectionError.wire(error) }
                switch progress {
                case .continue(let output):
                    try send(fd, output)
                case .finished(let output, let result):
                    try send(fd, output)
                    try fd.setReceiveTimeout(seconds: 0)
                    return (FramedSocket(fd: fd, leftover: input), result)
                case .rejected(let output, let error):
                    try? send(fd, output)
                    throw ConnectionError.wire(error)
                }
                let now = monotonicNanoseconds()
                guard now + 1_000_000 < deadline else { throw SystemError(.resourceTemporarilyUnavailable, "handshake") }
                try fd.setReceiveTimeout(milliseconds: Int((deadline - now) / 1_000_000))
                var chunk = [UInt8](repeating: 0, count: 4096)
                let count = try chunk.withUnsafeMutableBytes { (raw) throws(SystemError) -> Int in try fd.readOnce(into: raw) }
                guard count > 0 else { throw ConnectionError.closed("the peer closed the connection during the handshake") }
                input.writeBytes(chunk[..<count])
            }
        } catch let error as ConnectionError {
            throw error
        } catch let error as SystemError {
            if error.errno == .resourceTemporarilyUnavailable {
                throw .closed("the peer did not finish the handshake within \(timeoutSeconds) s")
            }
            throw .system(error)
        } catch {
            throw .closed("\(error)")
        }
    }

    private static func send(_ fd: SystemPackage.FileDescriptor, _ buffer: ByteBuffer) throws(SystemError) {
        guard buffer.readableBytes > 0 else { return }
        try buffer.withUnsafeReadableBytes { (raw) throws(SystemError) in try fd.sendAll([raw]) }
    }

    /// The next frame, or nil when the peer closed the connection. Throws on a malformed frame or a
    /// socket error. The payload gets a buffer of its own (large ones are received straight into it).
    public func readFrame() throws(ConnectionError) -> Frame? {
        do {
            guard try fill(Frame.headerSize) else { return nil }
            let header: FrameHeader
            do {
                header = try decoder.decodeHeader(UnsafeRawBufferPointer(rebasing: readAhead[start..<(start + Frame.headerSize)]))
            } catch { throw ConnectionError.wire(error) }
            start += Frame.headerSize
            var payload = ByteBuffer()
            payload.reserveCapacity(header.length)
            let buffered = min(end - start, header.length)
            payload.writeBytes(UnsafeRawBufferPointer(rebasing: readAhead[start..<(start + buffered)]))
            start += buffered
            var missing = header.length - buffered
            if missing > 0 { try armFrameTimeout() }
            while missing > 0 {
                let count = try payload.writeWithUnsafeMutableBytes(minimumWritableBytes: missing) { (raw) throws -> Int in
                    guard let count = try fd.readSome(into: UnsafeMutableRawBufferPointer(rebasing: raw.prefix(missing))) else {
                        throw SystemError(.resourceTemporarilyUnavailable, "read")
                    }
                    return count
                }
                guard count > 0 else { throw ConnectionError.closed("the peer closed the connection inside a frame") }
                missing -= count
            }
            disarmFrameTimeout()
            return Frame(type: header.type, flags: header.flags, stream: header.stream, payload: payload)
        } catch let error as ConnectionError {
            throw error
        } catch let error as SystemError {
            if error.errno == .resourceTemporarilyUnavailable {
                throw .closed("the peer sent nothing for \(frameTimeoutSeconds) s inside a frame")
            }
            throw .system(error)
        } catch {
            throw .closed("\(error)")
        }
    }

    /// Makes at least `count` bytes available at `start`; false at a clean end of stream.
    private func fill(_ count: Int) throws -> Bool {
        if end - start >= count { return true }
        if start > 0 {
            let pending = end - start
            if pending > 0 {
                readAhead.baseAddress!.copyMemory(from: readAhead.baseAddress! + start, byteCount: pending)
            }
            start = 0
            end = pending
        }
        while end < count {
            if end > 0 { try armFrameTimeout() }  // part of a frame is here: the rest is due
            guard let received = try fd.readSome(into: UnsafeMutableRawBufferPointer(rebasing: readAhead[end...])) else {
                throw SystemError(.resourceTemporarilyUnavailable, "read")
            }
            if received == 0 {
                if end == 0 { return false }
                throw ConnectionError.closed("the peer closed the connection inside a frame")
            }
            end += received
        }
        return true
    }

    private func armFrameTimeout() throws(SystemError) {
        guard !frameTimeoutArmed else { return }
        try fd.setReceiveTimeout(seconds: frameTimeoutSeconds)
        frameTimeoutArmed = true
    }

    private func disarmFrameTimeout() {
        guard frameTimeoutArmed else { return }
        try? fd.setReceiveTimeout(seconds: 0)
        frameTimeoutArmed = false
    }

    /// Writes `buffers` as one unit (they hold whole frames); concurrent senders never interleave.
    public func send(_ buffers: ByteBuffer...) throws(SystemError) {
        try writeLock.withLock { _ throws(SystemError) in
            try Self.withReadableBytes(buffers[...]) { (raws) throws(SystemError) in try fd.sendAll(raws) }
        }
    }

    private static func withReadableBytes(
        _ buffers: ArraySlice<ByteBuffer>, _ collected: [UnsafeRawBufferPointer] = [],
        _ body: ([UnsafeRawBufferPointer]) throws(SystemError) -> Void
    ) throws(SystemError) {
        guard let first = buffers.first else { return try body(collected) }
        try first.withUnsafeReadableBytes { (raw) throws(SystemError) in
            try withReadableBytes(buffers.dropFirst(), collected + [raw], body)
        }
    }

    /// Sends `header` and then `count` bytes of `file` from `offset` with sendfile(2), as one unit. If the
    /// file turns out shorter (truncated meanwhile), zeros make up the rest: the header promised `count`.
    /// (sendfile has no MSG_NOSIGNAL: for the engine, which ignores SIGPIPE.)
    public func send(_ header: ByteBuffer, file: SystemPackage.FileDescriptor, offset: Int64, count: Int) throws(SystemError) {
        try writeLock.withLock { _ throws(SystemError) in
            try header.withUnsafeReadableBytes { (raw) throws(SystemError) in try fd.sendAll([raw]) }
            var position = offset
            var remaining = count
            while remaining > 0 {
                let sent = try fd.sendFile(from: file, offset: &position, count: remaining)
                if sent == 0 { break }
                remaining -= sent
            }
            if remaining > 0 {
                let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: remaining, alignment: 1)
                defer { zeros.deallocate() }
                zeros.initializeMemory(as: UInt8.self, repeating: 0)
                try fd.sendAll([UnsafeRawBufferPointer(zeros)])
            }
        }
    }

    /// Sends `frame`.
    public func send(_ frame: Frame) throws(SystemError) {
        var buffer = ByteBuffer()
        frame.encode(into: &buffer)
        try send(buffer)
    }

    /// Sends nothing more: the peer reads the end of the stream after the last whole frame (one being
    /// written is finished first). Sends after it fail with EPIPE; receiving goes on.
    public func finishSending() {
        writeLock.withLock { _ in try? fd.shutdown(.write) }
    }

    /// Ends the connection in both directions: a reader blocked on it wakes up with end of stream.
    public func shutdown() {
        try? fd.shutdown(.both)
    }
}

/// Why a connection could not be opened or continued.
public enum ConnectionError: Error, CustomStringConvertible, Sendable {
    case wire(WireError)
    case system(SystemError)
    case closed(String)

    public var description: String {
        switch self {
        case .wire(let error): error.message
        case .system(let error): error.description
        case .closed(let reason): reason
        }
    }
}


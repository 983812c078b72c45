import DPUSystem
import DPUWire
import Glibc
import NIOCore
import SystemPackage

/// Opening the connection: connect and handshake, in as few round trips as the key allows (without a key
/// the EXEC request travels with the hello: one round trip to STARTED; with a key it follows our proof).
/// Both wait on the signalfd too, so a signal that would end a local program ends the client at once.
enum Connector {
    enum Connected {
        case connected(FileDescriptor)
        case signaled(Int32)
    }

    enum Opened {
        /// The bytes that arrived after the handshake (the start of the session), and the capabilities
        /// both sides have (`RexecCapability`).
        case opened(ByteBuffer, capabilities: UInt64)
        case signaled(Int32)
    }

    static func connect(_ endpoint: Endpoint, signals: SignalDescriptor, timeoutMilliseconds: Int32) throws(RexecError) -> Connected {
        let addresses: [SocketAddress]
        do {
            switch endpoint {
            case .unix(let path): addresses = [try SocketAddress(unixPath: path)]
            case .tcp(let host, let port):
                if let numeric = SocketAddress(numericHost: host, port: port) {
                    addresses = [numeric]
                } else {
                    addresses = try SocketAddress.resolveTCP(host: host, port: port)
                }
            case .vsock(let cid, let port): addresses = [SocketAddress(vsockCID: cid, port: port)]
            }
        } catch {
            throw RexecError(.connection, "cannot connect to \(endpoint): \(error)")
        }
        var lastError = "no address"
        for address in addresses {
            let fd: FileDescriptor
            do {
                fd = try FileDescriptor.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue), nonBlocking: true)
            } catch {
                throw RexecError(.connection, "cannot connect to \(endpoint): \(error)")
            }
            do {
                if try !fd.connect(address) {
                    switch try wait(fd, events: Int16(POLLOUT), signals: signals, timeoutMilliseconds: timeoutMilliseconds) {
                    case .ready: break
                    case .signaled(let signal):
                        fd.closeQuietly()
                        return .signaled(signal)
                    case .timedOut:
                        throw SystemError(.timedOut, "connect")
                    }
                    if let error = try fd.pendingError() { throw SystemError(error, "connect") }
                }
                if case .unix = endpoint { fd.enlargeSendBuffer() }
                if case .tcp = endpoint {
                    try fd.setSocketOption(level: Int32(IPPROTO_TCP), TCP_NODELAY, 1)
                    // A host that vanishes (cable, crash) is noticed within about a minute.
                    try fd.enableKeepAlive(idleSeconds: 30, intervalSeconds: 10, probes: 3)
                }
                return .connected(fd)
            } catch {
                fd.closeQuietly()
                lastError = "\((error as? SystemError)?.errno.description ?? "\(error)")"
            }
        }
        var hint = ""
        if case .unix = endpoint, lastError == Errno.noSuchFileOrDirectory.description || lastError == Errno.connectionRefused.description {
            hint = "; is rexec_server running there? (or set CMD_NET_ADDR=tcp://HOST:PORT)"
        }
        throw RexecError(.connection, "cannot connect to \(endpoint): \(lastError)\(hint)")
    }

    static func handshake(
        _ fd: FileDescriptor, endpoint: Endpoint, key: PreSharedKey?, exec: ByteBuffer, signals: SignalDescriptor
    ) throws(RexecError) -> Opened {
        var handshake = Handshake(
            role: .client, service: .rexec, capabilities: RexecCapability.supported, key: key, nonce: randomBytes(Hello.nonceSize))
        var output = handshake.clientOpening
        var execSent = false
        if key == nil {
            var exec = exec
            output.writeBuffer(&exec)
            execSent = true
        }
        var input = ByteBuffer()
        input.reserveCapacity(16 << 10)
        while true {
            while output.readableBytes > 0 {
                let sent = output.readableBytesView.withUnsafeBytes { raw in
                    Result { () throws(SystemError) -> Int? in try fd.writeSome(raw) }
                }
                switch sent {
                case .success(let count?): output.moveReaderIndex(forwardBy: count)
                case .success(nil):
                    switch try wait(fd, events: Int16(POLLOUT), signals: signals, timeoutMilliseconds: 30_000) {
                    case .ready: break
                    case .signaled(let signal): return .signaled(signal)
                    case .timedOut: throw RexecError(.connection, "\(endpoint) does not read what we send (timed out)")
                    }
                case .failure(let error):
                    throw RexecError(.connection, "lost the connection to \(endpoint) while opening it: \(error.errno)")
                }
            }
            switch try wait(fd, events: Int16(POLLIN), signals: signals, timeoutMilliseconds: 30_000) {
            case .ready: break
            case .signaled(let signal): return .signaled(signal)
            case .timedOut: throw RexecError(.connection, "\(endpoint) does not answer (timed out after 30 s)")
            }
            var endOfFile = false
            var readError: SystemError?
            input.writeWithUnsafeMutableBytes(minimumWritableBytes: 4096) { raw -> Int in
                do {
                    guard let count = try fd.readSome(into: raw) else { return 0 }
                    endOfFile = count == 0
                    return count
                } catch let error as SystemError {
                    readError = error
                    return 0
                } catch {
                    return 0
                }
            }
            if let readError {
                throw RexecError(.connection, "lost the connection to \(endpoint) while opening it: \(readError.errno)")
            }
            if endOfFile {
                throw RexecError(.connection, "\(endpoint) closed the connection during the handshake (is it a rexec server?)")
            }
            let progress: Handshake.Progress
            do { progress = try handshake.feed(&input) } catch {
                throw RexecError(error.code == .authenticationFailed ? .authentication : .protocolError, "\(endpoint): \(error.message)")
            }
            switch progress {
            case .continue(let send):
                var send = send
                output.writeBuffer(&send)
                if !execSent && output.readableBytes > 0 {
                    // Our proof is on its way: the request can follow it (the server reads it only after
                    // checking the proof).
                    var exec = exec
                    output.writeBuffer(&exec)
                    execSent = true
                }
            case .finished(let send, let result):
                var send = send
                output.writeBuffer(&send)
                if !execSent {
                    var exec = exec
                    output.writeBuffer(&exec)
                }
                while output.readableBytes > 0 {
                    guard let count = try? output.readableBytesView.withUnsafeBytes({ try fd.writeSome($0) }) else {
                        throw RexecError(.connection, "lost the connection to \(endpoint) while opening it")
                    }
                    output.moveReaderIndex(forwardBy: count)
                }
                return .opened(input, capabilities: result.capabilities)
            case .rejected(_, let error):
                throw RexecError(.authentication, "\(endpoint): \(error.message)")
            }
        }
    }

    enum WaitResult {
        case ready
        case signaled(Int32)
        case timedOut
    }

    /// Waits for `events` on `fd` or a signal that ends a process (others are left pending for later).
    static func wait(_ fd: FileDescriptor, events: Int16, signals: SignalDescriptor, timeoutMilliseconds: Int32) throws(RexecError) -> WaitResult {
        var set = [
            pollfd(fd: fd.rawValue, events: events, revents: 0),
            pollfd(fd: signals.fd.rawValue, events: Int16(POLLIN), revents: 0),
        ]
        let deadline = IOLoop.now() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            let now = IOLoop.now()
            guard now < deadline else { return .timedOut }
            let remaining = Int32((deadline - now) / 1_000_000) + 1
            do { _ = try DPUSystem.poll(&set, timeoutMilliseconds: remaining, retryOnInterrupt: true) } catch {
                throw RexecError(.local, "\(error)")
            }
            if set[1].revents != 0, let signal = pendingTerminatingSignal(signals) { return .signaled(signal) }
            if set[0].revents != 0 { return .ready }
        }
    }

    /// Reads pending signals; returns the first that would end a local program before it started.
    /// The others (WINCH, CONT, TSTP...) mean nothing before the program exists.
    private static func pendingTerminatingSignal(_ signals: SignalDescriptor) -> Int32? {
        let pending = (try? signals.readInfo()) ?? []
        return pending.first { RexecClient.terminating.contains($0.signal) }?.signal
    }
}

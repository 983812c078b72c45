import Crypto
import NIOCore

/// A pre-shared key: the same random bytes in a root-only file on both machines
/// (`dpuctl key generate` writes one).
public struct PreSharedKey: Sendable {
    /// Fewest key bytes accepted: below 128 bits a key is guessable.
    public static let minimumBytes = 16
    public static let generatedBytes = 32

    /// HMAC-SHA256 (RFC 2104) with this key, kept as the two hash states after the padded key: a proof is
    /// then a copy of each plus the message. Computed here rather than with swift-crypto's `HMAC<SHA256>`,
    /// whose generic path (key copies, `DataProtocol` regions, metadata built at run time) cost the rexec
    /// client ~100,000 instructions per connection for two proofs; the tests check both give the same MACs.
    private let inner: SHA256
    private let outer: SHA256

    public init(bytes: some Collection<UInt8>) throws(WireError) {
        guard bytes.count >= PreSharedKey.minimumBytes else {
            throw WireError(.malformed, "the key has \(bytes.count) bytes; at least \(PreSharedKey.minimumBytes) are needed")
        }
        // The key padded to the hash's block (a longer one hashed first), XORed with ipad and opad.
        var block = [UInt8](repeating: 0, count: PreSharedKey.blockBytes)
        if bytes.count > PreSharedKey.blockBytes {
            var hasher = SHA256()
            Array(bytes).withUnsafeBytes { hasher.update(bufferPointer: $0) }
            hasher.finalize().withUnsafeBytes { digest in
                for index in digest.indices { block[index] = digest[index] }
            }
        } else {
            for (index, byte) in bytes.enumerated() { block[index] = byte }
        }
        func state(_ pad: UInt8) -> SHA256 {
            var padded = block
            for index in padded.indices { padded[index] ^= pad }
            var hasher = SHA256()
            padded.withUnsafeBytes { hasher.update(bufferPointer: $0) }
            for index in padded.indices { padded[index] = 0 }
            return hasher
        }
        inner = state(0x36)
        outer = state(0x5c)
        for index in block.indices { block[index] = 0 }
    }

    /// SHA-256's block size.
    private static let blockBytes = 64

    /// Parses a key file's text: hexadecimal digits, surrounding white space ignored. (Plain byte work:
    /// the rexec client reads the key on every remote exec.)
    public init(fileText: String) throws(WireError) {
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var bytes: [UInt8] = []
        var high: UInt8?
        for byte in fileText.utf8 {
            if byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d { continue }
            guard let digit = value(byte) else {
                throw WireError(.malformed, "the key must be hexadecimal digits (as `dpuctl key generate` writes)")
            }
            if let first = high {
                bytes.append(first << 4 | digit)
                high = nil
            } else {
                high = digit
            }
        }
        guard high == nil else {
            throw WireError(.malformed, "the key must be hexadecimal digits (as `dpuctl key generate` writes)")
        }
        try self.init(bytes: bytes)
    }

    /// A fresh random key, as file text (hex and a newline).
    public static func generateFileText() -> String {
        let key = SymmetricKey(size: .init(bitCount: generatedBytes * 8))
        let hex = key.withUnsafeBytes { $0.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined() }
        return hex + "\n"
    }

    /// HMAC-SHA256(key, message): the inner hash of the message, then the outer hash of that.
    func mac(_ message: UnsafeRawBufferPointer...) -> [UInt8] {
        var hasher = inner
        for part in message { hasher.update(bufferPointer: part) }
        var outer = self.outer
        hasher.finalize().withUnsafeBytes { outer.update(bufferPointer: $0) }
        return outer.finalize().withUnsafeBytes { Array($0) }
    }

    func proof(label: String, transcript: [UInt8]) -> [UInt8] {
        var label = label
        return label.withUTF8 { label in
            transcript.withUnsafeBytes { transcript in mac(UnsafeRawBufferPointer(label), transcript) }
        }
    }

    func isValid(proof: [UInt8], label: String, transcript: [UInt8]) -> Bool {
        let expected = self.proof(label: label, transcript: transcript)
        guard proof.count == expected.count else { return false }
        // Constant time: every byte is compared whatever the first difference.
        var difference: UInt8 = 0
        for index in expected.indices { difference |= expected[index] ^ proof[index] }
        return difference == 0
    }
}

/// What a finished handshake established.
public struct HandshakeResult: Equatable, Sendable {
    public var version: UInt16
    /// Capabilities both sides have.
    public var capabilities: UInt64
    /// Whether the peer proved it holds the key.
    public var authenticated: Bool
}

/// The connection opening, as a state machine without I/O: feed it the bytes that arrive, send what it
/// returns, until it reports the result or throws.
///
/// ```
/// client                                 server
///   HELLO(nonce_c)            ─────────►
///                             ◄───────── HELLO(nonce_s) [+ AUTH_PROOF(server)]
///   [AUTH_PROOF(client)]      ─────────►
///                             ◄───────── [AUTH_RESULT]
/// ```
/// Proofs are HMAC-SHA256(key, label ‖ client hello ‖ server hello) with distinct labels per role, so a
/// proof is bound to this connection's two nonces and cannot be replayed or reflected. A side with a key
/// insists on a proof from the other; a side without one accepts only a peer that asks for none.
public struct Handshake: Sendable {
    public enum Progress: Sendable {
        /// Send these bytes (possibly none) and feed more input.
        case `continue`(send: ByteBuffer)
        /// Done: send these bytes (possibly none); the connection is open.
        case finished(send: ByteBuffer, HandshakeResult)
        /// The server refuses the client: send these bytes (they tell the client why), then close.
        case rejected(send: ByteBuffer, WireError)
    }

    private enum State: Sendable {
        case awaitingHello
        case awaitingProof(peer: Hello, transcript: [UInt8], version: UInt16)
        case awaitingResult(HandshakeResult)
        case done
    }

    static let serverLabel = "dpuctl v1 server proof"
    static let clientLabel = "dpuctl v1 client proof"

    public let role: Hello.Role
    public let service: Service
    private let key: PreSharedKey?
    private let ownHello: Hello
    private var state = State.awaitingHello
    private let frames = FrameDecoder(maximumPayload: 4096)

    /// - Parameters:
    ///   - key: our key; nil means we neither prove nor demand a proof.
    ///   - nonce: 32 random bytes (tests pass fixed ones).
    public init(
        role: Hello.Role, service: Service, capabilities: UInt64, key: PreSharedKey?,
        nonce: [UInt8]? = nil
    ) {
        self.role = role
        self.service = service
        self.key = key
        var generator = SystemRandomNumberGenerator()
        let nonce = nonce ?? (0..<Hello.nonceSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
        ownHello = Hello(
            role: role, service: service, auth: key == nil ? .none : .presharedKey,
            capabilities: capabilities, nonce: nonce)
    }

    /// The bytes a client sends first. (A server sends its hello after reading the client's.)
    public var clientOpening: ByteBuffer {
        precondition(role == .client)
        var buffer = ByteBuffer()
        ownHello.encode(into: &buffer)
        return buffer
    }

    /// Consumes what it can of `input`; bytes after the handshake stay in `input` for the caller.
    public mutating func feed(_ input: inout ByteBuffer) throws(WireError) -> Progress {
        var output = ByteBuffer()
        while true {
            switch state {
            case .awaitingHello:
                guard let peer = try Hello.decode(&input) else { return .continue(send: output) }
                try accept(peer)
                let version = try ownHello.negotiateVersion(with: peer)
                let transcript = role == .client ? ownHello.bytes + peer.bytes : peer.bytes + ownHello.bytes
                if role == .server { ownHello.encode(into: &output) }
                let capabilities = ownHello.capabilities & peer.capabilities
                switch (key, peer.auth) {
                case (nil, .none):
                    state = .done
                    return .finished(send: output, HandshakeResult(version: version, capabilities: capabilities, authenticated: false))
                case (nil, .presharedKey):
                    let error = WireError(.authenticationFailed, role == .client
                        ? "the server requires a key; give the same key file as the server's (--key)"
                        : "the client offers a key but this server has none configured")
                    if role == .client { throw error }
                    return reject(&output, error, tell: "this server has no key")
                case (.some, .none):
                    let error = WireError(.authenticationFailed, role == .client
                        ? "the server does not authenticate itself; refusing it because we have a key"
                        : "the client has no key; this server requires one")
                    if role == .client { throw error }
                    return reject(&output, error, tell: "this server requires a key")
                case (.some(let key), .presharedKey):
                    if role == .server {
                        proofFrame(key.proof(label: Handshake.serverLabel, transcript: transcript)).encode(into: &output)
                    }
                    state = .awaitingProof(peer: peer, transcript: transcript, version: version)
                }
            case .awaitingProof(let peer, let transcript, let version):
                guard let frame = try frames.decode(&input) else { return .continue(send: output) }
                guard frame.type == .authProof, frame.payload.readableBytes == SHA256.byteCount else {
                    throw WireError(.protocolViolation, "expected an authentication proof, got \(frame.type)")
                }
                let proof = Array(frame.payload.readableBytesView)
                let result = HandshakeResult(
                    version: version, capabilities: ownHello.capabilities & peer.capabilities, authenticated: true)
                let key = self.key!
                if role == .client {
                    guard key.isValid(proof: proof, label: Handshake.serverLabel, transcript: transcript) else {
                        throw WireError(.authenticationFailed, "the server's key differs from ours; copy the same key file to both machines")
                    }
                    proofFrame(key.proof(label: Handshake.clientLabel, transcript: transcript)).encode(into: &output)
                    state = .awaitingResult(result)
                } else {
                    guard key.isValid(proof: proof, label: Handshake.clientLabel, transcript: transcript) else {
                        return reject(&output, WireError(.authenticationFailed, "the client's key differs from ours"), tell: "the keys differ")
                    }
                    Handshake.resultFrame(accepted: true, "").encode(into: &output)
                    state = .done
                    return .finished(send: output, result)
                }
            case .awaitingResult(let result):
                guard let frame = try frames.decode(&input) else { return .continue(send: output) }
                guard frame.type == .authResult, frame.payload.readableBytes >= 1 else {
                    throw WireError(.protocolViolation, "expected the server's authentication result, got \(frame.type)")
                }
                var payload = frame.payload
                let verdict: UInt8 = try payload.readWireInteger("AUTH_RESULT verdict")
                guard verdict == 0 else {
                    let reason = String(decoding: payload.readableBytesView.prefix(1024), as: UTF8.self)
                    throw WireError(.authenticationFailed, "the server refused our key: \(reason)")
                }
                state = .done
                return .finished(send: output, result)
            case .done:
                throw WireError(.protocolViolation, "handshake fed after it finished")
            }
        }
    }

    /// Server side: say why, and stop.
    private mutating func reject(_ output: inout ByteBuffer, _ error: WireError, tell reason: String) -> Progress {
        Handshake.resultFrame(accepted: false, reason).encode(into: &output)
        state = .done
        return .rejected(send: output, error)
    }

    private func accept(_ peer: Hello) throws(WireError) {
        guard peer.role != role else {
            throw WireError(.protocolViolation, "the peer also claims to be the \(role == .client ? "client" : "server")")
        }
        guard peer.service == service else {
            throw WireError(.wrongService, "the peer speaks \(peer.service), not \(service); check the address and port")
        }
    }

    private func proofFrame(_ proof: [UInt8]) -> Frame {
        Frame(type: .authProof, payload: ByteBuffer(bytes: proof))
    }

    static func resultFrame(accepted: Bool, _ reason: String) -> Frame {
        var payload = ByteBuffer()
        payload.writeInteger(accepted ? UInt8(0) : UInt8(1))
        payload.writeString(reason)
        return Frame(type: .authResult, payload: payload)
    }
}

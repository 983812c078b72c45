import Crypto
import NIOCore
import Testing

@testable import DPUWire

/// Runs a client and a server handshake against each other in memory, optionally delivering bytes one at
/// a time, and returns both results or the first error.
func runHandshake(
    clientKey: PreSharedKey?, serverKey: PreSharedKey?, clientService: Service = .rexec,
    serverService: Service = .rexec, byteByByte: Bool = false
) throws -> (client: HandshakeResult, server: HandshakeResult) {
    var client = Handshake(role: .client, service: clientService, capabilities: 0b1011, key: clientKey)
    var server = Handshake(role: .server, service: serverService, capabilities: 0b0110, key: serverKey)
    var toServer = client.clientOpening
    var toClient = ByteBuffer()
    var clientResult: HandshakeResult?
    var serverResult: HandshakeResult?
    var serverInput = ByteBuffer()
    var clientInput = ByteBuffer()

    func deliver(_ source: inout ByteBuffer, into target: inout ByteBuffer) {
        if byteByByte {
            if let byte = source.readInteger(as: UInt8.self) { target.writeInteger(byte) }
        } else {
            target.writeBuffer(&source)
        }
    }

    for _ in 0..<10_000 {
        if serverResult == nil, toServer.readableBytes > 0 {
            deliver(&toServer, into: &serverInput)
            switch try server.feed(&serverInput) {
            case .continue(var out): toClient.writeBuffer(&out)
            case .finished(var out, let result):
                toClient.writeBuffer(&out)
                serverResult = result
            case .rejected(var out, let error):
                // Deliver the server's explanation to the client first: its error is the one a user sees.
                clientInput.writeBuffer(&out)
                _ = try client.feed(&clientInput)
                throw error
            }
        }
        if clientResult == nil, toClient.readableBytes > 0 {
            deliver(&toClient, into: &clientInput)
            switch try client.feed(&clientInput) {
            case .continue(var out): toServer.writeBuffer(&out)
            case .finished(var out, let result):
                toServer.writeBuffer(&out)
                clientResult = result
            case .rejected: Issue.record("a client never rejects")
            }
        }
        if let clientResult, let serverResult { return (clientResult, serverResult) }
        if toServer.readableBytes == 0 && toClient.readableBytes == 0 && (clientResult == nil || serverResult == nil) {
            // A server that finished without auth has no more to say; a client may finish first.
            if let clientResult, serverResult == nil, serverKey == nil { return (clientResult, clientResult) }
        }
    }
    Issue.record("handshake did not finish")
    throw WireError(.protocolViolation, "stuck")
}

@Suite struct HandshakeBehaviour {
    let key = try! PreSharedKey(bytes: Array(repeating: 7, count: 32))
    let otherKey = try! PreSharedKey(bytes: Array(repeating: 8, count: 32))

    @Test func sameKeyAuthenticatesBothSides() throws {
        let (client, server) = try runHandshake(clientKey: key, serverKey: key)
        #expect(client.authenticated && server.authenticated)
        #expect(client.version == Hello.currentVersion)
        #expect(client.capabilities == 0b0010 && server.capabilities == 0b0010)
    }

    @Test func byteByByteDeliveryWorks() throws {
        let (client, server) = try runHandshake(clientKey: key, serverKey: key, byteByByte: true)
        #expect(client.authenticated && server.authenticated)
    }

    @Test func noKeysOnEitherSideIsAnUnauthenticatedConnection() throws {
        let (client, _) = try runHandshake(clientKey: nil, serverKey: nil)
        #expect(!client.authenticated)
    }

    @Test func aDifferentKeyIsRefusedByTheClientFirst() {
        // The server proves first, so a client with the wrong key finds out without revealing a proof.
        #expect { try runHandshake(clientKey: otherKey, serverKey: key) } throws: { error in
            let wire = error as? WireError
            return wire?.code == .authenticationFailed && wire!.message.contains("server's key differs")
        }
    }

    @Test func aClientWithoutKeyIsToldTheServerNeedsOne() {
        #expect { try runHandshake(clientKey: nil, serverKey: key) } throws: {
            ($0 as? WireError)?.message.contains("requires a key") == true
        }
    }

    @Test func theServerItselfRefusesAKeylessClientThatGoesOn() throws {
        // An honest keyless client gives up when it sees the server's hello; this one sends its request
        // right behind its own. The server must reject it, not just rely on the client to stop.
        let client = Handshake(role: .client, service: .rexec, capabilities: 0, key: nil)
        var server = Handshake(role: .server, service: .rexec, capabilities: 0, key: key)
        var input = client.clientOpening
        input.writeString("EXEC that must never run")
        guard case .rejected(let reply, let error) = try server.feed(&input) else {
            Issue.record("the server did not reject a client without a key")
            return
        }
        #expect(error.code == .authenticationFailed && error.message.contains("the client has no key"))
        #expect(reply.readableBytes > 0)  // the server's hello and its verdict, for the client to show
    }

    @Test func aClientWithKeyRefusesAServerThatDoesNotAuthenticate() {
        #expect { try runHandshake(clientKey: key, serverKey: nil) } throws: {
            ($0 as? WireError)?.code == .authenticationFailed
        }
    }

    @Test func theWrongServiceIsNamed() {
        #expect { try runHandshake(clientKey: nil, serverKey: nil, clientService: .qtfs, serverService: .rexec) } throws: {
            ($0 as? WireError)?.message.contains("speaks") == true
        }
    }

    @Test func aReplayedClientProofIsRefused() throws {
        // Record a successful client's proof, then present it to a new server connection (new nonce).
        var client = Handshake(role: .client, service: .rexec, capabilities: 0, key: key, nonce: Array(repeating: 1, count: 32))
        var server = Handshake(role: .server, service: .rexec, capabilities: 0, key: key)
        var input = client.clientOpening
        guard case .continue(var serverHello) = try server.feed(&input) else { Issue.record("server finished early"); return }
        _ = try #require(serverHello.readableBytes > 0 ? true : nil)
        guard case .continue(var clientProof) = try client.feed(&serverHello) else { Issue.record("client finished early"); return }
        var replayServer = Handshake(role: .server, service: .rexec, capabilities: 0, key: key)
        var replay = Handshake(role: .client, service: .rexec, capabilities: 0, key: key, nonce: Array(repeating: 1, count: 32)).clientOpening
        _ = try replayServer.feed(&replay)
        guard case .rejected(_, let error) = try replayServer.feed(&clientProof) else {
            Issue.record("the replayed proof was accepted")
            return
        }
        #expect(error.code == .authenticationFailed)
    }

    @Test func aPeerWithoutTheMagicIsRefusedAtOnce() {
        var server = Handshake(role: .server, service: .rexec, capabilities: 0, key: nil)
        var input = ByteBuffer(bytes: [0x5a, 0x5a, 0, 0])
        #expect { try server.feed(&input) } throws: { ($0 as? WireError)?.code == .badMagic }
    }

    @Test func versionRangesThatDoNotMeetAreNamed() {
        let ours = Hello(role: .client, service: .rexec, auth: .none, capabilities: 0, nonce: Array(repeating: 0, count: 32), maximumVersion: 1, minimumVersion: 1)
        let theirs = Hello(role: .server, service: .rexec, auth: .none, capabilities: 0, nonce: Array(repeating: 0, count: 32), maximumVersion: 5, minimumVersion: 3)
        #expect { try ours.negotiateVersion(with: theirs) } throws: { ($0 as? WireError)?.message.contains("1–1") == true }
    }

    @Test func helloDecodesTruncatedAndGarbageInputSafely() throws {
        let hello = Hello(role: .server, service: .qtfs, auth: .presharedKey, capabilities: 99, nonce: Array(0..<32))
        let bytes = hello.bytes
        for cut in 0..<bytes.count {
            var partial = ByteBuffer(bytes: bytes.prefix(cut))
            if cut >= 4 || cut == 0 { #expect(try Hello.decode(&partial) == nil) }
        }
        var whole = ByteBuffer(bytes: bytes)
        #expect(try Hello.decode(&whole) == hello)
        var badRole = bytes
        badRole[8] = 9
        var buffer = ByteBuffer(bytes: badRole)
        #expect(throws: WireError.self) { try Hello.decode(&buffer) }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            var junk = ByteBuffer(bytes: Hello.magic + (0..<48).map { _ in UInt8.random(in: 0...255, using: &generator) })
            _ = try? Hello.decode(&junk)
        }
    }

    @Test func keyFileTextIsHexAndLongEnough() throws {
        let text = PreSharedKey.generateFileText()
        #expect(text.count == 65 && text.hasSuffix("\n"))
        _ = try PreSharedKey(fileText: text)
        #expect(throws: WireError.self) { try PreSharedKey(fileText: "abcd") }
        #expect(throws: WireError.self) { try PreSharedKey(fileText: String(repeating: "zz", count: 32)) }
    }

    /// The proofs' HMAC-SHA256 is computed from precomputed pad states: it must be RFC 2104's, byte for
    /// byte, for every key length (shorter than the block, the block, longer and hashed first).
    @Test func proofsAreHMACSHA256() throws {
        func hex(_ bytes: [UInt8]) -> String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
        // RFC 4231 test case 2 ("Jefe": keys are zero-padded to the block, so 16 bytes say the same) and
        // test case 6 (131 bytes: hashed first).
        let jefe = try PreSharedKey(bytes: Array("Jefe".utf8) + [UInt8](repeating: 0, count: 12))
        #expect(hex(jefe.proof(label: "what do ya want for nothing?", transcript: []))
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        let long = try PreSharedKey(bytes: [UInt8](repeating: 0xaa, count: 131))
        #expect(hex(long.proof(label: "Test Using Larger Than Block-Size Key - Hash Key First", transcript: []))
            == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        var generator = SystemRandomNumberGenerator()
        for length in [16, 32, 63, 64, 65, 100, 200] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let key = try PreSharedKey(bytes: bytes)
            for messageLength in [0, 1, 52, 64, 104, 1000] {
                let label = "label \(messageLength)"
                let transcript = (0..<messageLength).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let expected = Array(HMAC<SHA256>.authenticationCode(for: Array(label.utf8) + transcript, using: SymmetricKey(data: bytes)))
                #expect(key.proof(label: label, transcript: transcript) == expected, "key \(length) bytes, message \(messageLength)")
            }
        }
    }
}

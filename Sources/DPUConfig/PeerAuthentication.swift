import DPUSystem
import DPUWire
import Glibc

/// Who must prove what, decided in one place for every daemon and client (DESIGN.md, Security):
/// TCP and vsock peers authenticate with the pre-shared key; unix-socket peers are checked with
/// SO_PEERCRED instead (the original's C clients cannot do the handshake, and the socket's mode already
/// limits who can connect).
public enum PeerAuthentication {
    /// The key the daemon's network listeners use. A listener reachable from another machine (TCP on a
    /// non-loopback address, vsock) without a key is refused unless `insecure`; a key file that exists is
    /// always used, and one with wrong permissions is an error, never silently ignored.
    public static func listenerKey(
        for endpoints: [Endpoint], keyPath: String, insecure: Bool
    ) throws(KeyFileError) -> PreSharedKey? {
        let network = endpoints.filter { if case .unix = $0 { false } else { true } }
        guard !network.isEmpty else { return nil }
        if access(keyPath, F_OK) == 0 { return try KeyFile.load(keyPath) }
        if insecure || network.allSatisfy(\.isLocalOnly) { return nil }
        let remote = network.first { !$0.isLocalOnly }!
        throw KeyFileError(
            path: keyPath,
            "does not exist, and \(remote) is reachable from other machines: create a key with `dpuctl key generate` and copy it to the peer, or run with --insecure")
    }

    /// The key a client presents to `endpoint`: none for unix sockets; for TCP/vsock the key file when it
    /// exists (a server that requires one says so clearly when it is missing).
    public static func clientKey(for endpoint: Endpoint, keyPath: String) throws(KeyFileError) -> PreSharedKey? {
        if case .unix = endpoint { return nil }
        return try KeyFile.loadIfPresent(keyPath)
    }
}

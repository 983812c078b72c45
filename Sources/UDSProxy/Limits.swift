/// Bounds and timings of udsproxyd: everything a peer or a local client could otherwise make grow.
enum Limits {
    /// Bytes read from a local socket or pipe at once, sent as one DATA frame.
    static let chunk = 256 << 10
    /// Send buffer of the unix sockets udsproxyd makes (the kernel doubles it for its bookkeeping).
    static let socketBuffer = 1 << 20
    /// Per-connection flow-control window: what one connection may have in flight and what the receiving
    /// side buffers at most for a reader that is slower than its writer.
    static let window = 2 << 20
    /// The link's send buffer: local sockets are not read while this much waits for the peer...
    static let linkHighWater = 4 << 20
    /// ...and reading resumes when it drained to this.
    static let linkLowWater = 1 << 20
    /// The link's send buffer beyond which a peer that does not read is cut off.
    static let linkOutputLimit = 64 << 20
    /// Connections and pipes relayed over one link at once.
    static let streamsPerLink = 8192
    /// Descriptors waiting for the data they travel with (SCM_MAX_FD).
    static let pendingDescriptors = 253
    /// Authenticated links accepted at once (a restarted peer briefly has two).
    static let acceptedLinks = 8
    /// Connections still in the handshake at once: the rest wait in the kernel's backlog...
    static let handshakes = 16
    /// ...and from one address: hosts without the key cannot take every place from the peer.
    static let handshakesPerSource = 4
    /// Control-socket clients at once.
    static let controlClients = 1024

    static let handshakeTimeout = Duration.seconds(5)
    /// A remote connect (the peer's unix server may be slow to accept) before the local client is told no.
    static let openTimeout = Duration.seconds(15)
    /// A control client must send its request within this.
    static let requestTimeout = Duration.seconds(5)
    /// The original's client connects to `<path>.proxy` within this (its own limit was 5 s as well).
    static let rendezvousTimeout = Duration.seconds(5)
    /// A link says PING this often when idle, and is dropped after `linkSilence` without any input.
    static let pingInterval = Duration.seconds(10)
    static let linkSilence = Duration.seconds(30)
    /// Reconnecting to the peer: the first retry, doubling up to the last.
    static let firstRetry = Duration.milliseconds(100)
    static let lastRetry = Duration.seconds(5)
    /// A unix server whose backlog is full refuses a non-blocking connect with EAGAIN; it is tried again
    /// after this, doubling up to 50 ms, until `openTimeout`.
    static let backlogRetry = Duration.milliseconds(1)
    /// How long a graceful stop waits for relayed data to be delivered.
    static let drainTimeout = Duration.seconds(5)
}

/// Per-stream flow control, credit based (the HTTP/2 model): a sender may have at most `window` bytes
/// of a stream in flight; the receiver returns credit with WINDOW_UPDATE as its consumer takes data.
/// A slow consumer therefore stops its own stream and nothing else, and no side buffers without bound.

/// The sending side of one stream.
public struct SendWindow: Sendable {
    public private(set) var available: Int

    public init(initial: Int = FlowControl.initialWindow) { available = initial }

    /// How many of `wanted` bytes may be sent now.
    public func allowance(_ wanted: Int) -> Int { min(max(available, 0), wanted) }

    /// Records `count` bytes sent.
    public mutating func consume(_ count: Int) {
        precondition(count <= available, "sent past the flow-control window")
        available -= count
    }

    /// Applies a WINDOW_UPDATE; an update that overflows the maximum window is a protocol error.
    public mutating func grant(_ increment: UInt32) throws(WireError) {
        let next = available + Int(increment)
        guard next <= FlowControl.maximumWindow else {
            throw WireError(.flowControl, "WINDOW_UPDATE raises the window to \(next) bytes, over \(FlowControl.maximumWindow)")
        }
        available = next
    }
}

/// The receiving side of one stream.
public struct ReceiveWindow: Sendable {
    /// The window the peer was given (what it may have in flight at most).
    public let size: Int
    /// The window this side wants the peer to work in, at most `size`. A receiver that can hold only so
    /// much without copying (its pipes) asks for less than the protocol's window without a word on the
    /// wire: the first `size - target` bytes the consumer takes are never credited back, so the peer's
    /// window shrinks to `target` for good. The peer's limit stays `size` and is checked against it.
    public let target: Int
    /// Bytes received and not yet credited back (including what is withheld).
    public private(set) var outstanding = 0
    /// Bytes the consumer has taken but we have not credited back yet.
    private var consumed = 0
    /// Credit kept back so far (up to `size - target`).
    private var withheld = 0

    public init(size: Int = FlowControl.initialWindow, target: Int? = nil) {
        self.size = size
        self.target = min(max(target ?? size, 1), size)
    }

    /// Records `count` bytes arriving; more than the window allows is the peer's protocol error.
    public mutating func receive(_ count: Int) throws(WireError) {
        guard outstanding + count <= size else {
            throw WireError(.flowControl, "the peer sent \(outstanding + count) bytes into a window of \(size)")
        }
        outstanding += count
    }

    /// Records `count` bytes handed to the consumer. Returns the credit to send back, if it is worth a
    /// WINDOW_UPDATE now (at least half the target window, so updates stay rare). This cannot stall a
    /// sender: one that waits for credit has filled the window, and once the withheld part and half the
    /// target are consumed, it gets credit.
    public mutating func release(_ count: Int) -> UInt32? {
        precondition(consumed + count <= outstanding - withheld, "released more than was received")
        let keep = min(size - target - withheld, count)
        withheld += keep
        consumed += count - keep
        guard consumed >= max(target / 2, 1) else { return nil }
        let credit = consumed
        outstanding -= credit
        consumed = 0
        return UInt32(credit)
    }
}

public enum FlowControl {
    /// The window each stream starts with: large enough to keep a loopback link busy.
    public static let initialWindow = 4 << 20
    /// The largest window a stream may have.
    public static let maximumWindow = 64 << 20
}

import DPUWire
import Synchronization

/// Listings of subdirectories fetched ahead of a walk (`find`, `ls -R`, `du`, `tar`). When a directory's
/// listing arrives, the listings of its subdirectories (up to `prefetch=` of them) are asked for, a few at
/// a time, so that the OPENDIRs that follow are answered here instead of each waiting for the host in
/// turn. What one OPENDIR brings is kept (the first 512 entries), each for the entry timeout and only
/// while nothing changed through this mount since it was asked for: the same view the entry and
/// attribute caches give.
final class ListingPrefetch: Sendable {
    struct Listing: Sendable {
        let entries: [QTFSDirectoryEntry]
        /// Whether that is all; a reader that goes on past them opens the directory on the host (and
        /// continues from the last entry's cookie).
        let end: Bool
        /// The connection it came from (its handle was released at once).
        let link: Link
        /// The change count when it was asked for.
        let version: UInt64
        /// When it was asked for (monotonic ns).
        let asked: UInt64
    }

    /// An OPENDIR waiting for a listing on its way: called once, on the thread that receives it, like
    /// every request's completion (fuse requests may be answered from any thread).
    private struct Waiter: @unchecked Sendable {
        let call: (Listing?) -> Void
    }

    private enum Slot {
        /// Waiting for its turn: the directory's path, and when it was queued.
        case queued([UInt8], since: UInt64)
        /// Asked for; an OPENDIR that arrived meanwhile waits for it.
        case pending([Waiter])
        case ready(Listing)
    }

    /// How many are asked for at once (the rest waits in line): enough to keep the host busy while the
    /// walker works through the previous ones, few enough not to delay other requests behind them.
    static let window = 4
    /// How many fetched listings may wait for their OPENDIR (at most 512 entries each).
    static let kept = 32

    private struct State {
        var slots: [NodeTable.Dentry: Slot] = [:]
        var order: [NodeTable.Dentry] = []
        var running = 0
        var ready = 0
    }

    private let state = Mutex(State())
    /// How many directories may be queued, asked for or kept (`prefetch=`).
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    typealias Start = [(dentry: NodeTable.Dentry, path: [UInt8])]

    /// Queues the listings of `directories` (dentry, path on the host) ahead of those queued before (a
    /// walk goes on in the directory it listed last); returns those to ask for now.
    func enqueue(_ directories: Start, now: UInt64, timeout: UInt64) -> Start {
        state.withLock { state in
            if state.slots.count + directories.count > capacity {
                // Make room: what was never used, or never asked for, and is too old to be.
                state.slots = state.slots.filter { _, slot in
                    switch slot {
                    case .ready(let listing): listing.asked + timeout > now
                    case .queued(_, let since): since + timeout > now
                    case .pending: true
                    }
                }
                state.ready = state.slots.values.count { if case .ready = $0 { true } else { false } }
                state.order.removeAll { state.slots[$0] == nil }
            }
            var added: [NodeTable.Dentry] = []
            for (dentry, path) in directories where state.slots[dentry] == nil && state.slots.count < capacity {
                state.slots[dentry] = .queued(path, since: now)
                added.append(dentry)
            }
            state.order.insert(contentsOf: added, at: 0)
            return ListingPrefetch.next(&state)
        }
    }

    /// The listing for `dentry` arrived (nil: failed); returns the next ones to ask for.
    func finish(_ dentry: NodeTable.Dentry, _ listing: Listing?) -> Start {
        let (waiters, next) = state.withLock { state -> ([Waiter], Start) in
            state.running -= 1
            var waiters: [Waiter] = []
            if case .pending(let waiting) = state.slots[dentry] {
                waiters = waiting
                // Handed to the OPENDIRs that waited, or kept for the one to come.
                if waiters.isEmpty, let listing {
                    state.slots[dentry] = .ready(listing)
                    state.ready += 1
                } else {
                    state.slots[dentry] = nil
                }
            }
            return (waiters, ListingPrefetch.next(&state))
        }
        for waiter in waiters { waiter.call(listing) }
        return next
    }

    /// Calls `body` with the listing fetched ahead for a directory known by `dentries` (its names), at
    /// once or when it arrives, or with nil if there is none (the caller checks that it is still good).
    /// Returns the next ones to ask for.
    func take(_ dentries: [NodeTable.Dentry], _ body: @escaping (Listing?) -> Void) -> Start {
        let (found, next) = state.withLock { state -> (Listing??, Start) in
            for dentry in dentries {
                switch state.slots[dentry] {
                case .ready(let listing):
                    state.slots[dentry] = nil
                    state.ready -= 1
                    return (.some(listing), ListingPrefetch.next(&state))
                case .pending(var waiters):
                    waiters.append(Waiter(call: body))
                    state.slots[dentry] = .pending(waiters)
                    return (.none, [])
                case .queued:
                    // Not asked for yet: the caller asks itself.
                    state.slots[dentry] = nil
                case nil:
                    continue
                }
            }
            return (.some(nil), [])
        }
        if case .some(let listing) = found { body(listing) }
        return next
    }

    private static func next(_ state: inout State) -> Start {
        var started: Start = []
        while state.running < window, state.running + state.ready < kept, !state.order.isEmpty {
            let dentry = state.order.removeFirst()
            guard case .queued(let path, _) = state.slots[dentry] else { continue }
            state.slots[dentry] = .pending([])
            state.running += 1
            started.append((dentry, path))
        }
        return started
    }
}

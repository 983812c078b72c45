import DPUWire
import Synchronization

/// Listings of subdirectories fetched ahead of a walk (`find`, `ls -R`, `du`, `tar`). When a directory's
/// listing arrives, the listings of its subdirectories (up to `prefetch=` of them) are asked for, a few at
/// a time, so that the OPENDIRs that follow are answered here instead of each waiting for the host in
/// turn. What one OPENDIR brings is kept (the first 512 entries), each for the entry timeout and only
/// while nothing changed through this mount since it was asked for: the same view the entry and
/// attribute caches give.
///
/// Walkers go through a directory's subdirectories in one of two orders: the listing's (`find`, `du`,
/// `tar`) or sorted by name (`ls -R`). They are asked for in the listing's order until a walker opens one
/// that is still waiting its turn behind siblings: if that one comes earlier in the other order, the
/// other order is taken, for those siblings (from that one on) and for the directories queued after.
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
        /// Waiting for its turn: the directory's path, when it was queued, and its place in the listing
        /// it came from.
        case queued([UInt8], since: UInt64, place: Int)
        /// Asked for; an OPENDIR that arrived meanwhile waits for it.
        case pending([Waiter])
        case ready(Listing)
    }

    /// How many are asked for at once (the rest waits in line): enough to keep the host busy while the
    /// walker works through the previous ones, few enough not to delay other requests behind them.
    static let window = 4
    /// How many fetched listings may wait for their OPENDIR (at most 512 entries each).
    static let kept = 32

    /// The order siblings are asked for in.
    enum Order: Sendable { case listing, name }

    private struct State {
        var slots: [NodeTable.Dentry: Slot] = [:]
        var order: [NodeTable.Dentry] = []
        var running = 0
        var ready = 0
        var walk = Order.listing
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
                    case .queued(_, let since, _): since + timeout > now
                    case .pending: true
                    }
                }
                state.ready = state.slots.values.count { if case .ready = $0 { true } else { false } }
                state.order.removeAll { state.slots[$0] == nil }
            }
            var added: [NodeTable.Dentry] = []
            for (place, (dentry, path)) in directories.enumerated() where state.slots[dentry] == nil && state.slots.count < capacity {
                state.slots[dentry] = .queued(path, since: now, place: place)
                added.append(dentry)
            }
            if state.walk == .name { added.sort { $0.name.lexicographicallyPrecedes($1.name) } }
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
                    // Not asked for yet: the caller asks itself, and the walk may be going in the other order.
                    ListingPrefetch.follow(dentry, &state)
                    state.slots[dentry] = nil
                    return (.some(nil), ListingPrefetch.next(&state))
                case nil:
                    continue
                }
            }
            return (.some(nil), [])
        }
        if case .some(let listing) = found { body(listing) }
        return next
    }

    /// A walker opened `wanted` while it waited behind queued siblings: if it comes earlier among them in
    /// the other order, the walk goes that way. Its siblings are then asked for in that order, those
    /// after it first, and so are the directories queued from now on.
    private static func follow(_ wanted: NodeTable.Dentry, _ state: inout State) {
        var siblings: [(dentry: NodeTable.Dentry, place: Int)] = []
        for dentry in state.order where dentry.parent == wanted.parent {
            if case .queued(_, _, let place) = state.slots[dentry] { siblings.append((dentry, place)) }
        }
        guard let index = siblings.firstIndex(where: { $0.dentry == wanted }), index > 0 else { return }
        let place = siblings[index].place
        let byName = siblings.count { $0.dentry.name.lexicographicallyPrecedes(wanted.name) }
        let byPlace = siblings.count { $0.place < place }
        let walk: Order
        switch state.walk {
        case .listing: walk = byName < byPlace ? .name : .listing
        case .name: walk = byPlace < byName ? .listing : .name
        }
        state.walk = walk
        let after: ((dentry: NodeTable.Dentry, place: Int)) -> Bool = switch walk {
        case .name: { wanted.name.lexicographicallyPrecedes($0.dentry.name) }
        case .listing: { $0.place > place }
        }
        let precedes: ((dentry: NodeTable.Dentry, place: Int), (dentry: NodeTable.Dentry, place: Int)) -> Bool = switch walk {
        case .name: { $0.dentry.name.lexicographicallyPrecedes($1.dentry.name) }
        case .listing: { $0.place < $1.place }
        }
        siblings.remove(at: index)
        let (later, earlier) = (siblings.filter(after), siblings.filter { !after($0) })
        let reordered = (later.sorted(by: precedes) + earlier.sorted(by: precedes)).map(\.dentry)
        state.order.removeAll { $0.parent == wanted.parent }
        state.order.insert(contentsOf: reordered, at: 0)
    }

    private static func next(_ state: inout State) -> Start {
        var started: Start = []
        while state.running < window, state.running + state.ready < kept, !state.order.isEmpty {
            let dentry = state.order.removeFirst()
            guard case .queued(let path, _, _) = state.slots[dentry] else { continue }
            state.slots[dentry] = .pending([])
            state.running += 1
            started.append((dentry, path))
        }
        return started
    }
}

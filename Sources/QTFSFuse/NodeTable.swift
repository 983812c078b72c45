import DPUWire
import Synchronization
import SystemPackage

/// The kernel's node ids and what they stand for.
///
/// A host file is identified by (st_dev, st_ino): hard links share one node, as on a local file system.
/// Each node remembers the names it was found under (parent node + name); its path beneath the export is
/// rebuilt from them when a request needs it, so that renaming a directory moves everything below it at
/// once. Node ids are never reused (generation 0 is enough): the kernel matches a unix socket bound on
/// the mount by its inode, and a stable id keeps such a socket reachable.
final class NodeTable: Sendable {
    static let rootID: UInt64 = 1

    enum Kind: Sendable, Equatable {
        /// A host file.
        case host
        /// A symbolic link made up by the client (proc mode: `self`, a local pid); the target depends on
        /// who asks.
        case synthetic(Synthetic)
    }

    enum Synthetic: Sendable, Equatable {
        case procSelf
        case procThreadSelf
        case localProcess(Int32)
        case fixedLink([UInt8])
        /// The hidden directory where socket nodes are bound (`SocketNodes`).
        case socketDirectory
        /// The hidden directory where the local terminals of `-o ptybridge` are (`TerminalBridges`).
        case terminalDirectory

        var isDirectory: Bool { self == .socketDirectory || self == .terminalDirectory }
    }

    /// A name in a directory. Hashed with a 64-bit FNV-1a of the name computed once: these keys are
    /// hashed for every directory entry listed and every lookup.
    struct Dentry: Hashable, Sendable {
        let parent: UInt64
        let name: [UInt8]
        private let nameHash: UInt64

        init(parent: UInt64, name: [UInt8]) {
            self.parent = parent
            self.name = name
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in name { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
            nameHash = hash
        }

        static func == (a: Dentry, b: Dentry) -> Bool { a.parent == b.parent && a.nameHash == b.nameHash && a.name == b.name }

        func hash(into hasher: inout Hasher) {
            hasher.combine(parent)
            hasher.combine(nameHash)
        }
    }

    struct Key: Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
        /// Non-zero for a host directory shown under another name (proc mode: the local pid of a rexec
        /// client standing in for the host's process): a node of its own, apart from the directory's
        /// node under its own name (the kernel allows a directory one name only).
        var alias: Int32 = 0
    }

    struct Node: Sendable {
        var kind: Kind
        var key: Key?
        var type: UInt32
        var names: [Dentry]
        var lookups: UInt64
        /// The name on the host when it is not the name the kernel knows (an alias).
        var hostName: [UInt8]? = nil
        /// The latest attributes, while they may answer GETATTRs here (until, monotonic ns).
        var recent: (attributes: QTFSAttributes, until: UInt64)? = nil
        /// Until when the file is known to have no `security.capability` (monotonic ns): the kernel asks
        /// before every write(2) on a FUSE file system, and writes do not change it.
        var noCapabilityUntil: UInt64 = 0
    }

    /// Attributes to keep with the nodes they describe, for GETATTRs within the attribute timeout: until
    /// when, and whether they still hold (evaluated under the table's lock, so that a change made here
    /// and then `forgetAttributes` cannot be overtaken by a reply that was asked for before it).
    struct Keep {
        let until: UInt64
        let current: () -> Bool
    }

    private struct State {
        var nodes: [UInt64: Node] = [NodeTable.rootID: Node(kind: .host, key: nil, type: 0o040000, names: [], lookups: 1)]
        var byKey: [Key: UInt64] = [:]
        var byDentry: [Dentry: UInt64] = [:]
        var next: UInt64 = 2
    }

    private let state = Mutex(State())

    /// The path beneath the export of `node` (via its first name whose ancestors are all known), or nil
    /// if the node is unknown.
    func path(_ node: UInt64) -> [UInt8]? {
        state.withLock { state in NodeTable.path(node, in: state) }
    }

    /// The path of `name` in directory `parent`.
    func path(_ parent: UInt64, _ name: [UInt8]) -> [UInt8]? {
        guard let base = path(parent) else { return nil }
        return base.isEmpty ? name : base + [UInt8(ascii: "/")] + name
    }

    private static func path(_ node: UInt64, in state: State) -> [UInt8]? {
        var components: [[UInt8]] = []
        var current = node
        var depth = 0
        while current != rootID {
            guard let entry = state.nodes[current], let name = entry.names.first, depth < 4096 else { return nil }
            components.append(entry.hostName ?? name.name)
            current = name.parent
            depth += 1
        }
        return Array(components.reversed().joined(separator: [UInt8(ascii: "/")]))
    }

    func node(_ id: UInt64) -> Node? { state.withLock { $0.nodes[id] } }

    /// Records that the kernel now holds one more reference to the host file `attributes` found as
    /// `name` in `parent`, and returns its node id. `alias`: the file is the host's `hostName`, shown as
    /// `name` for the local process `pid`. `keep`: the attributes answer GETATTRs until then.
    func remember(
        _ parent: UInt64, _ name: [UInt8], _ attributes: QTFSAttributes, count: UInt64 = 1,
        alias: (pid: Int32, hostName: [UInt8])? = nil, keep: Keep? = nil
    ) -> UInt64 {
        let key = Key(device: attributes.device, inode: attributes.inode, alias: alias?.pid ?? 0)
        let dentry = Dentry(parent: parent, name: name)
        return state.withLock { state in
            let keep = keep.flatMap { $0.current() ? $0.until : nil }
            return NodeTable.remember(dentry, key, attributes, count, alias?.hostName, keep, in: &state)
        }
    }

    /// `remember` for the entries of a listing that go to the kernel together (READDIRPLUS), under one
    /// lock; returns their node ids in order, 0 for those that are not nodes (`.`, `..`, entries without
    /// attributes). `keep` is for the attributes of files on real file systems (not `volatile`).
    func remember(
        listed entries: ArraySlice<QTFSDirectoryEntry>, in directory: UInt64, keep: Keep?
    ) -> [UInt64] {
        state.withLock { state in
            let keep = keep.flatMap { $0.current() ? $0.until : nil }
            return entries.map { entry in
                guard let a = entry.attributes, entry.name != [46], entry.name != [46, 46] else { return 0 }
                let key = Key(device: a.device, inode: a.inode)
                let kept = a.flags.contains(.volatile) ? nil : keep
                return NodeTable.remember(Dentry(parent: directory, name: entry.name), key, a, 1, nil, kept, in: &state)
            }
        }
    }

    /// Looks each key up once where it can: this runs for every entry of every listing.
    private static func remember(
        _ dentry: Dentry, _ key: Key, _ attributes: QTFSAttributes, _ count: UInt64, _ hostName: [UInt8]?,
        _ keep: UInt64?, in state: inout State
    ) -> UInt64 {
        let type = attributes.mode & 0o170000
        let recent = keep.map { (attributes, $0) }
        // The node of this file, made now (id 0 is no node) if there was none.
        let candidate = state.next
        var created = false
        let id = { (slot: inout UInt64) -> UInt64 in
            if slot == 0 {
                slot = candidate
                created = true
            }
            return slot
        }(&state.byKey[key, default: 0])
        func makeNode(_ id: UInt64) {
            state.next += 1
            state.nodes[id] = Node(kind: .host, key: key, type: type, names: [dentry], lookups: count, hostName: hostName)
            if let recent { state.nodes[id]!.keep(recent) }
        }
        if created {
            makeNode(id)
        } else if state.nodes[id]?.type != type {
            // Another kind of file under a reused inode number: a node of its own.
            let fresh = state.next
            makeNode(fresh)
            state.byKey[key] = fresh
            if let previous = state.byDentry.updateValue(fresh, forKey: dentry), previous != fresh {
                NodeTable.unhook(dentry, from: previous, keepingIndex: true, in: &state)
            }
            return fresh
        }
        // The name now means this file: unhook whatever node had it before.
        let previous = state.byDentry.updateValue(id, forKey: dentry)
        if let previous, previous != id { NodeTable.unhook(dentry, from: previous, keepingIndex: true, in: &state) }
        if !created {
            NodeTable.update(&state.nodes[id]!, dentry, count, recent, known: previous == id, index: &state.byDentry)
        }
        return id
    }

    private static func update(
        _ node: inout Node, _ dentry: Dentry, _ count: UInt64, _ recent: (QTFSAttributes, UInt64)?, known: Bool,
        index byDentry: inout [Dentry: UInt64]
    ) {
        node.lookups += count
        if let recent { node.keep(recent) }
        guard !known, !node.names.contains(dentry) else { return }
        // Directories have one name; a file reached by another name is a hard link.
        if node.type == 0o040000 {
            for old in node.names where old != dentry { byDentry[old] = nil }
            node.names = [dentry]
        } else {
            node.names.append(dentry)
        }
    }

    /// The attributes kept for `node` and until when, if still good at `now`.
    func recentAttributes(of node: UInt64, now: UInt64) -> (attributes: QTFSAttributes, until: UInt64)? {
        state.withLock { state in
            guard let recent = state.nodes[node]?.recent else { return nil }
            guard now < recent.until else {
                state.nodes[node]?.recent = nil
                return nil
            }
            return recent
        }
    }

    /// Keeps `attributes` (just asked for) as `node`'s latest.
    func keep(_ attributes: QTFSAttributes, of node: UInt64, _ keep: Keep) {
        state.withLock { state in
            guard keep.current() else { return }
            state.nodes[node]?.keep((attributes, keep.until))
        }
    }

    /// Whether `node` is known to have no `security.capability` at `now`.
    func hasNoCapability(_ node: UInt64, now: UInt64) -> Bool {
        state.withLock { now < $0.nodes[node]?.noCapabilityUntil ?? 0 }
    }

    /// The host said `node` has no `security.capability` (asked for within `keep`).
    func noteNoCapability(_ node: UInt64, _ keep: Keep) {
        state.withLock { state in
            guard keep.current() else { return }
            state.nodes[node]?.noCapabilityUntil = keep.until
        }
    }

    /// `node` changed here: its kept attributes no longer hold, nor (unless `keepingCapability`: a write)
    /// what is known of its extended attributes. Returns its names.
    @discardableResult
    func forgetAttributes(of node: UInt64, keepingCapability: Bool = false) -> [Dentry] {
        state.withLock { state in
            state.nodes[node]?.recent = nil
            if !keepingCapability { state.nodes[node]?.noCapabilityUntil = 0 }
            return state.nodes[node]?.names ?? []
        }
    }

    /// A client-made node (proc mode) for `name` in `parent`; the same one for the same meaning.
    func rememberSynthetic(_ parent: UInt64, _ name: [UInt8], _ synthetic: Synthetic) -> UInt64 {
        let dentry = Dentry(parent: parent, name: name)
        return state.withLock { state in
            if let id = state.byDentry[dentry], state.nodes[id]?.kind == .synthetic(synthetic) {
                state.nodes[id]!.lookups += 1
                return id
            }
            if let previous = state.byDentry[dentry] { NodeTable.unhook(dentry, from: previous, in: &state) }
            let id = state.next
            state.next += 1
            let type: UInt32 = synthetic.isDirectory ? 0o040000 : 0o120000
            state.nodes[id] = Node(kind: .synthetic(synthetic), key: nil, type: type, names: [dentry], lookups: 1)
            state.byDentry[dentry] = id
            return id
        }
    }

    /// The kernel took one more reference to `node` under a name this table does not record (a socket
    /// bound in the hidden directory).
    func addReference(_ node: UInt64) {
        state.withLock { state in state.nodes[node]?.lookups += 1 }
    }

    /// The node `name` in `parent` stands for now, if any.
    func child(_ parent: UInt64, _ name: [UInt8]) -> UInt64? {
        state.withLock { $0.byDentry[Dentry(parent: parent, name: name)] }
    }

    /// The kernel dropped `count` references to `node`.
    func forget(_ node: UInt64, _ count: UInt64) {
        guard node != NodeTable.rootID else { return }
        state.withLock { state in
            guard let lookups = state.nodes[node]?.lookups else { return }
            if lookups > count {
                state.nodes[node]!.lookups = lookups - count
                return
            }
            guard let entry = state.nodes.removeValue(forKey: node) else { return }
            for name in entry.names where state.byDentry[name] == node { state.byDentry[name] = nil }
            if let key = entry.key, state.byKey[key] == node { state.byKey[key] = nil }
        }
    }

    /// `name` in `parent` is gone (unlink, rmdir).
    func removed(_ parent: UInt64, _ name: [UInt8]) {
        let dentry = Dentry(parent: parent, name: name)
        state.withLock { state in
            if let id = state.byDentry[dentry] { NodeTable.unhook(dentry, from: id, in: &state) }
        }
    }

    /// `name` in `parent` was renamed to `newName` in `newParent` (`exchange`: the two swapped).
    func renamed(_ parent: UInt64, _ name: [UInt8], to newParent: UInt64, _ newName: [UInt8], exchange: Bool) {
        let from = Dentry(parent: parent, name: name)
        let to = Dentry(parent: newParent, name: newName)
        state.withLock { state in
            let moving = state.byDentry[from]
            let replaced = state.byDentry[to]
            if let moving { NodeTable.unhook(from, from: moving, in: &state) }
            if let replaced { NodeTable.unhook(to, from: replaced, in: &state) }
            if let moving { NodeTable.hook(to, to: moving, in: &state) }
            if exchange, let replaced { NodeTable.hook(from, to: replaced, in: &state) }
        }
    }

    /// `keepingIndex`: the caller has already pointed `dentry` at another node.
    private static func unhook(_ dentry: Dentry, from id: UInt64, keepingIndex: Bool = false, in state: inout State) {
        if !keepingIndex { state.byDentry[dentry] = nil }
        state.nodes[id]?.names.removeAll { $0 == dentry }
    }

    private static func hook(_ dentry: Dentry, to id: UInt64, in state: inout State) {
        state.byDentry[dentry] = id
        state.nodes[id]?.names.insert(dentry, at: 0)
    }

    var count: Int { state.withLock { $0.nodes.count } }
}

extension NodeTable.Node {
    /// Takes `recent` as the latest attributes; their "no extended attributes" flag says there is no
    /// `security.capability` for as long.
    mutating func keep(_ recent: (attributes: QTFSAttributes, until: UInt64)) {
        self.recent = recent
        if recent.attributes.flags.contains(.noExtendedAttributes) { noCapabilityUntil = max(noCapabilityUntil, recent.until) }
    }
}

// NIOCore has a FileDescriptor too; in this module the name means swift-system's.
typealias FileDescriptor = SystemPackage.FileDescriptor

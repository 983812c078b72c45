import DPUSystem
import Glibc
import Logging
import DPUWire
import NIOCore
import SystemPackage
import Synchronization
import Testing

@testable import QTFSFuse

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite struct MountOptionParsing {
    @Test func theGuidesProcMountParses() throws {
        var options = QTFSMountOptions(hostPath: "/proc", mountpoint: "/another_rootfs/proc")
        try options.apply("proc,ro,nosuid")
        #expect(options.proc && options.readOnly)
        #expect(options.fuseOptions.contains("subtype=qtfs") && options.fuseOptions.contains("nodev"))
        #expect(options.fuseOptions.contains("ro") && options.fuseOptions.contains("nosuid"))
        #expect(options.fuseOptions.contains("fsname=qtfs:/proc"))
    }

    @Test func engineAddressKeyAndTuningParse() throws {
        var options = QTFSMountOptions(hostPath: "/home/VMs", mountpoint: "/mnt")
        try options.apply("server=tcp://198.51.100.1:12345,key=/etc/dpuctl/key,connections=8,readahead=1024")
        try options.apply("timeout=5,entry_timeout=0.5,attr_timeout=2,localproc=/lp,localcomm=libvirtd:virsh,noxattr")
        #expect(options.endpoint == .tcp(host: "198.51.100.1", port: 12345))
        #expect(options.keyPath == "/etc/dpuctl/key" && options.connections == 8 && options.readAheadKB == 1024)
        #expect(options.patience == 5 && options.entryTimeout == 0.5 && options.attributeTimeout == 2)
        #expect(options.localProc == "/lp" && options.localCommands == ["libvirtd", "virsh"])
        #expect(!options.extendedAttributes)
        #expect(options.prefetch == 1024)
        try options.apply("prefetch=0")
        #expect(options.prefetch == 0)
    }

    @Test func aclsAndSecurityLabelsOnlyWhenAsked() throws {
        var options = QTFSMountOptions(hostPath: "/home/VMs", mountpoint: "/mnt")
        #expect(!options.carryACLs && !options.carrySecurityLabels)
        try options.apply("acl,seclabel")
        #expect(options.carryACLs && options.carrySecurityLabels)
        try options.apply("noacl,noseclabel")
        #expect(!options.carryACLs && !options.carrySecurityLabels)
    }

    @Test func devicesOnlyWhenAsked() throws {
        var options = QTFSMountOptions(hostPath: "/dev/vfio", mountpoint: "/mnt")
        #expect(options.fuseOptions.contains("nodev"))
        try options.apply("dev")
        #expect(!options.fuseOptions.contains("nodev"))
    }

    @Test func ptyBridgeOnlyWhenAsked() throws {
        var options = QTFSMountOptions(hostPath: "/dev/pts", mountpoint: "/another_rootfs/dev/pts")
        #expect(!options.ptyBridge)
        try options.apply("ptybridge")
        #expect(options.ptyBridge && options.fuseOptions.contains("nodev"))
        try options.apply("noptybridge")
        #expect(!options.ptyBridge)
    }

    @Test func fstabOnlyOptionsAreIgnored() throws {
        var options = QTFSMountOptions(hostPath: "/x", mountpoint: "/mnt")
        try options.apply("defaults,_netdev,noauto,x-systemd.automount,nofail")
        #expect(options.kernelOptions.isEmpty)
    }

    @Test(arguments: ["bogus", "server=", "server=ftp://x", "connections=0", "connections=x", "localproc=relative",
        "readahead=-1", "timeout=0", "udsproxy=relative", "prefetch=-1", "prefetch=x"])
    func badOptionsSayWhat(_ text: String) {
        var options = QTFSMountOptions(hostPath: "/x", mountpoint: "/mnt")
        #expect(throws: MountOptionError.self) { try options.apply(text) }
    }

    @Test func aCommaInTheHostPathCannotSplitTheFuseOptions() {
        let options = QTFSMountOptions(hostPath: "/a,allow_root", mountpoint: "/mnt")
        #expect(!options.fuseOptions.contains(",allow_root"))
    }
}

@Suite struct NodeIdentity {
    func attributes(inode: UInt64, directory: Bool = false) -> QTFSAttributes {
        QTFSAttributes(device: 1, inode: inode, mode: directory ? 0o040755 : 0o100644)
    }

    @Test func pathsFollowTheirParents() {
        let table = NodeTable()
        let a = table.remember(NodeTable.rootID, bytes("a"), attributes(inode: 10, directory: true))
        let b = table.remember(a, bytes("b"), attributes(inode: 11, directory: true))
        let c = table.remember(b, bytes("c"), attributes(inode: 12))
        #expect(table.path(c) == bytes("a/b/c"))
        table.renamed(NodeTable.rootID, bytes("a"), to: NodeTable.rootID, bytes("z"), exchange: false)
        #expect(table.path(c) == bytes("z/b/c"))
        #expect(table.path(NodeTable.rootID) == [])
    }

    @Test func hardLinksShareANodeAndSurviveOneUnlink() {
        let table = NodeTable()
        let first = table.remember(NodeTable.rootID, bytes("one"), attributes(inode: 20))
        let second = table.remember(NodeTable.rootID, bytes("two"), attributes(inode: 20))
        #expect(first == second)
        table.removed(NodeTable.rootID, bytes("one"))
        #expect(table.path(first) == bytes("two"))
    }

    @Test func aNameReusedForAnotherFileGetsAnotherNode() {
        let table = NodeTable()
        let old = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 30))
        let new = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 31))
        #expect(old != new)
        #expect(table.child(NodeTable.rootID, bytes("f")) == new)
    }

    @Test func forgottenNodesGoAndIdsAreNotReused() {
        let table = NodeTable()
        let node = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 40))
        _ = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 40))
        table.forget(node, 1)
        #expect(table.node(node) != nil)
        table.forget(node, 1)
        #expect(table.node(node) == nil)
        let again = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 40))
        #expect(again != node)
    }

    @Test func anExchangeSwapsTheNames() {
        let table = NodeTable()
        let x = table.remember(NodeTable.rootID, bytes("x"), attributes(inode: 50))
        let y = table.remember(NodeTable.rootID, bytes("y"), attributes(inode: 51))
        table.renamed(NodeTable.rootID, bytes("x"), to: NodeTable.rootID, bytes("y"), exchange: true)
        #expect(table.path(x) == bytes("y") && table.path(y) == bytes("x"))
    }

    /// READDIRPLUS: the nodes of a listing's entries in one go, the same ones `remember` gives one by one.
    @Test func aListingsEntriesBecomeNodesTogether() {
        let table = NodeTable()
        let single = table.remember(NodeTable.rootID, bytes("b"), attributes(inode: 61))
        let entries: [QTFSDirectoryEntry] = [
            QTFSDirectoryEntry(name: bytes("."), type: 4, inode: 1, cookie: 1, attributes: attributes(inode: 1, directory: true)),
            QTFSDirectoryEntry(name: bytes("a"), type: 8, inode: 60, cookie: 2, attributes: attributes(inode: 60)),
            QTFSDirectoryEntry(name: bytes("b"), type: 8, inode: 61, cookie: 3, attributes: attributes(inode: 61)),
            QTFSDirectoryEntry(name: bytes("c"), type: 8, inode: 62, cookie: 4),
        ]
        let ids = table.remember(listed: entries[...], in: NodeTable.rootID, keep: nil)
        #expect(ids.count == 4 && ids[0] == 0 && ids[3] == 0)
        #expect(ids[2] == single && ids[1] != single && ids[1] != 0)
        #expect(table.child(NodeTable.rootID, bytes("a")) == ids[1])
        // Two references to b now: one forget leaves it.
        table.forget(single, 1)
        #expect(table.path(single) == bytes("b"))
    }

    /// The kernel asks for security.capability before every write; a write does not change it, a
    /// change of extended attributes or of owner does.
    @Test func noCapabilityOutlivesWritesButNotOtherChanges() {
        let table = NodeTable()
        var bare = attributes(inode: 70)
        bare.flags.insert(.noExtendedAttributes)
        let keep = NodeTable.Keep(until: 100, current: { true })
        let node = table.remember(NodeTable.rootID, bytes("f"), bare, keep: keep)
        #expect(table.hasNoCapability(node, now: 50))
        #expect(table.recentAttributes(of: node, now: 50)?.attributes.inode == 70)
        #expect(!table.hasNoCapability(node, now: 100))
        table.forgetAttributes(of: node, keepingCapability: true)
        #expect(table.recentAttributes(of: node, now: 50) == nil && table.hasNoCapability(node, now: 50))
        table.forgetAttributes(of: node)
        #expect(!table.hasNoCapability(node, now: 50))
        // What the host says later counts, unless a change here came in between.
        table.noteNoCapability(node, keep)
        #expect(table.hasNoCapability(node, now: 50))
        table.forgetAttributes(of: node)
        table.noteNoCapability(node, NodeTable.Keep(until: 100, current: { false }))
        #expect(!table.hasNoCapability(node, now: 50))
        // Attributes that do not say "none" (a listing's) say nothing about it.
        table.noteNoCapability(node, keep)
        _ = table.remember(NodeTable.rootID, bytes("f"), attributes(inode: 70), keep: keep)
        #expect(table.hasNoCapability(node, now: 50))
    }
}

@Suite struct ProcNames {
    @Test func topLevelLinksAndPids() {
        #expect(LocalProcesses.fixedName(bytes("self")) == .procSelf)
        #expect(LocalProcesses.fixedName(bytes("thread-self")) == .procThreadSelf)
        #expect(LocalProcesses.fixedName(bytes("mounts")) == .fixedLink(bytes("1/mounts")))
        #expect(LocalProcesses.fixedName(bytes("cpuinfo")) == nil)
        #expect(LocalProcesses.pid(bytes("1234")) == 1234)
        #expect(LocalProcesses.pid(bytes("0123")) == nil)
        #expect(LocalProcesses.pid(bytes("12a")) == nil)
        #expect(LocalProcesses.pid(bytes("99999999999")) == nil)
    }

    @Test func theCallerIsLocalAndInitIsTheHosts() throws {
        let local = try LocalProcesses(localProc: "/local_proc", commands: [], standIns: "/nonexistent")
        let me = getpid()
        #expect(local.decide(me, caller: OSThread.currentID) == .local)
        #expect(local.decide(1, caller: OSThread.currentID) != .local)
        #expect(local.target(of: .procSelf, caller: OSThread.currentID) == bytes("/local_proc/\(me)"))
    }

    /// The parent of this test stands in for host process 4242 while its pid file is locked: libvirt's
    /// vm->pid is its own child, yet /proc/vm->pid must be the host's QEMU.
    @Test func aRexecClientIsTheRemoteProcessWhileItsPidFileIsLocked() throws {
        var template = Array("/tmp/dpuctl-standins-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let parent = getppid()
        let path = "\(directory)/\(parent)"
        defer {
            unlink(path)
            rmdir(directory)
        }
        let local = try LocalProcesses(localProc: "/local_proc", commands: [], standIns: directory)
        let fd = try FileDescriptor.openPath(path, flags: O_CREAT | O_WRONLY, mode: 0o600)
        try fd.writeFully("4242".utf8)
        #expect(local.decide(parent, caller: OSThread.currentID) != .standIn(remote: 4242))
        #expect(try fd.lock(nonBlocking: true))
        #expect(local.decide(parent, caller: OSThread.currentID) == .standIn(remote: 4242))
        #expect(local.decide(getpid(), caller: OSThread.currentID) == .local)
        fd.closeQuietly()
        #expect(local.decide(parent, caller: OSThread.currentID) != .standIn(remote: 4242))
    }
}

@Suite struct CgroupWritesOfDPUProcesses {
    /// 77 stands in for host process 4242; 55 is the writer's own child, not a stand-in yet.
    func decide(_ text: String) -> ProcessListWrite {
        ProcessListWrite.decide(ByteBuffer(string: text), remote: { $0 == 77 ? 4242 : nil }, own: { $0 == 55 || $0 == 77 })
    }

    @Test func aStandInsPidBecomesItsRemotePid() {
        #expect(decide("77") == .translated(77, ByteBuffer(string: "4242")))
        #expect(decide("77\n") == .translated(77, ByteBuffer(string: "4242\n")))
    }

    @Test func theWritersOwnProcessThatIsNoStandInYetIsDeferred() {
        #expect(decide("55") == .deferred(55))
        #expect(decide("55\n") == .deferred(55))
    }

    @Test func everythingElsePassesUnchanged() {
        for text in ["78", "", "\n", "077", "+77", "77 78", "77\n78", "0", "77\n\n", "-77", "055", "55 ", String(repeating: "7", count: 12)] {
            #expect(decide(text) == .asIs, "\(text.debugDescription)")
        }
    }

    /// The test process and its children are its own; its parent and init are not.
    @Test func ownProcessesAreTheWriterAndItsDescendants() throws {
        let processes = try LocalProcesses(localProc: "/local_proc", commands: [], standIns: "/nonexistent")
        let me = getpid()
        let pid = try Spawn.start(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"], environment: []))
        let child = try ProcessHandle(pid: pid)
        defer {
            try? child.signal(SIGKILL)
            _ = try? child.wait()
            child.close()
        }
        #expect(processes.isOwn(me, caller: OSThread.currentID))
        #expect(processes.isOwn(pid, caller: OSThread.currentID))
        #expect(processes.identity(pid) != nil && processes.identity(pid) == processes.identity(pid))
        #expect(processes.identity(me) != nil)
        #expect(processes.identity(0) == nil && processes.identity(Int32.max) == nil)
        #expect(!processes.isOwn(getppid(), caller: OSThread.currentID))
        #expect(!processes.isOwn(1, caller: OSThread.currentID))
        // A thread id is not a process to place.
        if OSThread.currentID != me { #expect(!processes.isOwn(OSThread.currentID, caller: OSThread.currentID)) }
        // The child is its parent's own, not the other way round.
        #expect(!processes.isOwn(me, caller: pid))
    }

    /// libvirt's double-forked child is no descendant: a later process running the writer's executable is
    /// taken as its fork; an earlier one, another program, or the writer itself is not.
    @Test func aLaterProcessOfTheSameExecutableIsAnUnexecutedFork() throws {
        let processes = try LocalProcesses(localProc: "/local_proc", commands: [], standIns: "/nonexistent")
        var handles: [ProcessHandle] = []
        defer {
            for handle in handles {
                try? handle.signal(SIGKILL)
                _ = try? handle.wait()
                handle.close()
            }
        }
        func sleeper() throws -> pid_t {
            let pid = try Spawn.start(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"], environment: []))
            handles.append(try ProcessHandle(pid: pid))
            return pid
        }
        let first = try sleeper()
        usleep(30_000)  // start times are in clock ticks (10 ms)
        let second = try sleeper()
        #expect(processes.isUnexecutedFork(second, of: first))
        #expect(!processes.isUnexecutedFork(first, of: second))
        #expect(!processes.isUnexecutedFork(first, of: first))
        #expect(!processes.isUnexecutedFork(first, of: getpid()))
        #expect(!processes.isUnexecutedFork(getpid(), of: first))
    }
}

@Suite struct DeferredCgroupPlacements {
    /// The world as the placements see it (set before any watcher runs; `placed` written by it).
    final class Fake: @unchecked Sendable {
        var remote: [pid_t: pid_t] = [:]
        var alive: Set<pid_t> = []
        /// Start times of the live processes (1 unless set).
        var started: [pid_t: UInt64] = [:]
        let done = Mutex<[(pid_t, pid_t, [String])]>([])
        var placed: [(pid_t, pid_t, [String])] { done.withLock { $0 } }
        /// Placements not answered yet, when the test answers them itself.
        var holding = false
        let held = Mutex<[@Sendable () -> Void]>([])
    }

    func placements(_ fake: Fake, patience: Double = 60) -> DeferredPlacements {
        DeferredPlacements(
            patience: patience, logger: Logger(label: "test"), remote: { fake.remote[$0] },
            identity: { fake.alive.contains($0) ? fake.started[$0] ?? 1 : nil },
            place: { pid, remote, paths, done in
                fake.done.withLock { $0.append((pid, remote, paths.map { String(decoding: $0, as: UTF8.self) })) }
                if fake.holding { fake.held.withLock { $0.append(done) } } else { done() }
            })
    }

    @Test func aProcessIsPlacedInEveryFileOnceItStandsIn() {
        let fake = Fake()
        fake.alive = [55]
        let deferred = placements(fake)
        #expect(deferred.add(55, path: bytes("fs/cgroup/unified/vm/cgroup.procs"), now: 0, watch: false))
        #expect(deferred.add(55, path: bytes("fs/cgroup/cpu/vm/cgroup.procs"), now: 0, watch: false))
        #expect(deferred.add(55, path: bytes("fs/cgroup/cpu/vm/cgroup.procs"), now: 0, watch: false))
        #expect(deferred.check(now: 1))
        #expect(fake.placed.isEmpty)
        fake.remote[55] = 4242
        #expect(!deferred.check(now: 2))
        #expect(fake.placed.count == 1)
        #expect(fake.placed.first?.0 == 55 && fake.placed.first?.1 == 4242)
        #expect(fake.placed.first?.2 == ["fs/cgroup/unified/vm/cgroup.procs", "fs/cgroup/cpu/vm/cgroup.procs"])
        #expect(deferred.pending.isEmpty)
    }

    @Test func aProcessThatExitsOrWaitsTooLongIsDropped() {
        let fake = Fake()
        fake.alive = [55, 56]
        let deferred = placements(fake, patience: 1)
        #expect(deferred.add(55, path: bytes("a/cgroup.procs"), now: 0, watch: false))
        #expect(deferred.add(56, path: bytes("a/cgroup.procs"), now: 0, watch: false))
        fake.alive = [56]
        #expect(deferred.check(now: 500_000_000))
        #expect(Set(deferred.pending.keys) == [56])
        #expect(!deferred.check(now: 1_000_000_000))
        #expect(deferred.pending.isEmpty && fake.placed.isEmpty)
    }

    /// The process exited and another got its pid: even once that one stands in, it is not placed.
    @Test func aLaterProcessWithTheSamePidIsNotPlaced() {
        let fake = Fake()
        fake.alive = [55]
        let deferred = placements(fake)
        #expect(deferred.add(55, path: bytes("a/cgroup.procs"), now: 0, watch: false))
        fake.started[55] = 2
        fake.remote[55] = 4242
        #expect(!deferred.check(now: 1))
        #expect(deferred.pending.isEmpty && fake.placed.isEmpty)
    }

    @Test func pendingPlacementsAreBounded() {
        let deferred = placements(Fake())
        for pid in 1...pid_t(DeferredPlacements.capacity) { #expect(deferred.add(pid, path: bytes("a/tasks"), watch: false)) }
        #expect(!deferred.add(pid_t(DeferredPlacements.capacity) + 1, path: bytes("a/tasks"), watch: false))
        for index in 1..<DeferredPlacements.filesPerProcess { #expect(deferred.add(1, path: bytes("\(index)/tasks"), watch: false)) }
        #expect(!deferred.add(1, path: bytes("last/tasks"), watch: false))
        #expect(deferred.add(1, path: bytes("a/tasks"), watch: false))
    }

    /// A write of the pid once it stands in waits for the placements recorded before; a file added while
    /// they are under way is placed after them.
    @Test func laterWritesOfThePidWaitForItsPlacements() {
        let fake = Fake()
        fake.alive = [55]
        fake.holding = true
        let deferred = placements(fake)
        #expect(deferred.add(55, path: bytes("v2/vm/cgroup.procs"), now: 0, watch: false))
        fake.remote[55] = 4242
        #expect(!deferred.check(now: 1))
        #expect(deferred.add(55, path: bytes("cpu/vm/cgroup.procs"), now: 1, watch: false))
        let wrote = Mutex(false)
        deferred.afterPlacing(55) { wrote.withLock { $0 = true } }
        #expect(!wrote.withLock { $0 })
        let first = fake.held.withLock { held in defer { held.removeAll() }; return held }
        for done in first { done() }
        #expect(fake.placed.map(\.2) == [["v2/vm/cgroup.procs"], ["cpu/vm/cgroup.procs"]])
        #expect(!wrote.withLock { $0 })
        let second = fake.held.withLock { held in defer { held.removeAll() }; return held }
        for done in second { done() }
        #expect(wrote.withLock { $0 })
        #expect(deferred.pending.isEmpty)
        // With nothing pending a write goes at once.
        let direct = Mutex(false)
        deferred.afterPlacing(55) { direct.withLock { $0 = true } }
        #expect(direct.withLock { $0 })
    }

    /// The thread that watches runs while something is pending, and places without being asked.
    @Test func theWatcherPlacesOnItsOwn() async throws {
        let box = Fake()
        box.alive = [55]
        box.remote[55] = 4242
        let deferred = placements(box)
        #expect(deferred.add(55, path: bytes("a/cgroup.procs")))
        for _ in 0..<500 where box.placed.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        #expect(deferred.pending.isEmpty)
        #expect(box.placed.count == 1)
    }
}

@Suite struct ListingsFetchedAhead {
    private func dentry(_ name: String) -> NodeTable.Dentry { NodeTable.Dentry(parent: 1, name: bytes(name)) }
    private func listing(_ names: [String], asked: UInt64 = 0) -> ListingPrefetch.Listing {
        ListingPrefetch.Listing(
            entries: names.enumerated().map { QTFSDirectoryEntry(name: bytes($1), type: 8, inode: UInt64($0), cookie: UInt64($0 + 1)) },
            end: true, link: Link(slot: 0, generation: 1, export: 1), version: 0, asked: asked)
    }
    private func directories(_ count: Int) -> ListingPrefetch.Start {
        (0..<count).map { (dentry("d\($0)"), bytes("d\($0)")) }
    }

    @Test func aFewAreAskedForAtOnceAndTheRestAsTheyArrive() {
        let prefetch = ListingPrefetch(capacity: 100)
        let first = prefetch.enqueue(directories(10), now: 0, timeout: 1)
        #expect(first.map(\.path) == ["d0", "d1", "d2", "d3"].map(bytes))
        let next = prefetch.finish(dentry("d0"), listing(["x"]))
        #expect(next.map(\.path) == [bytes("d4")])
        #expect(prefetch.finish(dentry("d1"), nil).map(\.path) == [bytes("d5")])
    }

    @Test func anOpendirTakesAKeptListingOnce() {
        let prefetch = ListingPrefetch(capacity: 100)
        _ = prefetch.enqueue(directories(1), now: 0, timeout: 1)
        _ = prefetch.finish(dentry("d0"), listing(["x", "y"]))
        var got: [[UInt8]]?
        _ = prefetch.take([dentry("d0")]) { got = $0?.entries.map(\.name) }
        #expect(got == [bytes("x"), bytes("y")])
        got = nil
        var called = false
        _ = prefetch.take([dentry("d0")]) { got = $0?.entries.map(\.name); called = true }
        #expect(called && got == nil)
    }

    @Test func anOpendirWaitsForAListingOnItsWay() {
        let prefetch = ListingPrefetch(capacity: 100)
        _ = prefetch.enqueue(directories(1), now: 0, timeout: 1)
        var got: [[UInt8]]?
        var called = false
        _ = prefetch.take([dentry("d0")]) { got = $0?.entries.map(\.name); called = true }
        #expect(!called)
        _ = prefetch.finish(dentry("d0"), listing(["z"]))
        #expect(called && got == [bytes("z")])
        // Handed over, not kept as well.
        called = false
        _ = prefetch.take([dentry("d0")]) { got = $0?.entries.map(\.name); called = true }
        #expect(called && got == nil)
    }

    @Test func oneNotAskedForYetIsLeftToTheCaller() {
        let prefetch = ListingPrefetch(capacity: 100)
        _ = prefetch.enqueue(directories(10), now: 0, timeout: 1)
        var got: ListingPrefetch.Listing?
        var called = false
        _ = prefetch.take([dentry("d9")]) { got = $0; called = true }
        #expect(called && got == nil)
        // And is not asked for later.
        var asked: [[UInt8]] = []
        for index in 0..<8 { asked += prefetch.finish(dentry("d\(index)"), nil).map(\.path) }
        #expect(!asked.contains(bytes("d9")) && asked.contains(bytes("d8")))
    }

    /// `ls -R` goes through subdirectories sorted by name, `find` in the listing's order (on tmpfs the
    /// newest first): the queue follows whichever the walker takes.
    @Test func theQueueFollowsAWalkerThatGoesByName() {
        let prefetch = ListingPrefetch(capacity: 100)
        let names = ["d5", "d4", "d3", "d2", "d1", "d0", "c9", "c8"]
        let first = prefetch.enqueue(names.map { (dentry($0), bytes($0)) }, now: 0, timeout: 10)
        #expect(first.map(\.path) == ["d5", "d4", "d3", "d2"].map(bytes))
        // The walker opens the first by name, far behind in the listing: it asks itself, and the rest
        // follows by name from there.
        var called = false
        let next = prefetch.take([dentry("c8")]) { listing in called = listing == nil }
        #expect(called && next.isEmpty)
        var asked: [[UInt8]] = []
        for name in ["d5", "d4", "d3", "d2"] { asked += prefetch.finish(dentry(name), nil).map(\.path) }
        #expect(asked == ["c9", "d0", "d1"].map(bytes))
        // Directories queued later come by name too.
        let later = prefetch.enqueue([(dentry("b2"), bytes("b2")), (dentry("b1"), bytes("b1"))], now: 1, timeout: 10)
        #expect(later.map(\.path) == [bytes("b1")])
    }

    @Test func aWalkerInTheListingsOrderKeepsIt() {
        let prefetch = ListingPrefetch(capacity: 100)
        let names = ["d5", "d4", "d3", "d2", "d1", "d0"]
        _ = prefetch.enqueue(names.map { (dentry($0), bytes($0)) }, now: 0, timeout: 10)
        // Faster than the fetches: it opens the next one in line itself.
        var called = false
        _ = prefetch.take([dentry("d1")]) { listing in called = listing == nil }
        #expect(called)
        var asked: [[UInt8]] = []
        for name in ["d5", "d4", "d3", "d2"] { asked += prefetch.finish(dentry(name), nil).map(\.path) }
        #expect(asked == [bytes("d0")])
        let later = prefetch.enqueue([(dentry("b2"), bytes("b2")), (dentry("b1"), bytes("b1"))], now: 1, timeout: 10)
        #expect(later.map(\.path) == ["b2", "b1"].map(bytes))
    }

    @Test func keptListingsAreBoundedAndOldOnesMakeRoom() {
        let prefetch = ListingPrefetch(capacity: 40)
        var pending = prefetch.enqueue(directories(40), now: 0, timeout: 10)
        var kept = 0
        while let (dentry, _) = pending.first {
            pending.removeFirst()
            pending += prefetch.finish(dentry, listing(["x"], asked: 0))
            kept += 1
        }
        #expect(kept == ListingPrefetch.kept)
        // Full: nothing more is queued until the kept ones are too old to be used.
        #expect(prefetch.enqueue([(NodeTable.Dentry(parent: 2, name: bytes("n")), bytes("n"))], now: 5, timeout: 10).isEmpty)
        // Later they (and the ones still queued since then) are too old: the new one goes.
        #expect(prefetch.enqueue([(NodeTable.Dentry(parent: 2, name: bytes("n")), bytes("n"))], now: 11, timeout: 10).map(\.path) == [bytes("n")])
    }

    @Test func theLatestListingsDirectoriesGoFirstAndOldQueuedOnesMakeRoom() {
        let prefetch = ListingPrefetch(capacity: 10)
        var running = prefetch.enqueue(directories(10), now: 0, timeout: 10)
        #expect(running.count == ListingPrefetch.window)
        let newer = (0..<2).map { (NodeTable.Dentry(parent: 2, name: bytes("e\($0)")), bytes("e\($0)")) }
        // Full of queued ones not yet too old: nothing is added.
        #expect(prefetch.enqueue(newer, now: 5, timeout: 10).isEmpty)
        // Later they are: the new ones take their place and are asked for next.
        #expect(prefetch.enqueue(newer, now: 20, timeout: 10).isEmpty)
        var next: [[UInt8]] = []
        while let (dentry, _) = running.first {
            running.removeFirst()
            next += prefetch.finish(dentry, nil).map(\.path)
        }
        #expect(next == [bytes("e0"), bytes("e1")])
    }
}

@Suite struct TerminalLinks {
    @Test func onlyPtySlavesAreShownAsLinks() {
        let slave = QTFSAttributes(mode: 0o020620, rdev: 136 << 8 | 3)
        #expect(TerminalBridges.presents(slave))
        #expect(!TerminalBridges.presents(QTFSAttributes(mode: 0o020666, rdev: 5 << 8 | 2)))  // ptmx
        #expect(!TerminalBridges.presents(QTFSAttributes(mode: 0o020666, rdev: 1 << 8 | 3)))  // null
        #expect(!TerminalBridges.presents(QTFSAttributes(mode: 0o060660, rdev: 136 << 8 | 3)))  // a block device
        #expect(!TerminalBridges.presents(QTFSAttributes(mode: 0o100644, rdev: 136 << 8 | 3)))
    }

    /// Relative, so that the link holds wherever the mount is seen (a chroot included).
    @Test func linksAreRelativeToTheirDirectory() {
        #expect(TerminalBridges.target(index: 0, path: bytes("3")) == bytes(".qtfs-ptys/0"))
        #expect(TerminalBridges.target(index: 12, path: bytes("pts/7")) == bytes("../.qtfs-ptys/12"))
        #expect(TerminalBridges.target(index: 1, path: bytes("a/b/4")) == bytes("../../.qtfs-ptys/1"))
    }
}

@Suite struct ExtendedAttributeSelection {
    @Test func aclsAndLabelsStayOutByDefault() {
        let policy = ExtendedAttributePolicy()
        for name in ["system.posix_acl_access", "system.posix_acl_default", "security.selinux", "security.apparmor",
            "security.SMACK64", "security.SMACK64EXEC"]
        {
            #expect(!policy.carries(bytes(name)), "\(name)")
        }
        for name in ["trusted.libvirt.security.dac", "user.colour", "security.capability", "security.selinuxx",
            "system.posix_acl", ""]
        {
            #expect(policy.carries(bytes(name)), "\(name)")
        }
        #expect(ExtendedAttributePolicy(acl: true, securityLabels: false).carries(bytes("system.posix_acl_access")))
        #expect(!ExtendedAttributePolicy(acl: true, securityLabels: false).carries(bytes("security.selinux")))
        #expect(ExtendedAttributePolicy(acl: false, securityLabels: true).carries(bytes("security.SMACK64")))
    }

    @Test func listsLoseOnlyWhatDoesNotTravel() {
        let list = bytes("user.a\0system.posix_acl_access\0security.selinux\0trusted.b\0")
        #expect(ExtendedAttributePolicy().filter(list: list) == bytes("user.a\0trusted.b\0"))
        #expect(ExtendedAttributePolicy(acl: true, securityLabels: true).filter(list: list) == list)
        #expect(ExtendedAttributePolicy().filter(list: []) == [])
        #expect(ExtendedAttributePolicy().filter(list: bytes("security.selinux\0")) == [])
    }
}

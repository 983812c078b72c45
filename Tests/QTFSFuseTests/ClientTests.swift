import DPUSystem
import Glibc
import DPUWire
import NIOCore
import SystemPackage
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
    }

    @Test func devicesOnlyWhenAsked() throws {
        var options = QTFSMountOptions(hostPath: "/dev/vfio", mountpoint: "/mnt")
        #expect(options.fuseOptions.contains("nodev"))
        try options.apply("dev")
        #expect(!options.fuseOptions.contains("nodev"))
    }

    @Test func fstabOnlyOptionsAreIgnored() throws {
        var options = QTFSMountOptions(hostPath: "/x", mountpoint: "/mnt")
        try options.apply("defaults,_netdev,noauto,x-systemd.automount,nofail")
        #expect(options.kernelOptions.isEmpty)
    }

    @Test(arguments: ["bogus", "server=", "server=ftp://x", "connections=0", "connections=x", "localproc=relative",
        "readahead=-1", "timeout=0", "udsproxy=relative"])
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

@Suite struct CgroupWritesOfStandIns {
    func translate(_ text: String) -> String? {
        QTFSFilesystem.translatingStandIn(ByteBuffer(string: text), directory: "/unused") { pid, _ in pid == 77 ? 4242 : nil }
            .map { String(buffer: $0) }
    }

    @Test func aStandInsPidBecomesItsRemotePid() {
        #expect(translate("77") == "4242")
        #expect(translate("77\n") == "4242\n")
    }

    @Test func everythingElsePassesUnchanged() {
        for text in ["78", "", "\n", "077", "+77", "77 78", "77\n78", "0", "77\n\n", "-77", String(repeating: "7", count: 12)] {
            #expect(translate(text) == nil, "\(text.debugDescription)")
        }
    }
}

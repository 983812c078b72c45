import DPUConfig
import Testing

@testable import QTFS

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

@Suite struct Whitelists {
    /// The original's libvirt sample, with its duplicates and a test leftover, as it is shipped.
    let sample = """
        [Open]
        Path=/proc;/sys;/sys/fs/cgroup;/home/VMs;/dev/pts;/dev/vfio;/sys/fs/cgroup;/root/test
        [Write]
        Path=/proc/sys;/sys/fs/cgroup;/sys/bus;/sys/class;/sys/bus
        [Mount]
        Path=/home/VMs;/var/lib/libvirt;/proc;/sys;/dev/pts;/dev/vfio
        # a comment
        [Kill]
        Path=qemu-kvm
        """

    @Test func theOriginalSampleIsAcceptedAsIs() throws {
        let whitelist = try QTFSWhitelist(text: sample, path: "whitelist")
        #expect(whitelist.entries[.open]?.count == 7)  // the duplicate /sys/fs/cgroup kept once
        #expect(whitelist.entries[.write]?.count == 4)
        #expect(whitelist.allows(.mount, bytes("/var/lib/libvirt/qemu")))
        #expect(whitelist.allows(.write, bytes("/sys/fs/cgroup/machine.slice/cgroup.procs")))
        #expect(!whitelist.allows(.write, bytes("/sys/kernel/mm")))
        #expect(!whitelist.allows(.readdir, bytes("/proc")))  // no [Readdir]: not allowed
    }

    @Test func prefixesEndOnComponentBoundaries() throws {
        let whitelist = try QTFSWhitelist(text: "[Open]\nPath=/home/VMs;/\n[Read]\nPath=/home/VMs\n", path: "w")
        #expect(whitelist.allows(.read, bytes("/home/VMs")))
        #expect(whitelist.allows(.read, bytes("/home/VMs/disk.img")))
        #expect(!whitelist.allows(.read, bytes("/home/VMsx")))
        #expect(whitelist.allows(.open, bytes("/etc/passwd")))  // "/" allows all
    }

    @Test func badEntriesNameTheirLine() {
        #expect { try QTFSWhitelist(text: "[Open]\nPath=relative\n", path: "w") } throws: {
            ($0 as? ConfigError)?.line == 2
        }
        #expect { try QTFSWhitelist(text: "[Open]\n\nPath=/a/../b\n", path: "w") } throws: {
            ($0 as? ConfigError)?.line == 3
        }
    }

    @Test func unknownSectionsAreKeptForAWarning() throws {
        let whitelist = try QTFSWhitelist(text: "[Frobnicate]\nPath=/x\n", path: "w")
        #expect(whitelist.ignoredSections == ["Frobnicate"])
    }

    @Test func readOnlyExportsAllowReadingOnly() throws {
        var whitelist = try QTFSWhitelist(text: "[Mount]\nPath=/srv/rw\n", path: "w")
        try whitelist.addReadOnlyRoot("/srv/ro/", file: "dpuctl.conf", line: 3)
        #expect(whitelist.allows(.mount, bytes("/srv/ro/x")) && whitelist.allows(.read, bytes("/srv/ro/x")))
        #expect(!whitelist.allows(.write, bytes("/srv/ro/x")))
        #expect(whitelist.isReadOnly(bytes("/srv/ro/x")) && !whitelist.isReadOnly(bytes("/srv/rw/x")))
    }
}

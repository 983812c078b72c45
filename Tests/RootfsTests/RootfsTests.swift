import DPUSystem
import Glibc
import SystemPackage
import Testing

@testable import Rootfs

/// A disk's first 34 sectors with an MBR and, optionally, a GPT made from `partitions`.
func disk(mbr: [(type: UInt8, start: UInt32, count: UInt32)] = [], gpt: [(type: String, first: UInt64, last: UInt64, name: String)]? = nil) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: PartitionTable.headerBytes)
    func put32(_ value: UInt32, _ at: Int) { for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
    func put64(_ value: UInt64, _ at: Int) { for i in 0..<8 { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
    bytes[510] = 0x55
    bytes[511] = 0xAA
    let entries = gpt == nil ? mbr : [(0xEE, 1, 0xFFFF_FFFF)]
    for (index, entry) in entries.enumerated() {
        bytes[446 + index * 16 + 4] = entry.type
        put32(entry.start, 446 + index * 16 + 8)
        put32(entry.count, 446 + index * 16 + 12)
    }
    if let gpt {
        bytes.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
        put64(2, 512 + 72)  // entries at LBA 2
        put32(128, 512 + 80)
        put32(128, 512 + 84)
        for (index, partition) in gpt.enumerated() {
            let base = 1024 + index * 128
            let hex = partition.type.replacingDashes()
            let digits = Array(hex)
            var raw: [UInt8] = []
            for offset in stride(from: 0, to: 32, by: 2) { raw.append(UInt8(String(digits[offset..<offset + 2]), radix: 16)!) }
            let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
            let mixed = order.map { raw[$0] }
            bytes.replaceSubrange(base..<base + 16, with: mixed)
            put64(partition.first, base + 32)
            put64(partition.last, base + 40)
            for (offset, unit) in partition.name.utf16.enumerated() {
                bytes[base + 56 + offset * 2] = UInt8(unit & 0xFF)
                bytes[base + 57 + offset * 2] = UInt8(unit >> 8)
            }
        }
    }
    return bytes
}

extension String {
    func replacingDashes() -> String { String(filter { $0 != "-" }) }
}

@Suite struct PartitionTables {
    @Test func anMBRListsItsPartitions() throws {
        let table = try PartitionTable.parse(disk(mbr: [(0x83, 2048, 1_048_576), (0x82, 1_050_624, 4096)]))
        #expect(table.scheme == .mbr)
        let expected: [PartitionTable.Partition] = [
            PartitionTable.Partition(number: 1, offset: UInt64(2048 * 512), size: UInt64(1_048_576 * 512), type: "83"),
            PartitionTable.Partition(number: 2, offset: UInt64(1_050_624 * 512), size: UInt64(4096 * 512), type: "82"),
        ]
        #expect(table.partitions == expected)
        #expect(table.rootCandidates(architecture: "x86_64").map(\.number) == [1], "swap is never a root")
    }

    @Test func aGPTIsReadWithTypesAndNames() throws {
        let table = try PartitionTable.parse(disk(gpt: [
            ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 2048, 4095, "EFI"),
            ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", 4096, 8191, "boot"),
            ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 8192, 65535, "root"),
        ]))
        #expect(table.scheme == .gpt)
        #expect(table.partitions.map(\.name) == ["EFI", "boot", "root"])
        let root = PartitionTable.Partition(
            number: 3, offset: UInt64(8192 * 512), size: UInt64(57344 * 512), type: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            name: "root")
        #expect(table.partitions[2] == root)
        #expect(table.rootCandidates(architecture: "x86_64").map(\.number) == [3, 2], "the root type first, EFI never")
        #expect(table.rootCandidates(architecture: "aarch64").map(\.number) == [2, 3])
    }

    @Test func aDiskWithoutATableIsOneFileSystem() throws {
        #expect(try PartitionTable.parse([UInt8](repeating: 0, count: 1024)).scheme == .none)
        #expect(try PartitionTable.parse(disk(mbr: [])).scheme == .none, "a boot sector without entries")
    }

    @Test func aDamagedGPTIsAnError() {
        var bytes = disk(gpt: [("0FC63DAF-8483-4772-8E79-3D69D8477DE4", 10, 5, "backwards")])
        #expect(throws: PartitionError.self) { try PartitionTable.parse(bytes) }
        bytes.replaceSubrange(512..<520, with: [UInt8](repeating: 0, count: 8))
        #expect { try PartitionTable.parse(bytes) } throws: { ($0 as? PartitionError)?.message.contains("no GPT header") == true }
    }

    @Test func imageFormatsAreKnownByTheirFirstBytes() throws {
        #expect(try DiskImage.format([0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 3], path: "a") == "qcow2")
        #expect(try DiskImage.format([0, 0, 0, 0], path: "a") == "raw")
        #expect { try DiskImage.format([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], path: "x.xz") } throws: {
            ($0 as? ImageError)?.message == "x.xz is xz-compressed: decompress it first (xz -dk x.xz)"
        }
    }
}

@Suite struct Wrappers {
    @Test func theWrapperKeepsArgumentsAndCarriesTheAddress() {
        let text = Layout.wrapper(address: "tcp://198.51.100.1:7777", program: "/usr/bin/qemu-kvm")
        #expect(text.hasPrefix("#!/bin/sh\n"))
        #expect(text.contains("CMD_NET_ADDR='tcp://198.51.100.1:7777' exec /usr/bin/rexec \"$@\"\n"))
        #expect(text.contains("set -- /usr/bin/qemu-kvm \"$@\"\n"))
        #expect(text.contains("set -- --daemon-pidfile \"$pidfile\" /usr/bin/qemu-kvm \"$@\"\n"))
        #expect(!Layout.wrapper(address: nil, program: "/usr/bin/qemu-kvm").contains("CMD_NET_ADDR"))
        #expect(shellQuote("unix:///run/it's.sock") == "'unix:///run/it'\\''s.sock'")
    }

    @Test func everyEmulatorBecomesAWrapperForTheSameProgramOnTheHost() {
        let all = Layout.wrappers(emulators: ["qemu-system-i386", "qemu-system-x86_64"])
        #expect(all.map(\.path) == ["usr/bin/qemu-kvm", "usr/libexec/qemu-kvm", "usr/bin/qemu-system-i386", "usr/bin/qemu-system-x86_64"])
        #expect(all.map(\.program) == ["/usr/bin/qemu-kvm", "/usr/bin/qemu-kvm", "/usr/bin/qemu-system-i386", "/usr/bin/qemu-system-x86_64"])
        #expect(Layout.wrapper(address: nil, program: "/usr/bin/qemu-system-i386").contains("set -- /usr/bin/qemu-system-i386 \"$@\""))
    }
}

/// The copier on real directories: a second copy changes nothing; a changed file is found.
@Suite(.serialized) struct Copying {
    func temporaryDirectory() -> String {
        var template = Array("/tmp/dpuctl-rootfs-test.XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    func write(_ path: String, _ text: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    @Test func aSecondCopyChangesNothingAndAThirdFindsTheDifference() throws {
        let base = temporaryDirectory()
        defer { _ = try? ChildProcess.run("/bin/rm", arguments: ["rm", "-rf", base], timeoutSeconds: 30) }
        mkdir(base + "/src", 0o755)
        mkdir(base + "/src/tree", 0o755)
        mkdir(base + "/src/tree/sub", 0o750)
        mkdir(base + "/dst", 0o755)
        write(base + "/src/tree/a", "alpha")
        link(base + "/src/tree/a", base + "/src/tree/sub/also-a")
        symlink("a", base + "/src/tree/to-a")
        chmod(base + "/src/tree/a", 0o4755)

        func copy() throws -> CopyReport {
            let source = try FileDescriptor.openPath(base + "/src", flags: O_RDONLY | O_DIRECTORY)
            let destination = try FileDescriptor.openPath(base + "/dst", flags: O_RDONLY | O_DIRECTORY)
            defer {
                source.closeQuietly()
                destination.closeQuietly()
            }
            let copier = TreeCopier(destinationRoot: destination, excluded: [], progress: nil)
            try copier.copy(Array("tree".utf8), from: source, to: destination, path: Array("tree".utf8))
            return copier.report
        }
        let first = try copy()
        #expect(Set(first.createdSample) == ["tree", "tree/a", "tree/sub", "tree/to-a"] && first.created == 4)
        #expect(first.changes == [Change(path: "tree/sub/also-a", what: ["hard link"])])
        var a = stat(), alsoA = stat()
        stat(base + "/dst/tree/a", &a)
        stat(base + "/dst/tree/sub/also-a", &alsoA)
        #expect(a.st_ino == alsoA.st_ino && a.st_mode & 0o7777 == 0o4755)

        let second = try copy()
        #expect(second.changes == [] && second.created == 0)
        #expect(second.unchanged == 5)

        chmod(base + "/dst/tree/sub", 0o755)
        let third = try copy()
        #expect(third.changes == [Change(path: "tree/sub", what: ["mode"])])
    }
}

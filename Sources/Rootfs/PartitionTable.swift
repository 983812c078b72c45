/// A disk image's partition table (MBR or GPT), read from its first sectors: pure parsing, no I/O.
public struct PartitionTable: Sendable, Equatable {
    public enum Scheme: String, Sendable { case gpt, mbr, none }

    public struct Partition: Sendable, Equatable {
        /// 1-based, as Linux numbers them (nbd0p2 is number 2).
        public var number: Int
        public var offset: UInt64
        public var size: UInt64
        /// GPT type GUID (upper case, dashed) or MBR type byte as two hex digits.
        public var type: String
        public var name: String

        public init(number: Int, offset: UInt64, size: UInt64, type: String, name: String = "") {
            self.number = number
            self.offset = offset
            self.size = size
            self.type = type
            self.name = name
        }
    }

    public var scheme: Scheme
    public var partitions: [Partition]

    public static let sectorSize: UInt64 = 512
    /// How much of the disk the parser needs: MBR, GPT header and 128 entries of 128 bytes.
    public static let headerBytes = 512 * 34

    /// Parses the first `headerBytes` of a disk (fewer for a tiny one). A disk without a valid table is
    /// `.none` (a file system on the whole disk). A GPT's own entries are read from `entries` when they
    /// are not within the header bytes (a header pointing elsewhere): the caller reads them at
    /// `gptEntriesLocation` and parses again.
    public static func parse(_ disk: [UInt8], entries: [UInt8]? = nil) throws(PartitionError) -> PartitionTable {
        guard disk.count >= 512, disk[510] == 0x55, disk[511] == 0xAA else { return PartitionTable(scheme: .none, partitions: []) }
        let mbr = (0..<4).map { index -> (type: UInt8, start: UInt64, count: UInt64) in
            let base = 446 + index * 16
            return (disk[base + 4], UInt64(le32(disk, base + 8)), UInt64(le32(disk, base + 12)))
        }
        if mbr.contains(where: { $0.type == 0xEE }) {
            return try parseGPT(disk, entries: entries)
        }
        // An MBR with no partition entry at all is a file system's boot sector (FAT, ...), not a table.
        let used = mbr.enumerated().filter { $0.element.type != 0 && $0.element.count > 0 }
        guard !used.isEmpty else { return PartitionTable(scheme: .none, partitions: []) }
        // Logical partitions inside an extended one are not searched (the extended entry is skipped).
        return PartitionTable(scheme: .mbr, partitions: used.map { index, entry in
            Partition(
                number: index + 1, offset: entry.start * sectorSize, size: entry.count * sectorSize,
                type: hex(entry.type))
        })
    }

    /// Where the GPT header says its entries are (byte offset and length), to read them when they lie
    /// beyond `headerBytes`.
    public static func gptEntriesLocation(_ disk: [UInt8]) -> (offset: UInt64, length: Int)? {
        guard disk.count >= 1024, Array(disk[512..<520]) == Array("EFI PART".utf8) else { return nil }
        let start = le64(disk, 512 + 72)
        let count = Int(le32(disk, 512 + 80))
        let size = Int(le32(disk, 512 + 84))
        guard count <= 1024, size >= 128, size <= 1024 else { return nil }
        return (start * sectorSize, count * size)
    }

    static func parseGPT(_ disk: [UInt8], entries given: [UInt8]?) throws(PartitionError) -> PartitionTable {
        guard disk.count >= 1024, Array(disk[512..<520]) == Array("EFI PART".utf8) else {
            throw PartitionError("the disk has a protective MBR but no GPT header at sector 1")
        }
        guard let location = gptEntriesLocation(disk) else {
            throw PartitionError("the GPT header's partition entry array is out of bounds (count or size)")
        }
        let entrySize = Int(le32(disk, 512 + 84))
        let bytes: [UInt8]
        if let given {
            bytes = given
        } else if location.offset + UInt64(location.length) <= UInt64(disk.count) {
            bytes = Array(disk[Int(location.offset)..<(Int(location.offset) + location.length)])
        } else {
            throw PartitionError("the GPT partition entries at byte \(location.offset) were not read")
        }
        var partitions: [Partition] = []
        for index in 0..<(bytes.count / entrySize) {
            let base = index * entrySize
            let type = guid(bytes, base)
            guard type != "00000000-0000-0000-0000-000000000000" else { continue }
            let first = le64(bytes, base + 32), last = le64(bytes, base + 40)
            guard last >= first else { throw PartitionError("GPT entry \(index + 1) ends before it starts") }
            var name = ""
            for offset in stride(from: base + 56, to: base + 128, by: 2) {
                let unit = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
                if unit == 0 { break }
                if let scalar = Unicode.Scalar(unit) { name.unicodeScalars.append(scalar) }
            }
            partitions.append(Partition(
                number: index + 1, offset: first * sectorSize, size: (last - first + 1) * sectorSize, type: type, name: name))
        }
        return PartitionTable(scheme: .gpt, partitions: partitions)
    }

    /// Partitions that may hold a root file system, the likeliest first: the GPT root type of this
    /// architecture (Discoverable Partitions Specification), then Linux file system partitions, then
    /// partitions of unknown type. Swap, EFI system, BIOS boot, LVM and extended partitions are left out.
    public func rootCandidates(architecture: String) -> [Partition] {
        let rootTypes = [
            "x86_64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "aarch64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        ]
        let excluded: Set<String> = [
            "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "21686148-6449-6E6F-744E-656564454649", "E6D6D379-F507-44C2-A23C-238F2A3DF928",
            "82", "EF", "8E", "05", "0F", "85",
        ]
        let linux: Set<String> = ["0FC63DAF-8483-4772-8E79-3D69D8477DE4", "83"]
        let usable = partitions.filter { !excluded.contains($0.type) }
        let root = usable.filter { $0.type == rootTypes[architecture] }
        let data = usable.filter { linux.contains($0.type) }
        let other = usable.filter { $0.type != rootTypes[architecture] && !linux.contains($0.type) }
        return root + data + other
    }
}

/// A partition table that cannot be read.
public struct PartitionError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

func le32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
}

func le64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
    (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) }
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}

/// A GPT GUID (mixed-endian on disk) as its usual text.
func guid(_ bytes: [UInt8], _ offset: Int) -> String {
    let order = [3, 2, 1, 0, -1, 5, 4, -1, 7, 6, -1, 8, 9, -1, 10, 11, 12, 13, 14, 15]
    return order.map { $0 < 0 ? "-" : hex(bytes[offset + $0]) }.joined()
}

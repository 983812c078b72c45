import Glibc
import SystemPackage

extension FileDescriptor {
    /// The names in this directory (not `.` and `..`), sorted bytewise, read with getdents64 from the
    /// start. Names are raw bytes: Linux file names need not be UTF-8.
    public func directoryNames() throws(SystemError) -> [[UInt8]] {
        var names: [[UInt8]] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
        defer { buffer.deallocate() }
        try seek(to: 0)
        while true {
            let count = try directoryEntries(into: buffer)
            if count == 0 { break }
            for entry in DirectoryEntry.parse(UnsafeRawBufferPointer(buffer), count: count)
            where entry.name != [0x2E] && entry.name != [0x2E, 0x2E] {
                names.append(entry.name)
            }
        }
        return names.sorted { $0.lexicographicallyPrecedes($1) }
    }
}

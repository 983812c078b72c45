import NIOCore

// Bounded readers for message payloads. Every length read from a peer is checked against both the bytes
// actually present and a caller-given maximum before anything is allocated.

extension ByteBuffer {
    /// Reads a big-endian integer or throws `truncated` naming `field`.
    @inlinable
    public mutating func readWireInteger<T: FixedWidthInteger>(
        as: T.Type = T.self, _ field: StaticString
    ) throws(WireError) -> T {
        guard let value = readInteger(endianness: .big, as: T.self) else {
            throw WireError(.truncated, "truncated \(field)")
        }
        return value
    }

    /// Reads a `u32` length-prefixed byte string of at most `maximum` bytes.
    public mutating func readWireBytes(_ field: StaticString, maximum: Int) throws(WireError) -> [UInt8] {
        let length = Int(try readWireInteger(as: UInt32.self, field))
        guard length <= maximum else {
            throw WireError(.oversized, "\(field) of \(length) bytes is over the limit of \(maximum)")
        }
        guard let bytes = readBytes(length: length) else { throw WireError(.truncated, "truncated \(field)") }
        return bytes
    }

    /// Reads a `u32` length-prefixed UTF-8 string of at most `maximum` bytes; invalid UTF-8 is refused.
    public mutating func readWireString(_ field: StaticString, maximum: Int) throws(WireError) -> String {
        let bytes = try readWireBytes(field, maximum: maximum)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw WireError(.malformed, "\(field) is not valid UTF-8")
        }
        return text
    }

    /// Reads a `u32` count followed by that many byte strings; `maximumCount` bounds the count and
    /// `maximumTotal` the sum of their lengths.
    public mutating func readWireByteStrings(
        _ field: StaticString, maximumCount: Int, maximumTotal: Int
    ) throws(WireError) -> [[UInt8]] {
        let count = Int(try readWireInteger(as: UInt32.self, field))
        guard count <= maximumCount else {
            throw WireError(.oversized, "\(field) has \(count) entries, over the limit of \(maximumCount)")
        }
        // Each entry needs at least its 4-byte length: a count the payload cannot hold is refused
        // before any allocation.
        guard count * 4 <= readableBytes else { throw WireError(.truncated, "truncated \(field)") }
        var result: [[UInt8]] = []
        result.reserveCapacity(count)
        var total = 0
        for _ in 0..<count {
            let entry = try readWireBytes(field, maximum: maximumTotal - total)
            total += entry.count
            result.append(entry)
        }
        return result
    }

    /// Throws unless every byte was consumed: trailing bytes mean the peer and we disagree on a layout.
    public func expectFullyRead(_ message: String) throws(WireError) {
        guard readableBytes == 0 else {
            throw WireError(.malformed, "\(readableBytes) unexpected trailing bytes in \(message)")
        }
    }

    /// Writes a `u32` length-prefixed byte string.
    @discardableResult
    public mutating func writeWireBytes(_ bytes: some Collection<UInt8>) -> Int {
        writeInteger(UInt32(bytes.count), endianness: .big) + writeBytes(bytes)
    }

    /// Writes a `u32` length-prefixed UTF-8 string.
    @discardableResult
    public mutating func writeWireString(_ text: String) -> Int {
        writeWireBytes(Array(text.utf8))
    }

    /// Writes a `u32` count and that many length-prefixed byte strings.
    @discardableResult
    public mutating func writeWireByteStrings(_ strings: [[UInt8]]) -> Int {
        var written = writeInteger(UInt32(strings.count), endianness: .big)
        for string in strings { written += writeWireBytes(string) }
        return written
    }
}

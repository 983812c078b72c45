import NIOCore

// The original C rexec's wire layout (reference/rexec.md §6), spoken by rexec_server on its unix socket so
// that unchanged DPU images keep working. A fixed 24-byte header in host byte order (little-endian on
// every machine the original ran on), an optional payload, and one SCM_RIGHTS fd per EXEC/PIPE message.
// The original fills unused fields with garbage; they are ignored here.

/// Message types of the original (`enum rexec_msgtype`).
public enum LegacyRexecType: Int32, Sendable {
    /// C→S: argv + JSON payload; carries the read end of the program's stdin pipe.
    case exec = 0x5a5a
    /// S→C: the program ended; `exitStatus` is the shell-style status.
    case kill = 0x5a5b
    /// C→S: carries the write end of the stdout (pipefd 1) or stderr (pipefd 2) pipe.
    case pipe = 0x5a5c
    /// S→C: the program's pid.
    case pidMap = 0x5a5d
    /// C→S: one payload byte, `'1'` = run the program.
    case handshake = 0x5a5e
}

/// `struct rexec_msg` without its payload.
public struct LegacyRexecHeader: Equatable, Sendable {
    public static let size = 24
    /// The original's limit on the EXEC payload.
    public static let maximumPayload = 1 << 20
    /// The original's limit on argc.
    public static let maximumArguments = 131_072

    public var type: Int32
    public var argc: Int32
    public var pipeFD: Int32
    public var length: Int32
    public var exitStatus: Int32
    public var pid: Int32

    public init(type: LegacyRexecType, argc: Int32 = 0, pipeFD: Int32 = 0, length: Int32 = 0, exitStatus: Int32 = 0, pid: Int32 = 0) {
        self.type = type.rawValue
        self.argc = argc
        self.pipeFD = pipeFD
        self.length = length
        self.exitStatus = exitStatus
        self.pid = pid
    }

    /// Whether `bytes` (the first bytes of a connection) start like the original client's EXEC or PIPE
    /// message rather than dpuctl's hello.
    public static func looksLegacy(_ firstByte: UInt8) -> Bool { firstByte == 0x5a || firstByte == 0x5c }

    public func encode(into buffer: inout ByteBuffer) {
        for field in [type, argc, pipeFD, length, exitStatus, pid] { buffer.writeInteger(field, endianness: .little) }
    }

    /// Takes a header from the front of `buffer` (nil until 24 bytes are there). The type must be one the
    /// original defines and the length must be sane for it.
    public static func decode(_ buffer: inout ByteBuffer) throws(WireError) -> LegacyRexecHeader? {
        guard buffer.readableBytes >= size else { return nil }
        var fields: [Int32] = []
        for _ in 0..<6 { fields.append(buffer.readInteger(endianness: .little, as: Int32.self)!) }
        guard let type = LegacyRexecType(rawValue: fields[0]) else {
            throw WireError(.unknownMessage, "original-protocol message type 0x\(String(UInt32(bitPattern: fields[0]), radix: 16)) is unknown")
        }
        let header = LegacyRexecHeader(
            type: type, argc: fields[1], pipeFD: fields[2], length: fields[3], exitStatus: fields[4], pid: fields[5])
        switch type {
        case .exec:
            guard header.length > 0, header.length <= maximumPayload else {
                throw WireError(.oversized, "original-protocol EXEC payload of \(header.length) bytes (1 to \(maximumPayload) allowed)")
            }
            guard header.argc > 0, header.argc <= maximumArguments else {
                throw WireError(.malformed, "original-protocol EXEC with argc \(header.argc)")
            }
        case .handshake:
            guard header.length == 1 else { throw WireError(.malformed, "original-protocol HANDSHAKE with \(header.length) payload bytes") }
        case .pipe, .kill, .pidMap:
            guard header.length == 0 else { throw WireError(.malformed, "original-protocol \(type) with a payload") }
        }
        return header
    }

    public var messageType: LegacyRexecType { LegacyRexecType(rawValue: type)! }
}

/// A regular file the original client asks the server to reopen (`{"Fd":7,"Path":"/x","Perm":33793,"Offset":0}`).
public struct LegacyRexecFile: Equatable, Sendable {
    public var fd: Int32
    public var path: [UInt8]
    public var flags: Int32
    public var offset: Int64
}

/// The EXEC payload: `argc` NUL-terminated strings, then `{"Files":[...]}` (not NUL-terminated).
public struct LegacyRexecExec: Equatable, Sendable {
    public var arguments: [[UInt8]]
    public var files: [LegacyRexecFile]

    public init(payload: some Collection<UInt8>, argc: Int32) throws(WireError) {
        let bytes = Array(payload)
        var index = 0
        arguments = []
        for _ in 0..<argc {
            guard let end = bytes[index...].firstIndex(of: 0) else {
                throw WireError(.truncated, "original-protocol EXEC has fewer than \(argc) arguments")
            }
            arguments.append(Array(bytes[index..<end]))
            index = end + 1
        }
        guard !arguments[0].isEmpty else { throw WireError(.malformed, "original-protocol EXEC with an empty program name") }
        var parser = MiniJSON(bytes: bytes[index...])
        let document = try parser.parseDocument()
        guard case .object(let members) = document, let list = members.first(where: { $0.0 == "Files" })?.1,
            case .array(let entries) = list
        else {
            throw WireError(.malformed, "original-protocol EXEC JSON has no \"Files\" array")
        }
        guard entries.count <= 1024 else { throw WireError(.oversized, "original-protocol EXEC lists \(entries.count) files") }
        files = []
        for entry in entries {
            guard case .object(let fields) = entry,
                case .number(let fd)? = fields.first(where: { $0.0 == "Fd" })?.1,
                case .string(let path)? = fields.first(where: { $0.0 == "Path" })?.1,
                case .number(let flags)? = fields.first(where: { $0.0 == "Perm" })?.1
            else {
                throw WireError(.malformed, "original-protocol EXEC file entry without Fd, Path and Perm")
            }
            var offset: Int64 = 0
            if case .number(let value)? = fields.first(where: { $0.0 == "Offset" })?.1 { offset = value }
            guard fd > 2, fd < 1 << 20, flags >= 0, flags <= Int64(Int32.max), offset >= 0, path.first == UInt8(ascii: "/") else {
                throw WireError(.malformed, "original-protocol EXEC file entry with fd \(fd), flags \(flags), offset \(offset)")
            }
            files.append(LegacyRexecFile(fd: Int32(fd), path: path, flags: Int32(flags), offset: offset))
        }
    }
}

/// Just enough JSON for the original's fd list: objects, arrays, strings, integers, true/false/null;
/// bounded depth, no floating point.
struct MiniJSON {
    indirect enum Value: Equatable {
        case object([(String, Value)])
        case array([Value])
        case string([UInt8])
        case number(Int64)
        case literal

        static func == (a: Value, b: Value) -> Bool {
            switch (a, b) {
            case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
            case (.array(let x), .array(let y)): x == y
            case (.string(let x), .string(let y)): x == y
            case (.number(let x), .number(let y)): x == y
            case (.literal, .literal): true
            default: false
            }
        }
    }

    private let bytes: [UInt8]
    private var index = 0
    private static let maximumDepth = 16

    init(bytes: some Collection<UInt8>) { self.bytes = Array(bytes) }

    mutating func parseDocument() throws(WireError) -> Value {
        let value = try parseValue(depth: 0)
        skipSpace()
        guard index == bytes.count else { throw fail("trailing bytes after the JSON document") }
        return value
    }

    private func fail(_ why: String) -> WireError { WireError(.malformed, "original-protocol EXEC JSON: \(why)") }

    private mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0a, 0x0d].contains(bytes[index]) { index += 1 }
    }

    private mutating func expect(_ byte: UInt8) throws(WireError) {
        skipSpace()
        guard index < bytes.count, bytes[index] == byte else { throw fail("expected `\(Character(Unicode.Scalar(byte)))`") }
        index += 1
    }

    private mutating func parseValue(depth: Int) throws(WireError) -> Value {
        guard depth < Self.maximumDepth else { throw fail("nested too deeply") }
        skipSpace()
        guard index < bytes.count else { throw fail("ends early") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var members: [(String, Value)] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipSpace()
                guard case .string(let key) = try parseValue(depth: depth + 1) else { throw fail("an object key is not a string") }
                try expect(UInt8(ascii: ":"))
                members.append((String(decoding: key, as: UTF8.self), try parseValue(depth: depth + 1)))
                skipSpace()
                guard index < bytes.count else { throw fail("unterminated object") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect(UInt8(ascii: "}"))
                return .object(members)
            }
        case UInt8(ascii: "["):
            index += 1
            var elements: [Value] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(elements) }
            while true {
                elements.append(try parseValue(depth: depth + 1))
                skipSpace()
                guard index < bytes.count else { throw fail("unterminated array") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                try expect(UInt8(ascii: "]"))
                return .array(elements)
            }
        case UInt8(ascii: "\""):
            index += 1
            var text: [UInt8] = []
            while true {
                guard index < bytes.count else { throw fail("unterminated string") }
                let byte = bytes[index]
                index += 1
                if byte == UInt8(ascii: "\"") { return .string(text) }
                guard byte == UInt8(ascii: "\\") else { text.append(byte); continue }
                guard index < bytes.count else { throw fail("unterminated escape") }
                let escaped = bytes[index]
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escaped)
                case UInt8(ascii: "b"): text.append(0x08)
                case UInt8(ascii: "f"): text.append(0x0c)
                case UInt8(ascii: "n"): text.append(0x0a)
                case UInt8(ascii: "r"): text.append(0x0d)
                case UInt8(ascii: "t"): text.append(0x09)
                case UInt8(ascii: "u"):
                    guard index + 4 <= bytes.count,
                        let code = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16)
                    else { throw fail("bad \\u escape") }
                    index += 4
                    // json-c escapes control characters only; a lone surrogate cannot be a path byte.
                    guard let scalar = Unicode.Scalar(code) else { throw fail("\\u escape of a surrogate") }
                    text += Array(String(Character(scalar)).utf8)
                default: throw fail("unknown escape")
                }
            }
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let start = index
            index += 1
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard let value = Int64(String(decoding: bytes[start..<index], as: UTF8.self)) else {
                throw fail("a number is out of range")
            }
            return .number(value)
        default:
            for word in ["true", "false", "null"] where bytes[index...].starts(with: word.utf8) {
                index += word.utf8.count
                return .literal
            }
            throw fail("unexpected byte 0x\(String(bytes[index], radix: 16))")
        }
    }
}

import DPUSystem
import Glibc

/// dpuctl's one configuration format (`/etc/dpuctl/dpuctl.conf`, mount plans):
///
/// ```
/// # comment (also `;`)
/// [section]              # or [section ARGUMENT], e.g. [mount /another_rootfs/proc]
/// key = value            # white space around key and value is ignored; a key may repeat
/// ```
///
/// Parsing is strict: every error names the file, the line and what was expected.
public struct ConfigFile: Sendable {
    public var path: String
    public var sections: [ConfigSection]

    /// Parses `text`; `path` is only used in error messages.
    public init(text: String, path: String) throws(ConfigError) {
        self.path = path
        sections = []
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else {
                    throw ConfigError(path: path, line: lineNumber, "expected `]` at the end of the section header")
                }
                let inner = line.dropFirst().dropLast().trimmingWhitespace()
                let parts = inner.split(separator: " ", maxSplits: 1).map { $0.trimmingWhitespace() }
                guard let name = parts.first, !name.isEmpty,
                    name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
                else {
                    throw ConfigError(path: path, line: lineNumber, "expected a section name like [rexec] or [mount /path]")
                }
                sections.append(ConfigSection(name: name, argument: parts.count > 1 ? parts[1] : nil, line: lineNumber, file: path))
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigError(path: path, line: lineNumber, "expected `key = value`, `[section]` or a # comment")
            }
            let key = line[..<equals].trimmingWhitespace()
            let value = line[line.index(after: equals)...].trimmingWhitespace()
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw ConfigError(path: path, line: lineNumber, "expected a key name (letters, digits, - and _) before `=`")
            }
            guard !sections.isEmpty else {
                throw ConfigError(path: path, line: lineNumber, "`\(key)` is outside any [section]")
            }
            sections[sections.count - 1].entries.append(ConfigEntry(key: key, value: value, line: lineNumber))
        }
    }

    /// Reads and parses `path`. A missing file is nil when `optional` (the built-in defaults apply).
    public static func load(_ path: String, optional: Bool) throws(ConfigError) -> ConfigFile? {
        let text: String
        do {
            text = try readTextFile(path, limit: 4 << 20)
        } catch {
            if optional && error.errno == .noSuchFileOrDirectory { return nil }
            throw ConfigError(path: path, line: nil, "cannot read: \(error.errno)")
        }
        return try ConfigFile(text: text, path: path)
    }

    /// Sections named `name`, in file order.
    public func sections(named name: String) -> [ConfigSection] { sections.filter { $0.name == name } }

    /// Refuses section names outside `known`.
    public func rejectUnknownSections(_ known: Set<String>) throws(ConfigError) {
        for section in sections where !known.contains(section.name) {
            throw ConfigError(
                path: path, line: section.line,
                "unknown section [\(section.name)]; expected one of \(known.sorted().map { "[\($0)]" }.joined(separator: ", "))")
        }
    }
}

public struct ConfigEntry: Sendable, Equatable {
    public var key: String
    public var value: String
    public var line: Int
}

public struct ConfigSection: Sendable {
    public var name: String
    public var argument: String?
    public var line: Int
    public var file: String
    public var entries: [ConfigEntry] = []

    /// All values of `key`.
    public func values(_ key: String) -> [ConfigEntry] { entries.filter { $0.key == key } }

    /// The single value of `key`; a repeated key is an error.
    public func value(_ key: String) throws(ConfigError) -> ConfigEntry? {
        let all = values(key)
        if all.count > 1 {
            throw ConfigError(path: file, line: all[1].line, "`\(key)` is given twice in [\(name)] (first on line \(all[0].line))")
        }
        return all.first
    }

    /// Refuses keys outside `known`.
    public func rejectUnknownKeys(_ known: Set<String>) throws(ConfigError) {
        for entry in entries where !known.contains(entry.key) {
            throw ConfigError(
                path: file, line: entry.line,
                "unknown key `\(entry.key)` in [\(name)]; expected one of \(known.sorted().joined(separator: ", "))")
        }
    }

    /// An error pointing at `entry`.
    public func error(_ entry: ConfigEntry, _ message: String) -> ConfigError {
        ConfigError(path: file, line: entry.line, message)
    }

    /// `key` parsed as an endpoint URL.
    public func endpoint(_ key: String) throws(ConfigError) -> Endpoint? {
        guard let entry = try value(key) else { return nil }
        do { return try Endpoint(parsing: entry.value) } catch { throw self.error(entry, error.description) }
    }

    /// `key` as yes/no (also true/false, on/off, 1/0).
    public func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let entry = try value(key) else { return nil }
        switch entry.value.lowercased() {
        case "yes", "true", "on", "1": return true
        case "no", "false", "off", "0": return false
        default: throw self.error(entry, "expected yes or no, got `\(entry.value)`")
        }
    }

    /// `key` as an integer within `range`.
    public func integer(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let entry = try value(key) else { return nil }
        guard let number = Int(entry.value), range.contains(number) else {
            throw self.error(entry, "expected a number from \(range.lowerBound) to \(range.upperBound), got `\(entry.value)`")
        }
        return number
    }

    /// `key` as an absolute path.
    public func path(_ key: String) throws(ConfigError) -> String? {
        guard let entry = try value(key) else { return nil }
        guard entry.value.hasPrefix("/") else { throw self.error(entry, "expected an absolute path, got `\(entry.value)`") }
        return entry.value
    }
}

/// A configuration problem, located: `FILE:LINE: message`.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int?
    public var message: String

    public init(path: String, line: Int?, _ message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "\(path):\(line): \(message)" }
        return "\(path): \(message)"
    }
}

extension StringProtocol {
    /// The string without leading and trailing spaces and tabs (and a CR from a DOS line end).
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}

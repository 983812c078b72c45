import Glibc
import Logging

/// Logs one line per message to stderr, the daemon convention: under systemd the journal adds time and
/// unit, so a line is `<priority>name: message`; on a terminal it is `name: level: message`.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let name: String
    private let journal: Bool

    public init(name: String, level: Logger.Level = .info) {
        self.name = name
        self.logLevel = level
        // JOURNAL_STREAM is set by systemd when stderr is connected to the journal.
        self.journal = getenv("JOURNAL_STREAM") != nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let suffix = fields.isEmpty ? "" : " " + fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let line: String
        if journal {
            line = "<\(priority(event.level))>\(name): \(event.message)\(suffix)\n"
        } else {
            line = "\(name): \(event.level): \(event.message)\(suffix)\n"
        }
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    private func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// A logger for `name` using this handler (no global bootstrap needed).
    public static func logger(_ name: String, level: Logger.Level = .info) -> Logger {
        Logger(label: name) { _ in StderrLogHandler(name: name, level: level) }
    }
}

import SystemPackage

/// An error from the system layer: the errno, the call that failed and what it was applied to.
///
/// Components add their own context on top; the CLI prints `description` as the last part of its one-line
/// message, e.g. "connect `/var/run/rexec/rexec_uds.sock`: No such file or directory".
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The errno the call returned.
    public var errno: Errno
    /// The system call or step that failed ("connect", "mount", "execve").
    public var operation: String
    /// The path, address or other object the call was applied to, if any.
    public var subject: String?

    public init(_ errno: Errno, _ operation: String, _ subject: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.subject = subject
    }

    public var description: String {
        if let subject { return "\(operation) `\(subject)`: \(errno.description)" }
        return "\(operation): \(errno.description)"
    }
}

/// Why `rexec` could not stand in for the remote program. The kind decides the exit status, chosen as a
/// shell would (127 not found, 126 cannot execute) or, for rexec's own failures, 255 like ssh.
public struct RexecError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Kind: Hashable, Sendable {
        public let exitStatus: Int32
        private let name: String
        private init(_ name: String, _ status: Int32) {
            self.name = name
            exitStatus = status
        }
        /// A bad option or address (64, argument-parser's usage status).
        public static let usage = Kind("usage", 64)
        /// No connection to the server.
        public static let connection = Kind("connection", 255)
        /// The key handshake failed.
        public static let authentication = Kind("authentication", 255)
        /// The peer broke the protocol.
        public static let protocolError = Kind("protocol", 255)
        /// The program does not exist on the peer.
        public static let notFound = Kind("not found", 127)
        /// It exists but cannot be executed, or the whitelist does not allow it.
        public static let notExecutable = Kind("not executable", 126)
        /// The peer could not start it for another reason.
        public static let startFailed = Kind("start failed", 255)
        /// The start gate (REXEC_HANDSHAKE_RD/WR) said no, as the original: status 1.
        public static let vetoed = Kind("vetoed", 1)
        /// The server stopped or the connection broke while the program ran.
        public static let disconnected = Kind("disconnected", 255)
        /// Something failed on this side (signals, fds).
        public static let local = Kind("local", 255)
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var exitStatus: Int32 { kind.exitStatus }
    public var description: String { message }
}

/// How the stand-in should end: the remote program's exit, reproduced.
public enum RexecOutcome: Sendable, Equatable {
    case exit(Int32)
    case signal(Int32)
}

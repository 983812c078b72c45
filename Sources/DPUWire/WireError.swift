/// Why bytes from a peer were refused. Every decoder in DPUWire throws this and nothing else; the
/// connection that produced it is closed, no other connection is affected.
public struct WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An open set of error kinds: a new kind breaks no `switch` elsewhere.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: String, Sendable {
            case truncated, oversized, malformed, badMagic, unsupportedVersion, wrongService
            case authenticationFailed, unknownMessage, flowControl, protocolViolation
        }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// The input ended inside a field.
        public static let truncated = Code(.truncated)
        /// A length is above its hard limit.
        public static let oversized = Code(.oversized)
        /// A field has a value it can never have.
        public static let malformed = Code(.malformed)
        /// The connection does not start with dpuctl's magic.
        public static let badMagic = Code(.badMagic)
        /// No protocol version both sides speak.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// The peer speaks another dpuctl service (rexec to a qtfs engine, say).
        public static let wrongService = Code(.wrongService)
        /// The peer did not prove it holds the key, or refused our proof.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// A frame or message type this version does not know.
        public static let unknownMessage = Code(.unknownMessage)
        /// The peer sent more than its flow-control window allowed.
        public static let flowControl = Code(.flowControl)
        /// A valid message at a time it is not allowed.
        public static let protocolViolation = Code(.protocolViolation)

        public var description: String { kind.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

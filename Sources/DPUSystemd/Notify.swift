import CSystemd
import DPUSystem
import Glibc
import SystemPackage

/// The service manager's notification protocol (sd_notify(3)) and socket activation
/// (sd_listen_fds_with_names(3)), through libsystemd itself.
public enum Systemd {
    /// One assignment of an sd_notify message.
    public enum State: Sendable, Equatable {
        /// READY=1: start-up finished, listeners bound.
        case ready
        /// STATUS=…: one line for `systemctl status`.
        case status(String)
        /// STOPPING=1: shutdown began.
        case stopping
        /// RELOADING=1 (with MONOTONIC_USEC=, which systemd ≥ 253 requires for Type=notify-reload).
        case reloading
        /// WATCHDOG=1: still alive.
        case watchdog
        /// ERRNO=n: why we are failing.
        case errno(Int32)
        /// MAINPID=n.
        case mainPID(pid_t)

        var assignment: String {
            switch self {
            case .ready: "READY=1"
            case .status(let text): "STATUS=" + text.split(whereSeparator: \.isNewline).joined(separator: " ")
            case .stopping: "STOPPING=1"
            case .reloading:
                "RELOADING=1\nMONOTONIC_USEC=\(Systemd.monotonicMicroseconds())"
            case .watchdog: "WATCHDOG=1"
            case .errno(let value): "ERRNO=\(value)"
            case .mainPID(let pid): "MAINPID=\(pid)"
            }
        }
    }

    /// Sends `states` as one message. Returns false when not running under a service manager
    /// (no NOTIFY_SOCKET); throws when the manager is there but the message could not be sent.
    @discardableResult
    public static func notify(_ states: State...) throws(SystemError) -> Bool {
        try notify(states)
    }

    @discardableResult
    public static func notify(_ states: [State]) throws(SystemError) -> Bool {
        // Not under a service manager: nothing to say, and no reason to load libsystemd.
        guard getenv("NOTIFY_SOCKET") != nil else { return false }
        let message = states.map(\.assignment).joined(separator: "\n")
        guard let notify = LibSystemd.shared.notify else {
            throw SystemError(.noSuchFileOrDirectory, "sd_notify (dlopen libsystemd.so.0)", LibSystemd.shared.loadError)
        }
        // sd_notifyf is variadic and cannot be called from Swift; the message is formatted here.
        let result = notify(0, message)
        if result < 0 { throw SystemError(Errno(rawValue: -result), "sd_notify", message) }
        return result > 0
    }

    /// A socket handed over by the service manager (or `systemd-socket-activate`).
    public struct ListenedSocket: Sendable {
        public var fd: FileDescriptor
        /// `FileDescriptorName=` of the socket unit, "unknown" when it has none.
        public var name: String
    }

    /// The sockets passed by socket activation, close-on-exec. The environment variables are removed so
    /// that no child believes the sockets are its own. Call it once, before threads start.
    public static func listenedSockets() -> [ListenedSocket] {
        guard getenv("LISTEN_FDS") != nil, let listen = LibSystemd.shared.listenFDsWithNames else { return [] }
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let count = listen(1, &names)
        guard count > 0 else { return [] }
        defer { free(names) }
        return (0..<Int(count)).map { index in
            let name = names?[index].map { pointer -> String in
                defer { free(pointer) }
                return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
            }
            return ListenedSocket(fd: FileDescriptor(rawValue: SD_LISTEN_FDS_START + Int32(index)), name: name ?? "unknown")
        }
    }

    /// The watchdog interval the manager expects pings within (WatchdogSec=), or nil when off.
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard getenv("WATCHDOG_USEC") != nil, let enabled = LibSystemd.shared.watchdogEnabled,
            enabled(0, &microseconds) > 0, microseconds > 0
        else { return nil }
        return .microseconds(Int64(microseconds))
    }

    static func monotonicMicroseconds() -> UInt64 { monotonicNanoseconds() / 1000 }
}

/// libsystemd, loaded on first use (see Sources/CSystemd/shim.h for why it is not linked).
final class LibSystemd: Sendable {
    static let shared = LibSystemd()

    let notify: cdpu_sd_notify_fn?
    let listenFDsWithNames: cdpu_sd_listen_fds_with_names_fn?
    let watchdogEnabled: cdpu_sd_watchdog_enabled_fn?
    let loadError: String?

    private init() {
        guard let handle = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL) else {
            loadError = dlerror().map { String(decoding: UnsafeRawBufferPointer(start: $0, count: strlen($0)), as: UTF8.self) }
            notify = nil
            listenFDsWithNames = nil
            watchdogEnabled = nil
            return
        }
        loadError = nil
        notify = unsafeBitCast(dlsym(handle, "sd_notify"), to: cdpu_sd_notify_fn?.self)
        listenFDsWithNames = unsafeBitCast(dlsym(handle, "sd_listen_fds_with_names"), to: cdpu_sd_listen_fds_with_names_fn?.self)
        watchdogEnabled = unsafeBitCast(dlsym(handle, "sd_watchdog_enabled"), to: cdpu_sd_watchdog_enabled_fn?.self)
    }
}

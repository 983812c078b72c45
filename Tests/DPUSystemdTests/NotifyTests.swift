import DPUSystem
import Glibc
import Logging
import ServiceLifecycle
import SystemPackage
import Testing

@testable import DPUSystemd

/// A NOTIFY_SOCKET of our own, the way a service manager listens.
final class NotifyListener: @unchecked Sendable {
    // A path of its own: a previous test's listener may be released after this one is made.
    let path = "/tmp/dpusystemd-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).notify"
    let fd: FileDescriptor

    init() throws {
        unlink(path)
        fd = try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_DGRAM.rawValue))
        try fd.bind(try SocketAddress(unixPath: path))
        setenv("NOTIFY_SOCKET", path, 1)
    }

    /// The next message, waiting up to `seconds`. It waits by sleeping, not in poll(2): a test's task that
    /// blocked would hold a thread of the concurrency pool, which the daemon under test may need to send
    /// the very message awaited (two threads on a two-core machine).
    func next(seconds: Int = 10) async throws -> String? {
        let end = ContinuousClock.now + .seconds(seconds)
        while true {
            var set = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
            if try poll(&set, timeoutMilliseconds: 0, retryOnInterrupt: true) > 0 { break }
            if ContinuousClock.now > end { return nil }
            try await Task.sleep(for: .milliseconds(5))
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = try buffer.withUnsafeMutableBytes { try fd.receive(into: $0) }?.bytes ?? 0
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    /// Waits for a message containing `fragment`, skipping others (watchdog pings, STATUS updates).
    func waitFor(_ fragment: String) async throws -> String? {
        for _ in 0..<20 {
            guard let message = try await next() else { return nil }
            if message.contains(fragment) { return message }
        }
        return nil
    }

    deinit {
        if let current = getenv("NOTIFY_SOCKET"), String(cString: current) == path { unsetenv("NOTIFY_SOCKET") }
        fd.closeQuietly()
        unlink(path)
    }
}

actor Recorder {
    var events: [String] = []
    func add(_ event: String) { events.append(event) }
}

struct TestDaemon: Daemon {
    let recorder: Recorder
    let failStart: Bool

    func start() async throws {
        await recorder.add("start")
        if failStart { throw SystemError(.addressInUse, "bind", "tcp://127.0.0.1:1") }
    }
    func serve() async throws {
        await recorder.add("serve")
        // Serve until asked to shut down gracefully, as a real daemon stops accepting.
        try await gracefulShutdown()
        await recorder.add("drained")
    }
    func reload() async throws { await recorder.add("reload") }
    func status() -> String { "serving 0 sessions" }
}

@Suite(.serialized) struct SystemdNotify {
    @Test func withoutAServiceManagerNothingIsSent() throws {
        unsetenv("NOTIFY_SOCKET")
        #expect(try Systemd.notify(.ready) == false)
    }

    @Test func messagesReachTheNotifySocket() async throws {
        let listener = try NotifyListener()
        #expect(try Systemd.notify(.ready, .status("two\nlines")) == true)
        #expect(try await listener.next() == "READY=1\nSTATUS=two lines")
        try Systemd.notify(.errno(98), .mainPID(42))
        #expect(try await listener.next() == "ERRNO=98\nMAINPID=42")
        try Systemd.notify(.reloading)
        #expect(try await listener.next()?.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") == true)
    }

    @Test func aBrokenNotifySocketIsAnError() {
        setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        #expect(throws: SystemError.self) { try Systemd.notify(.ready) }
    }

    @Test func theRunnerReportsReadyReloadsOnHangupAndStopsOnTerm() async throws {
        let listener = try NotifyListener()
        let recorder = Recorder()
        let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        let run = Task { try await DaemonRunner.run(TestDaemon(recorder: recorder, failStart: false), logger: logger, shutdownLimit: .seconds(5)) }
        #expect(try await listener.waitFor("READY=1") == "READY=1\nSTATUS=serving 0 sessions")
        // Give the group a moment to install its signal handlers before signalling ourselves.
        try await Task.sleep(for: .milliseconds(300))
        kill(getpid(), SIGHUP)
        #expect(try await listener.waitFor("RELOADING=1") != nil)
        #expect(try await listener.waitFor("READY=1") != nil)
        kill(getpid(), SIGTERM)
        #expect(try await listener.waitFor("STOPPING=1") != nil)
        try await run.value
        let events = await recorder.events
        #expect(events == ["start", "serve", "reload", "drained"])
    }

    @Test func aFailedStartReportsTheErrnoAndNeverReady() async throws {
        let listener = try NotifyListener()
        let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        await #expect(throws: SystemError.self) {
            try await DaemonRunner.run(TestDaemon(recorder: Recorder(), failStart: true), logger: logger)
        }
        #expect(try await listener.next() == "ERRNO=\(EADDRINUSE)")
    }
}

import DPUSystem
import Logging
import ServiceLifecycle
import UnixSignals

/// A long-running applet (rexec_server, udsproxyd, qtfs_engine). The runner calls `start`, reports READY,
/// then `serve`s until SIGTERM/SIGINT, calling `reload` on SIGHUP.
public protocol Daemon: Sendable {
    /// Binds listeners and loads configuration. Throwing here fails start-up: nothing is READY.
    func start() async throws
    /// Serves until graceful shutdown is requested (stop accepting, drain what is in flight, return) or
    /// the task is cancelled (the shutdown limit passed).
    func serve() async throws
    /// Reloads configuration (whitelists, keys) without dropping work in progress.
    func reload() async throws
    /// One line for STATUS=: what the daemon is doing now.
    func status() -> String
}

/// Runs a `Daemon` as a swift-service-lifecycle service group and speaks sd_notify for it.
public enum DaemonRunner {
    /// - Parameter shutdownLimit: how long a graceful shutdown may take before work is cancelled. Keep it
    ///   below the unit's TimeoutStopSec.
    public static func run(_ daemon: some Daemon, logger: Logger, shutdownLimit: Duration = .seconds(20)) async throws {
        do {
            try await daemon.start()
        } catch {
            let code = (error as? SystemError)?.errno.rawValue ?? 0
            if code != 0 { notify([.errno(code)], logger) }
            throw error
        }
        notify([.ready, .status(daemon.status())], logger)
        logger.info("ready: \(daemon.status())")

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: ServeService(daemon: daemon, logger: logger)),
            .init(service: ReloadService(daemon: daemon, logger: logger), successTerminationBehavior: .ignore),
        ]
        if let interval = Systemd.watchdogInterval() {
            services.append(.init(service: WatchdogService(interval: interval, logger: logger), successTerminationBehavior: .ignore))
        }
        var configuration = ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = shutdownLimit
        // After the limit work is cancelled; give cancellation a bound too, then the process exits anyway.
        configuration.maximumCancellationDuration = .seconds(5)
        let group = ServiceGroup(configuration: configuration)
        try await group.run()
    }

    static func notify(_ states: [Systemd.State], _ logger: Logger) {
        do {
            try Systemd.notify(states)
        } catch {
            logger.error("cannot notify the service manager: \(error)")
        }
    }
}

private struct ServeService<D: Daemon>: Service {
    let daemon: D
    let logger: Logger

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await daemon.serve()
        } onGracefulShutdown: {
            logger.info("stopping: no new connections; finishing what is in flight")
            DaemonRunner.notify([.stopping, .status("stopping")], logger)
        }
    }
}

private struct ReloadService<D: Daemon>: Service {
    let daemon: D
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            DaemonRunner.notify([.reloading], logger)
            do {
                try await daemon.reload()
                logger.info("reloaded configuration")
            } catch {
                // A bad new configuration keeps the old one: never drop service over a typo.
                logger.error("reload failed, keeping the previous configuration: \(error)")
            }
            DaemonRunner.notify([.ready, .status(daemon.status())], logger)
        }
    }
}

private struct WatchdogService: Service {
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            DaemonRunner.notify([.watchdog], logger)
            try? await Task.sleep(for: interval / 2)
        }
    }
}

import CFuse3
import DPUSystem
import DPUWire
import Glibc
import Logging
import QTFS
import SystemPackage
import Synchronization

/// Why a qtfs mount failed.
public struct QTFSMountError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The DPU's qtfs client: a FUSE mount backed by the engine.
public enum QTFSMount {
    /// Mounts `options.hostPath` from the engine at `endpoint` on `options.mountpoint` and serves it until
    /// it is unmounted (`umount`, SIGTERM, SIGINT). `ready` is called once, when the mount is live.
    public static func run(
        _ options: QTFSMountOptions, endpoint: Endpoint, key: PreSharedKey?, logger: Logger,
        ready: @escaping @Sendable () -> Void
    ) async throws {
        var options = options
        // Opened before the mount, which may cover /proc.
        let processes = try LocalProcesses(
            localProc: options.localProc, commands: options.localCommands, standIns: options.rexecPidDirectory)
        let local = options.proc ? processes : nil
        let client = EngineClient(
            endpoint: endpoint, key: key, hostPath: Array(options.hostPath.utf8), connections: options.connections,
            patience: .seconds(options.patience), logger: logger)
        do {
            try client.start()
        } catch {
            throw QTFSMountError("cannot attach \(options.hostPath) from the engine at \(endpoint): \(error)")
        }
        guard let export = client.export, export.root.mode & 0o170000 == 0o040000 else {
            client.stop()
            throw QTFSMountError("\(options.hostPath) is not a directory on the host")
        }
        if export.readOnly && !options.kernelOptions.contains("ro") { options.kernelOptions.append("ro") }
        let filesystem = try QTFSFilesystem(client: client, options: options, local: local, processes: processes, logger: logger)
        QTFSFilesystem.current = filesystem
        let session = try FuseSession(filesystem: filesystem, options: options)
        defer { session.destroy() }
        logger.info("mounted \(options.hostPath) from \(endpoint) on \(options.mountpoint)")
        ready()
        await session.serve(logger: logger) {
            filesystem.sockets?.stop()
            filesystem.terminals?.stop()
        }
        filesystem.sockets?.stop()
        filesystem.terminals?.stop()
        filesystem.placements.stop()
        client.stop()
        logger.info("unmounted \(options.mountpoint)")
    }
}

/// A mounted libfuse session and the thread that runs its loop.
final class FuseSession: @unchecked Sendable {
    private let session: OpaquePointer
    private let filesystem: Unmanaged<QTFSFilesystem>
    private let mountpoint: String
    /// The connection's number in /sys/fs/fuse/connections (the mount's minor device number).
    private var connection: String?
    private var arguments: [UnsafeMutablePointer<CChar>?]

    init(filesystem: QTFSFilesystem, options: QTFSMountOptions) throws {
        mountpoint = options.mountpoint
        arguments = ["mount.qtfs", "-o", options.fuseOptions].map { (text: String) -> UnsafeMutablePointer<CChar>? in strdup(text) }
        var args = cfuse_args(Int32(arguments.count), &arguments)
        var operations = QTFSFilesystem.operations(extendedAttributes: options.extendedAttributes)
        self.filesystem = Unmanaged.passRetained(filesystem)
        guard let session = fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, self.filesystem.toOpaque())
        else {
            fuse_opt_free_args(&args)
            self.filesystem.release()
            for argument in arguments { free(argument) }
            throw QTFSMountError("libfuse refused the options `\(options.fuseOptions)`")
        }
        fuse_opt_free_args(&args)
        self.session = session
        filesystem.session = session
        guard fuse_session_mount(session, options.mountpoint) == 0 else {
            fuse_session_destroy(session)
            self.filesystem.release()
            throw QTFSMountError("cannot mount on \(options.mountpoint) (is it a directory? are you root? is /dev/fuse there?)")
        }
        // Learnt now: after a lazy unmount the mount is no longer listed. (Reading mountinfo sends
        // nothing to the file system, which is not served yet.)
        connection = (try? MountInfo.read())?.last { $0.mountPoint == options.mountpoint && $0.fileSystemType == "fuse.qtfs" }
            .flatMap { $0.device.split(separator: ":").last.map(String.init) }
        filesystem.connection.withLock { [connection] in $0 = connection }
    }

    /// Runs the multithreaded loop until the kernel ends the connection (the file system was unmounted
    /// and its last user is gone) or a stop is forced.
    /// `release` is called when the mount is being unmounted (SIGTERM, or someone's `umount -l`): bound
    /// sockets hold the file system busy and must go first.
    func serve(logger: Logger, release: @escaping @Sendable () -> Void) async {
        ThreadInterruption.install()
        let stopper = try? Stopper(session: self, logger: logger, release: release)
        try? watchUnmount(release)
        do {
            try await OSThread.run(name: "qtfs-fuse") { [self] in
                stopper?.loopThread.withLock { $0 = .current }
                let config = fuse_loop_cfg_create()
                fuse_loop_cfg_set_max_threads(config, 64)
                fuse_loop_cfg_set_idle_threads(config, 8)
                let result = fuse_session_loop_mt(session, config)
                fuse_loop_cfg_destroy(config)
                if result < 0 { logger.error("the FUSE loop ended: \(Errno(rawValue: -result))") }
            }
        } catch {
            logger.error("cannot start the FUSE loop: \(error)")
        }
        stopper?.finish()
    }

    /// Calls `release` once the mount is no longer in this namespace's mount table (a lazy unmount by
    /// someone else): the kernel ends the connection only when nothing holds the file system.
    private func watchUnmount(_ release: @escaping @Sendable () -> Void) throws {
        guard let connection else { return }
        let table = try FileDescriptor.openPath("/proc/self/mountinfo", flags: O_RDONLY)
        try OSThread.start(name: "qtfs-mounts") {
            defer { table.closeQuietly() }
            while true {
                // mountinfo polls with POLLPRI when the table changes; the timeout is a safety net.
                var set = [pollfd(fd: table.rawValue, events: Int16(POLLPRI), revents: 0)]
                _ = try? DPUSystem.poll(&set, timeoutMilliseconds: 5000, retryOnInterrupt: true)
                guard let entries = try? MountInfo.read() else { continue }
                if !entries.contains(where: { $0.device.hasSuffix(":" + connection) && $0.fileSystemType == "fuse.qtfs" }) {
                    release()
                    return
                }
            }
        }
    }

    /// Lazy unmount: the mount point disappears now; the file system lives on until its last user goes,
    /// and then the kernel ends the connection, which ends the loop.
    func detach() {
        try? Mount.unmount(mountpoint, flags: .detach)
    }

    /// Ends the connection at once: users still inside get ENOTCONN. Through the fusectl file system if it
    /// is mounted, else by leaving the loop (closing /dev/fuse ends the connection too).
    func abort(loopThread: OSThread?) {
        if let connection, let fd = try? FileDescriptor.openPath("/sys/fs/fuse/connections/\(connection)/abort", flags: O_WRONLY) {
            _ = [UInt8(ascii: "1")].withUnsafeBytes { try? fd.writeOnce($0) }
            fd.closeQuietly()
        }
        fuse_session_exit(session)
        if let loopThread { ThreadInterruption.interrupt(loopThread) }
    }

    func destroy() {
        fuse_session_unmount(session)
        fuse_session_destroy(session)
        filesystem.release()
        for argument in arguments { free(argument) }
    }
}

/// Turns SIGTERM, SIGINT and SIGHUP into an orderly stop: the first detaches the mount, a second one (or
/// 10 s with users still inside) ends the connection.
final class Stopper: Sendable {
    private let pipe: (read: FileDescriptor, write: FileDescriptor)
    let loopThread = Mutex<OSThread?>(nil)
    private let finished = Atomic<Bool>(false)

    nonisolated(unsafe) private static var writeEnd: Int32 = -1

    init(session: FuseSession, logger: Logger, release: @escaping @Sendable () -> Void) throws(SystemError) {
        pipe = try FileDescriptor.makePipe()
        Stopper.writeEnd = pipe.write.rawValue
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                var byte = UInt8(truncatingIfNeeded: signal)
                _ = write(Stopper.writeEnd, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(signal, &action, nil)
        }
        let read = pipe.read
        try OSThread.start(name: "qtfs-signals") { [self] in
            var detached = false
            while true {
                var set = [pollfd(fd: read.rawValue, events: Int16(POLLIN), revents: 0)]
                let ready = (try? DPUSystem.poll(&set, timeoutMilliseconds: detached ? 10_000 : -1, retryOnInterrupt: true)) ?? 0
                if finished.load(ordering: .relaxed) { return }
                var byte: UInt8 = 0
                if ready > 0 { _ = try? withUnsafeMutableBytes(of: &byte) { try read.readOnce(into: $0) } }
                if ready > 0 && byte == 0 { return }
                if ready > 0 && Int32(byte) == SIGHUP { continue }
                if !detached && ready > 0 {
                    logger.info("signal \(Signals.name(of: Int32(byte))): unmounting")
                    release()
                    session.detach()
                    detached = true
                } else {
                    logger.warning("still in use: ending the connection")
                    session.abort(loopThread: loopThread.withLock { $0 })
                    return
                }
            }
        }
    }

    /// The loop ended: let the signal thread go.
    func finish() {
        finished.store(true, ordering: .relaxed)
        var byte: UInt8 = 0
        _ = try? withUnsafeBytes(of: &byte) { try pipe.write.writeOnce($0) }
    }
}

import ArgumentParser
import DPUConfig
import DPUSystem
import DPUSystemd
import Glibc
import QTFS
import QTFSFuse
import SystemPackage

/// `qtfs_engine` / `engine`: the host's file server.
struct QTFSEngineCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("qtfs-engine"),
            abstract: "Serve whitelisted host paths to the DPU's qtfs mounts.",
            discussion: """
                Every request is confined beneath an exported path and checked against the whitelist \
                (/etc/qtfs/whitelist, the original's format; [qtfs-engine] read-only-export = PATH in the \
                dpuctl configuration adds read-only exports). Listens on --listen addresses, sockets passed by \
                systemd, [qtfs-engine] listen = URL, or vsock://any:12345. The original's `engine 4096 16` is \
                accepted: the first number (its per-thread buffer) is checked and no longer needed, the second \
                is the number of worker threads. SIGHUP reloads the whitelist.
                """)
    }

    @OptionGroup var daemon: DaemonOptions
    @OptionGroup var whitelist: WhitelistOption

    @Option(help: ArgumentHelp("Worker threads for file operations.", valueName: "count"))
    var workers: Int?

    @Argument(help: ArgumentHelp("The original's positional form: BUFFER_SIZE WORKERS.", visibility: .hidden))
    var legacy: [String] = []

    mutating func validate() throws {
        guard legacy.isEmpty || legacy.count == 2 else {
            throw ValidationError("expected no positional arguments or the original's BUFFER_SIZE WORKERS (engine 4096 16)")
        }
        if legacy.count == 2 {
            guard let buffer = Int(legacy[0]), (1...65536).contains(buffer) else {
                throw ValidationError("BUFFER_SIZE `\(legacy[0])` must be a number from 1 to 65536")
            }
            guard let count = Int(legacy[1]), (1...1024).contains(count) else {
                throw ValidationError("WORKERS `\(legacy[1])` must be a number from 1 to 1024")
            }
            _ = buffer
            if workers == nil { workers = count }
        }
        if let workers, !(1...1024).contains(workers) { throw ValidationError("--workers must be from 1 to 1024") }
    }

    func run() async throws {
        let logger = StderrLogHandler.logger(Invocation.commandName("qtfs_engine"))
        try await reportingErrors(Invocation.commandName("qtfs_engine")) {
            let config = try ConfigFile.load(daemon.config, optional: daemon.config == ConfigDefaults.path)
            let section = config?.sections(named: "qtfs-engine").last
            var listeners: [QTFSListener] = try daemon.endpoints().map { .endpoint($0) }
            if listeners.isEmpty {
                listeners = ActivatedSockets.all.map { .activated($0.fd, name: $0.name) }
            }
            if listeners.isEmpty, let section {
                listeners = try section.values("listen").map { entry in
                    do { return .endpoint(try Endpoint(parsing: entry.value)) } catch { throw section.error(entry, "\(error)") }
                }
            }
            if listeners.isEmpty { listeners = [.endpoint(QTFSEngineConfiguration.defaultListen)] }
            let configured = try section?.integer("workers", in: 1...1024)
            let configuration = QTFSEngineConfiguration(
                listeners: listeners, whitelistPath: whitelist.whitelist ?? QTFSEngineConfiguration.defaultWhitelistPath,
                whitelistOptional: whitelist.whitelist == nil, configPath: daemon.config, keyPath: daemon.key,
                insecure: daemon.insecure, workers: workers ?? configured ?? 16)
            let engine = try QTFSEngine(configuration, logger: logger)
            try await DaemonRunner.run(engine, logger: logger)
        }
    }
}

/// `dpuctl qtfs SUBCOMMAND`.
struct QTFSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qtfs", abstract: "qtfs client commands.", subcommands: [QTFSMountCommand.self])
}

/// `mount.qtfs` / `dpuctl qtfs mount`: the DPU's FUSE client.
struct QTFSMountCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Invocation.commandName("mount"),
            abstract: "Mount a host path served by qtfs_engine (what `mount -t qtfs` runs).",
            discussion: """
                The mount shows as type fuse.qtfs. `-o proc` mounts the host's /proc, except that self, \
                thread-self and the DPU's own processes resolve to the local procfs (localproc=PATH, \
                default /local_proc; localcomm=NAME:NAME adds programs whose processes stay local), and the \
                pid of a local rexec client is the host process it stands in for (its pid file in \
                rexecpids=PATH, default /var/run/rexec/pids, which the DPU rootfs shares); such a pid written \
                to a cgroup's cgroup.procs, tasks or cgroup.threads through any qtfs mount is written as the \
                host's pid. Host \
                unix sockets on the mount are connectable through udsproxyd (udsproxy=PATH for its control \
                socket, nosockets to turn it off); host FIFOs are carried (localfifo keeps them local). \
                With ptybridge, the host's ptys (the numbered entries of /dev/pts) are links to terminals of \
                this machine that the client relays to them, so that `virsh console` opens one as a real \
                terminal; other device nodes are shown, not opened. Other \
                options: server=URL, key=FILE, connections=N, timeout=SECONDS (wait for the engine), \
                readahead=KB, entry_timeout=S and attr_timeout=S (default 1: a change made on the host shows \
                within them; 0: at once), prefetch=N (listings of up to N subdirectories fetched ahead of a \
                walk, default 1024; 0: off), noxattr (no extended attributes at all), acl and seclabel (also \
                carry POSIX ACLs and SELinux/Smack/AppArmor labels, which are left out by default: the DPU \
                checks the host's mode bits, not its ACLs, and the labels are the host's policy's), and ro, \
                nosuid, nodev (the default), dev, noexec. The engine's address comes from server=, --connect, \
                [qtfs] connect = URL in the \
                configuration, or vsock://2:12345. The client detaches once the mount is live; `umount` or \
                SIGTERM unmounts it.
                """)
    }

    @Option(name: .short, help: ArgumentHelp("Mount options, comma separated (repeatable).", valueName: "options"))
    var options: [String] = []

    @Flag(help: "Stay in the foreground instead of detaching once the mount is live.")
    var foreground = false

    @OptionGroup var client: ClientOptions

    // mount(8) passes these to helpers: sloppy, no mtab, verbose. Accepted, nothing to do.
    @Flag(name: .customShort("s"), help: .hidden) var sloppy = false
    @Flag(name: .customShort("n"), help: .hidden) var noMtab = false
    @Flag(name: .customShort("v"), help: .hidden) var verbose = false

    /// The detached child reports here that the mount is live.
    @Option(name: .customLong("ready-fd"), help: .hidden) var readyFD: Int32?

    @Argument(help: ArgumentHelp("The path on the host.", valueName: "host-path"))
    var source: String

    @Argument(help: ArgumentHelp("Where to mount it.", valueName: "mountpoint"))
    var mountpoint: String

    func run() async throws {
        let name = Invocation.commandName("mount.qtfs")
        try await reportingErrors(name) {
            guard source.hasPrefix("/") else {
                throw ValidationError("the host path `\(source)` must be absolute, as on the host (/var/lib/libvirt)")
            }
            var mount = QTFSMountOptions(hostPath: source, mountpoint: try Self.directory(mountpoint))
            for text in options { try mount.apply(text) }
            let endpoint = try mount.endpoint ?? connectEndpoint()
            let key = try PeerAuthentication.clientKey(for: endpoint, keyPath: mount.keyPath ?? client.key)
            if !foreground {
                return try detach()
            }
            let ready = readyFD
            // A daemon: a write to a connection or a log reader that has gone is an error, not death.
            Signals.ignore(SIGPIPE)
            do {
                try await QTFSMount.run(mount, endpoint: endpoint, key: key, logger: StderrLogHandler.logger(name)) {
                    guard let ready else { return }
                    let descriptor = FileDescriptor(rawValue: ready)
                    _ = try? "ready\n".utf8CString.withUnsafeBytes {
                        try descriptor.writeOnce(UnsafeRawBufferPointer(rebasing: $0.dropLast()))
                    }
                    descriptor.closeQuietly()
                }
            } catch let error as QTFSMountError {
                throw MountFailure(error.message)
            }
        }
    }

    /// --connect, else the configuration's [qtfs] connect, else the original's vsock address of the host.
    private func connectEndpoint() throws -> Endpoint {
        if let text = client.connect {
            do { return try Endpoint(parsing: text) } catch { throw ValidationError("--connect: \(error)") }
        }
        let config = try ConfigFile.load(client.config, optional: client.config == ConfigDefaults.path)
        if let section = config?.sections(named: "qtfs").last {
            try section.rejectUnknownKeys(["connect"])
            if let endpoint = try section.endpoint("connect") { return endpoint }
        }
        return .vsock(cid: 2, port: 12345)
    }

    /// The mount point as an absolute path; it must be a directory.
    static func directory(_ path: String) throws -> String {
        var absolute = path
        if !path.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
            guard getcwd(&buffer, buffer.count) != nil else { throw MountFailure("cannot find the current directory") }
            absolute = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
        }
        var info = stat()
        guard stat(absolute, &info) == 0 else { throw MountFailure("mount point \(absolute) does not exist") }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw MountFailure("mount point \(absolute) is not a directory") }
        return absolute
    }

    /// Starts the client again in the background (a fresh process: no fork after threads), waits until it
    /// says the mount is live, and returns; if it fails, its own message is already on stderr.
    private func detach() throws {
        var arguments = ["dpuctl", "qtfs", "mount", "--foreground", "--ready-fd", "3", "--key", client.key, "--config", client.config]
        if let connect = client.connect { arguments += ["--connect", connect] }
        for text in options { arguments += ["-o", text] }
        arguments += [source, try Self.directory(mountpoint)]
        let pipe = try FileDescriptor.makePipe()
        let null = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        defer { null.closeQuietly() }
        var environment: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            environment.append(String(cString: pointer))
            entry += 1
        }
        let pid: pid_t
        do {
            pid = try Spawn.start(SpawnRequest(
                path: "/proc/self/exe", arguments: arguments, environment: environment, workingDirectory: "/",
                fileDescriptors: [0: null, 1: null, 2: FileDescriptor(rawValue: 2), 3: pipe.write], newSession: true))
        } catch {
            pipe.read.closeQuietly()
            pipe.write.closeQuietly()
            throw error
        }
        pipe.write.closeQuietly()
        defer { pipe.read.closeQuietly() }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        while let count = try chunk.withUnsafeMutableBytes({ try pipe.read.readSome(into: $0) }), count > 0 {
            answer += chunk[..<count]
        }
        if String(decoding: answer, as: UTF8.self) == "ready\n" { return }
        // The child failed and said why on stderr; reap it and fail the way mount(8) expects.
        _ = try? ProcessHandle(pid: pid).wait()
        throw ExitCode(32)
    }
}

/// A mount that could not be made (mount(8) helpers exit 32 then).
struct MountFailure: Error, ExitStatusError, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
    var exitStatus: Int32 { 32 }
}

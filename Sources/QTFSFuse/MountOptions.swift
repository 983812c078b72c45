import DPUSystem
import Rexec
import UDSProxy

/// What `mount -t qtfs -o OPTIONS HOSTPATH MOUNTPOINT` asks for.
public struct QTFSMountOptions: Sendable, Equatable {
    /// The export: an absolute path on the host.
    public var hostPath: String
    public var mountpoint: String
    /// `proc`: the host's /proc, except that `self`, `thread-self` and the DPU's own processes resolve to
    /// the DPU's procfs (`localproc`).
    public var proc = false
    /// Where callers find the DPU's own procfs (`localproc=PATH`, default /local_proc as in the guide).
    public var localProc = "/local_proc"
    /// Process names whose pids always resolve locally in proc mode (`localcomm=a:b`), on top of the
    /// rules that look at the caller.
    public var localCommands: [String] = []
    /// Where the local rexec clients record the remote pid they stand in for (`rexecpids=PATH`), read
    /// outside any chroot: the DPU rootfs binds this machine's /var/run, so the clients inside it and this
    /// client outside see the same directory. A stand-in's pid shows the remote process in proc mode and
    /// is translated when written into a cgroup's process list.
    public var rexecPidDirectory = RexecDefaults.pidDirectory
    /// `server=URL` (also `addr=`): the engine. Otherwise from --connect or the configuration.
    public var endpoint: Endpoint?
    /// `key=FILE`.
    public var keyPath: String?
    /// `connections=N`: how many connections the pool keeps to the engine.
    public var connections = 4
    /// `entry_timeout=`, `attr_timeout=` (seconds) for normal exports; proc mode and pseudo files use 0.
    public var entryTimeout = 1.0
    public var attributeTimeout = 1.0
    /// `prefetch=N`: when a directory is listed, the listings of up to N of its subdirectories are fetched
    /// ahead, a few at a time, for a walk (`find`, `ls -R`, `du`) to find them here; 0 turns it off.
    public var prefetch = 1024
    /// `noxattr`: no extended attributes (the kernel then stops asking, which saves `ls -l` two requests
    /// per file; libvirt's ownership labels need them, so they are on by default).
    public var extendedAttributes = true
    /// `acl`, `seclabel`: also carry POSIX ACLs and LSM labels (see `ExtendedAttributePolicy`).
    public var carryACLs = false
    public var carrySecurityLabels = false
    /// `readahead=KB`: how far the kernel reads ahead of a sequential reader, in large requests sent
    /// several at a time (the kernel's default for FUSE is 128 KiB, which leaves the link idle between
    /// requests).
    public var readAheadKB = 4096
    /// `timeout=SECONDS`: how long a request waits for the engine to come back before it fails (EIO).
    public var patience = 60
    /// `localfifo`: show host FIFOs as FIFOs; they then work as pipes of the DPU only (same-machine use).
    public var localFIFOs = false
    /// Host unix sockets become connectable here through udsproxyd (`nosockets` turns it off).
    public var sockets = true
    /// `ptybridge`: the host's pseudo-terminals (the numbered entries of a devpts export, /dev/pts) are
    /// shown as symbolic links to terminals of this machine that the client relays to them, so that a
    /// DPU program can open a host pty as a real terminal (termios included): `virsh console`.
    public var ptyBridge = false
    /// udsproxyd's control socket on this machine (`udsproxy=PATH`).
    public var udsproxyControl = UDSProxySettings.defaultControlPath
    /// Kernel mount flags handed to libfuse (ro, nosuid, nodev, noexec, ...). `nodev` unless `dev`.
    public var kernelOptions: [String] = []
    public var readOnly = false

    public init(hostPath: String, mountpoint: String) {
        self.hostPath = hostPath
        self.mountpoint = mountpoint
    }

    /// Options the kernel (through libfuse) takes as they are.
    static let kernelFlags: Set<String> = [
        "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "diratime",
        "nodiratime", "relatime", "norelatime", "strictatime", "lazytime", "nolazytime", "sync", "async",
        "dirsync",
    ]
    /// Options for mount(8) or fstab only, which reach helpers sometimes: accepted and ignored.
    static let ignored: Set<String> = [
        "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
        "loud", "silent", "allow_other", "default_permissions",
    ]

    /// Applies a comma-separated option list (`-o`).
    public mutating func apply(_ text: String) throws(MountOptionError) {
        for option in text.split(separator: ",").map(String.init) where !option.isEmpty {
            let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts[0]
            let value = parts.count > 1 ? parts[1] : nil
            func need() throws(MountOptionError) -> String {
                guard let value, !value.isEmpty else { throw MountOptionError("`\(name)` needs a value: \(name)=...") }
                return value
            }
            switch name {
            case "proc": proc = true
            case "localfifo": localFIFOs = true
            case "noxattr": extendedAttributes = false
            case "xattr": extendedAttributes = true
            case "acl": carryACLs = true
            case "noacl": carryACLs = false
            case "seclabel": carrySecurityLabels = true
            case "noseclabel": carrySecurityLabels = false
            case "nosockets": sockets = false
            case "sockets": sockets = true
            case "ptybridge": ptyBridge = true
            case "noptybridge": ptyBridge = false
            case "udsproxy":
                let path = try need()
                guard path.hasPrefix("/"), path.utf8.count <= Endpoint.maximumUnixPathLength else {
                    throw MountOptionError("udsproxy=\(path) must be an absolute socket path of at most \(Endpoint.maximumUnixPathLength) bytes")
                }
                udsproxyControl = path
            case "localproc":
                let path = try need()
                guard path.hasPrefix("/") else { throw MountOptionError("localproc=\(path) must be an absolute path") }
                localProc = path
            case "rexecpids":
                let path = try need()
                guard path.hasPrefix("/") else { throw MountOptionError("rexecpids=\(path) must be an absolute path") }
                rexecPidDirectory = path
            case "localcomm": localCommands = try need().split(separator: ":").map(String.init)
            case "server", "addr", "connect":
                let text = try need()
                do { endpoint = try Endpoint(parsing: text) } catch { throw MountOptionError("\(name)=: \(error)") }
            case "key": keyPath = try need()
            case "connections":
                guard let count = Int(try need()), (1...64).contains(count) else {
                    throw MountOptionError("connections=\(value ?? "") must be a number from 1 to 64")
                }
                connections = count
            case "entry_timeout", "attr_timeout":
                guard let seconds = Double(try need()), seconds >= 0, seconds <= 3600 else {
                    throw MountOptionError("\(name)=\(value ?? "") must be a number of seconds from 0 to 3600")
                }
                if name == "entry_timeout" { entryTimeout = seconds } else { attributeTimeout = seconds }
            case "readahead":
                guard let kilobytes = Int(try need()), (0...65536).contains(kilobytes) else {
                    throw MountOptionError("readahead=\(value ?? "") must be a number of KiB from 0 to 65536")
                }
                readAheadKB = kilobytes
            case "prefetch":
                guard let count = Int(try need()), (0...65536).contains(count) else {
                    throw MountOptionError("prefetch=\(value ?? "") must be a number of directories from 0 to 65536")
                }
                prefetch = count
            case "timeout":
                guard let seconds = Int(try need()), (1...86400).contains(seconds) else {
                    throw MountOptionError("timeout=\(value ?? "") must be a number of seconds from 1 to 86400")
                }
                patience = seconds
            case _ where QTFSMountOptions.kernelFlags.contains(name) && value == nil:
                kernelOptions.removeAll { $0 == name }
                kernelOptions.append(name)
                if name == "ro" { readOnly = true }
                if name == "rw" { readOnly = false }
            case _ where QTFSMountOptions.ignored.contains(name) || name.hasPrefix("x-") || name == "comment":
                continue
            default:
                throw MountOptionError(
                    "unknown option `\(option)`; qtfs takes proc, localproc=PATH, rexecpids=PATH, localfifo, noxattr, acl, seclabel, nosockets, ptybridge, udsproxy=PATH, localcomm=A:B, server=URL, key=FILE, connections=N, readahead=KB, prefetch=N, timeout=S, entry_timeout=S, attr_timeout=S and the usual ro, nosuid, nodev, noexec...")
            }
        }
    }

    /// The -o list for libfuse: identity, permissions checked by the kernel against the host's modes,
    /// everyone may use it (the chroot's daemons are not the mounting user), no devices unless asked.
    var fuseOptions: String {
        var options = [
            "fsname=qtfs:\(hostPath.replacingCommas())", "subtype=qtfs", "allow_other", "default_permissions",
        ]
        if !kernelOptions.contains("dev") { options.append("nodev") }
        options += kernelOptions.filter { $0 != "nodev" }
        return options.joined(separator: ",")
    }
}

/// A mount option that cannot be used.
public struct MountOptionError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension String {
    /// libfuse splits options at commas; a comma in the fsname would be taken for one.
    fileprivate func replacingCommas() -> String { String(map { $0 == "," ? "_" : $0 }) }
}

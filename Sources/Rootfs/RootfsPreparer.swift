import DPUConfig
import DPUSystem
import Glibc
import SystemPackage

/// Where the rootfs's system comes from.
public enum RootfsSource: Sendable, Equatable, CustomStringConvertible {
    /// This machine: /usr, /bin, /sbin, /lib, /lib64 (links where /usr is merged).
    case host
    /// A qcow2 or raw disk image: its whole root file system.
    case image(String)

    public var description: String {
        switch self {
        case .host: "host"
        case .image(let path): "image \(path)"
        }
    }
}

/// What `rootfs prepare` needs to know.
public struct RootfsRequest: Sendable {
    public var root: String
    public var source: RootfsSource
    /// `--host`: the rexec address baked into the qemu-kvm wrappers as CMD_NET_ADDR.
    public var hostAddress: Endpoint?
    /// Write into a non-empty directory without the marker.
    public var force: Bool
    /// This dpuctl binary, installed into the rootfs.
    public var dpuctlBinary: String
    /// libudsproxy.so to install, if found; `udsproxySearched` says where it was looked for.
    public var udsproxyLibrary: String?
    public var udsproxySearched: [String]
    /// PATH, to find qemu-img, qemu-nbd and modprobe.
    public var searchPath: String?

    public init(
        root: String, source: RootfsSource, hostAddress: Endpoint?, force: Bool, dpuctlBinary: String,
        udsproxyLibrary: String?, udsproxySearched: [String], searchPath: String?
    ) {
        self.root = root
        self.source = source
        self.hostAddress = hostAddress
        self.force = force
        self.dpuctlBinary = dpuctlBinary
        self.udsproxyLibrary = udsproxyLibrary
        self.udsproxySearched = udsproxySearched
        self.searchPath = searchPath
    }
}

/// What `rootfs prepare` did.
public struct RootfsReport: Sendable {
    /// The copy of the system.
    public var copy = CopyReport()
    /// Skeleton directories and links, the marker, and dpuctl's pieces that were made or fixed.
    public var setup: [Change] = []
    /// Where the system came from, in words.
    public var origin = ""
    public var warnings: [String] = []
}

/// A refusal or failure of `rootfs prepare`, naming the step.
public struct RootfsError: Error, Sendable, CustomStringConvertible {
    public var step: String
    public var message: String
    public init(_ step: String, _ message: String) {
        self.step = step
        self.message = message
    }
    public var description: String { "\(step): \(message)" }
}

/// Builds the rootfs the guide builds by hand (§3.2 and §3.5.1), safely and repeatably.
public enum RootfsPreparer {
    /// The marker file: a rootfs that has it was made by dpuctl, which may write into it again.
    public static let markerName = ".dpuctl-rootfs"
    /// What `--from host` copies, in this order.
    public static let hostTrees = ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"]

    /// Prepares `request.root`. `progress` (for a terminal) hears the copy's progress and, when known, the
    /// total; `log` hears each step.
    public static func prepare(
        _ request: RootfsRequest, progress: ((CopyProgress, CopyProgress?) -> Void)?, log: (String) -> Void
    ) throws(RootfsError) -> RootfsReport {
        var report = RootfsReport()
        let root = try openRoot(request, report: &report)
        defer { root.closeQuietly() }
        // What dpuctl installs is never copied over (the wrappers replace the emulators of the source).
        func excluded(emulators: [String]) -> Set<[UInt8]> {
            Set((Layout.installedPaths + Layout.wrappers(emulators: emulators).map(\.path) + [markerName, "var/run", "var/lock"]).map { Array($0.utf8) })
        }
        var emulators: [String] = []

        switch request.source {
        case .host:
            let source: FileDescriptor
            do { source = try FileDescriptor.openPath("/", flags: O_RDONLY | O_DIRECTORY) } catch {
                throw RootfsError("copy", "cannot open /: \(error)")
            }
            defer { source.closeQuietly() }
            let names = hostTrees.map { Array($0.utf8) }.filter { (try? source.status(of: $0)) != nil }
            report.origin = "this machine (\(names.map(describe).joined(separator: ", ")))"
            emulators = Layout.emulators(in: source)
            report.copy = try copy(names, from: source, into: root, excluded: excluded(emulators: emulators), progress: progress, hostLinks: true)
        case .image(let path):
            let image: DiskImage
            do {
                image = try DiskImage(path, environmentPath: request.searchPath, log: log)
            } catch {
                throw RootfsError("image", error.description)
            }
            defer { image.close() }
            guard let source = image.root else { throw RootfsError("image", "no root file system") }
            report.origin = "\(path), \(image.route)"
            let names: [[UInt8]]
            do { names = try source.directoryNames().filter { $0 != Array("lost+found".utf8) } } catch {
                throw RootfsError("copy", "cannot list the image's root: \(error)")
            }
            emulators = Layout.emulators(in: source)
            report.copy = try copy(names, from: source, into: root, excluded: excluded(emulators: emulators), progress: progress, hostLinks: false)
        }

        do {
            report.setup += try Layout.skeleton(in: root)
            report.setup += try Layout.install(request, emulators: emulators, in: root)
        } catch {
            throw RootfsError("install", "\(error)")
        }
        guard request.udsproxyLibrary != nil else {
            throw RootfsError(
                "install libudsproxy.so",
                "not found (looked in \(request.udsproxySearched.joined(separator: ", "))); build it with `make` or install dpuctl with `make install`, then run `dpuctl rootfs prepare` again (everything else is in place)")
        }
        return report
    }

    /// Opens (or makes) the rootfs directory after the safety checks: never /, never a non-empty
    /// directory dpuctl did not make (unless forced), never with mounts under it, never inside what it
    /// copies.
    static func openRoot(_ request: RootfsRequest, report: inout RootfsReport) throws(RootfsError) -> FileDescriptor {
        let step = "check \(request.root)"
        guard request.root.hasPrefix("/") else { throw RootfsError(step, "the rootfs must be an absolute path") }
        var made = false
        if access(request.root, F_OK) != 0 {
            do { try makeParents(request.root) } catch {
                throw RootfsError("create \(request.root)", "\(error)")
            }
            made = true
        }
        let root: FileDescriptor
        do {
            root = try FileDescriptor.openPath(request.root, flags: O_RDONLY | O_DIRECTORY)
        } catch {
            throw RootfsError(step, "cannot open it: \(error.errno)")
        }
        do {
            let info = try root.status()
            var slash = Glibc.stat()
            stat("/", &slash)
            let real = describe(try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(root.procfsPath.utf8)))
            if info.st_dev == slash.st_dev && info.st_ino == slash.st_ino {
                throw RootfsError(step, "it is / itself; a rootfs for libvirtd is a directory of its own, like /another_rootfs")
            }
            if case .host = request.source {
                for tree in hostTrees {
                    let path = "/" + tree
                    guard let resolved = try? FileDescriptor.openPath(path, flags: O_PATH | O_DIRECTORY) else { continue }
                    defer { resolved.closeQuietly() }
                    let treeReal = describe(try FileDescriptor(rawValue: AT_FDCWD).readLink(Array(resolved.procfsPath.utf8)))
                    if real == treeReal || real.hasPrefix(treeReal == "/" ? "/" : treeReal + "/") {
                        throw RootfsError(step, "it lies inside \(path), which it would copy into itself; choose a directory outside \(hostTrees.map { "/" + $0 }.joined(separator: ", "))")
                    }
                }
            }
            let mounted = try MountInfo.read().filter { $0.mountPoint.hasPrefix(real == "/" ? "/" : real + "/") }
            if !mounted.isEmpty {
                throw RootfsError(
                    step, "it has mounts under it (\(mounted.prefix(3).map(\.mountPoint).joined(separator: ", "))\(mounted.count > 3 ? ", ..." : "")): writing now would write through them into this machine; run `dpuctl mount revert --root \(request.root)` first")
            }
            let names = try root.directoryNames()
            let marked = names.contains(Array(markerName.utf8))
            if !names.isEmpty && !marked && !request.force {
                throw RootfsError(
                    step, "it is not empty and was not made by `dpuctl rootfs prepare` (no \(markerName) in it); pass --force to write into it anyway")
            }
            let marker = "# A DPU rootfs made by `dpuctl rootfs prepare`, which may write here again.\n[rootfs]\nsource = \(request.source)\n"
            if !marked || (try? readTextFile(request.root + "/" + markerName)) != marker {
                try Layout.writeFile(Array(markerName.utf8), in: root, contents: Array(marker.utf8), mode: 0o644)
                report.setup.append(Change(path: markerName, what: [marked ? "source" : "new"]))
            }
            if made { report.setup.insert(Change(path: ".", what: ["new"]), at: 0) }
            return root
        } catch let error as RootfsError {
            root.closeQuietly()
            throw error
        } catch {
            root.closeQuietly()
            throw RootfsError(step, "\(error)")
        }
    }

    /// `mkdir -p` of the rootfs itself (mode 0755).
    static func makeParents(_ path: String) throws(SystemError) {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw SystemError(Errno(rawValue: errno), "mkdir", prefix) }
        }
    }

    /// Copies the top-level `names` of `source` into the rootfs. With `hostLinks`, a top-level symbolic
    /// link (merged /usr: /bin -> usr/bin) is made relative, so that it means the same inside the rootfs.
    static func copy(
        _ names: [[UInt8]], from source: FileDescriptor, into root: FileDescriptor, excluded: Set<[UInt8]>,
        progress: ((CopyProgress, CopyProgress?) -> Void)?, hostLinks: Bool
    ) throws(RootfsError) -> CopyReport {
        var total: CopyProgress?
        if let progress {
            total = Measure.trees(names, in: source, excluded: excluded)
            progress(CopyProgress(), total)
        }
        let copier = TreeCopier(destinationRoot: root, excluded: excluded, progress: progress.map { report in { report($0, total) } })
        do {
            for name in names {
                let info = try source.status(of: name)
                if hostLinks, info.st_mode & S_IFMT == S_IFLNK {
                    // /bin -> usr/bin stays as is; /bin -> /usr/bin becomes usr/bin.
                    var target = try source.readLink(name)
                    while target.first == 0x2F { target.removeFirst() }
                    copier.note(try Layout.symbolicLink(name, in: root, target: target))
                    continue
                }
                try copier.copy(name, from: source, to: root, path: name)
            }
        } catch let error as CopyError {
            throw RootfsError("copy", "\(error); the rootfs is partly copied: fix the cause and run `dpuctl rootfs prepare` again")
        } catch {
            throw RootfsError("copy", "\(error)")
        }
        copier.finish()
        return copier.report
    }
}

/// Sizes a copy beforehand, for the progress bar.
enum Measure {
    static func trees(_ names: [[UInt8]], in source: FileDescriptor, excluded: Set<[UInt8]>) -> CopyProgress {
        var total = CopyProgress()
        for name in names {
            guard let info = try? source.status(of: name) else { continue }
            walk(name, info: info, in: source, path: name, device: info.st_dev, excluded: excluded, total: &total)
        }
        return total
    }

    private static func walk(
        _ name: [UInt8], info: Glibc.stat, in directory: FileDescriptor, path: [UInt8], device: dev_t,
        excluded: Set<[UInt8]>, total: inout CopyProgress
    ) {
        guard !excluded.contains(path) else { return }
        total.entries += 1
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            total.bytes += UInt64(info.st_size)
        case S_IFDIR where info.st_dev == device:
            guard let fd = try? directory.open(at: name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW) else { return }
            defer { fd.closeQuietly() }
            for child in (try? fd.directoryNames()) ?? [] {
                guard let childInfo = try? fd.status(of: child) else { continue }
                walk(child, info: childInfo, in: fd, path: path + [0x2F] + child, device: device, excluded: excluded, total: &total)
            }
        default:
            break
        }
    }
}

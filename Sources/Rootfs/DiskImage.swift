import DPUSystem
import Glibc
import SystemPackage

/// Why an image cannot be read, with what to do.
public struct ImageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A disk image (qcow2 or raw) whose root file system is mounted read-only and detached: it is reachable
/// only through `root`, a descriptor, never at a path, and disappears when closed. Everything attached
/// for it (nbd connection, loop device, temporary raw file) is released by `close()`, on every path out.
public final class DiskImage {
    /// The root file system's top directory (the detached mount).
    public private(set) var root: FileDescriptor?
    /// How it was reached, for the report: "partition 2 (ext4) through qemu-img convert and /dev/loop3".
    public private(set) var route = ""
    private var releases: [() -> Void] = []

    /// How the image's blocks were reached.
    public enum Method: String, Sendable {
        case nbd = "qemu-nbd"
        case convert = "qemu-img convert and a loop device"
        case loop = "a loop device"
    }

    /// What this machine offers for images: the methods available, or why each is not.
    public struct Support: Sendable {
        public var nbd: String?
        public var loop: String?
        public var qemuNBD: String?
        public var qemuImg: String?

        /// Looks for the nbd and loop drivers and the qemu tools; for a qcow2 image, tries `modprobe nbd
        /// max_part=16` once when nbd is not loaded.
        public static func probe(path: String?, qcow2: Bool) -> Support {
            var support = Support()
            support.qemuNBD = Spawn.resolve("qemu-nbd", path: path)
            support.qemuImg = Spawn.resolve("qemu-img", path: path)
            if qcow2, !DiskImage.nbdLoaded, support.qemuNBD != nil, let modprobe = Spawn.resolve("modprobe", path: path) {
                _ = try? ChildProcess.run(modprobe, arguments: ["modprobe", "-q", "nbd", "max_part=16"], timeoutSeconds: 30)
            }
            support.nbd = DiskImage.nbdLoaded ? nil : "this kernel has no nbd driver (no /sys/module/nbd, and modprobe nbd did not load one)"
            support.loop = LoopDevice.isAvailable ? nil : "this kernel has no loop devices (no /dev/loop-control)"
            return support
        }
    }

    static var nbdLoaded: Bool { access("/sys/module/nbd", F_OK) == 0 || access("/dev/nbd0", F_OK) == 0 }

    /// Opens `path` and mounts its root file system read-only. `log` hears each step.
    public init(_ path: String, environmentPath: String?, log: (String) -> Void) throws(ImageError) {
        do {
            try open(path, environmentPath: environmentPath, log: log)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Detaches everything, newest first. Safe to call twice.
    public func close() {
        root?.closeQuietly()
        root = nil
        for release in releases.reversed() { release() }
        releases = []
    }

    private func open(_ path: String, environmentPath: String?, log: (String) -> Void) throws(ImageError) {
        let file: FileDescriptor
        do {
            file = try FileDescriptor.openPath(path, flags: O_RDONLY)
        } catch {
            throw ImageError("cannot open the image \(path): \(error.errno)")
        }
        releases.append { file.closeQuietly() }
        let head = try read(file, at: 0, count: 16, what: path)
        let format = try Self.format(head, path: path)
        let support = Support.probe(path: environmentPath, qcow2: format == "qcow2")

        // The blocks: the file itself (raw), a qemu-nbd device, or a raw conversion.
        var backing = file
        var backingName = path
        var method = Method.loop
        var nbdDevice: String?
        if format == "qcow2" {
            if support.nbd == nil, let qemuNBD = support.qemuNBD {
                let device = try connectNBD(path, qemuNBD: qemuNBD, log: log)
                nbdDevice = device
                do {
                    backing = try FileDescriptor.openPath(device, flags: O_RDONLY)
                } catch {
                    throw ImageError("cannot open \(device) after qemu-nbd connected it: \(error.errno)")
                }
                let opened = backing
                releases.append { opened.closeQuietly() }
                backingName = device
                method = .nbd
            } else if support.loop == nil, let qemuImg = support.qemuImg {
                log("no nbd (\(support.nbd ?? "qemu-nbd not found")): converting to a temporary raw file with qemu-img")
                backing = try convert(path, qemuImg: qemuImg)
                backingName = "a raw copy of \(path)"
                method = .convert
            } else {
                throw ImageError(
                    "cannot read the qcow2 image \(path): qemu-nbd needs the nbd driver (\(support.nbd ?? (support.qemuNBD == nil ? "qemu-nbd not found" : "ok"))), qemu-img convert needs loop devices (\(support.loop ?? (support.qemuImg == nil ? "qemu-img not found" : "ok"))); install qemu-utils, load nbd or loop, or pass a raw image")
            }
        } else if let why = support.loop {
            throw ImageError("cannot read the raw image \(path): \(why)")
        }

        // The partition that holds the root file system.
        let table = try partitions(of: backing, name: backingName)
        let candidates: [PartitionTable.Partition] = table.scheme == .none
            ? [PartitionTable.Partition(number: 0, offset: 0, size: 0, type: "")]
            : table.rootCandidates(architecture: Self.architecture)
        var tried: [String] = []
        for candidate in candidates {
            let label = candidate.number == 0 ? "the whole disk" : "partition \(candidate.number)"
            guard let type = try fileSystemType(backing, at: candidate.offset, name: backingName) else {
                tried.append("\(label): no ext2/3/4, xfs or btrfs file system")
                continue
            }
            let device: String
            var release: (() -> Void)?
            if support.loop == nil {
                do {
                    let loop = try LoopDevice.attach(backing, offset: candidate.offset, size: candidate.size)
                    device = loop.path
                    release = { loop.fd.closeQuietly() }
                } catch {
                    throw ImageError("cannot attach a loop device to \(label) of \(backingName): \(error)")
                }
            } else if let nbdDevice {
                device = candidate.number == 0 ? nbdDevice : "\(nbdDevice)p\(candidate.number)"
                guard Self.waitFor(device) else {
                    throw ImageError("\(device) did not appear: load nbd with max_part (modprobe nbd max_part=16), or make loop devices available")
                }
            } else {
                throw ImageError("no way to reach \(label) of \(backingName)")
            }
            do {
                let mount = try mountRoot(device: device, type: type)
                if let release { releases.append(release) }
                releases.append { mount.closeQuietly() }
                // The mount's descriptor names the mount (like O_PATH); reading the directory needs an open one.
                do {
                    root = try mount.open(at: [0x2E], flags: O_RDONLY | O_DIRECTORY)
                } catch {
                    throw ImageError("cannot open the root of \(label): \(error)")
                }
                route = "\(label) (\(type)) through \(method.rawValue) (\(device))"
                log("reading \(route)")
                return
            } catch {
                release?()
                tried.append("\(label) (\(type)): \(error)")
            }
        }
        throw ImageError("no root file system found in \(path) (\(table.scheme) table): \(tried.joined(separator: "; "))")
    }

    static var architecture: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// The image's format from its first bytes: qcow2, raw, or a refusal for compressed files.
    static func format(_ head: [UInt8], path: String) throws(ImageError) -> String {
        if head.starts(with: [0x51, 0x46, 0x49, 0xFB]) { return "qcow2" }
        if head.starts(with: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) {
            throw ImageError("\(path) is xz-compressed: decompress it first (xz -dk \(path))")
        }
        if head.starts(with: [0x1F, 0x8B]) { throw ImageError("\(path) is gzip-compressed: decompress it first (gunzip -k \(path))") }
        if head.starts(with: [0x28, 0xB5, 0x2F, 0xFD]) { throw ImageError("\(path) is zstd-compressed: decompress it first (zstd -d \(path))") }
        return "raw"
    }

    private func read(_ fd: FileDescriptor, at offset: UInt64, count: Int, what: String) throws(ImageError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 8)
        defer { buffer.deallocate() }
        var got = 0
        while got < count {
            let n: Int
            do {
                n = try fd.read(at: Int64(offset) + Int64(got), into: UnsafeMutableRawBufferPointer(rebasing: buffer[got...]))
            } catch {
                throw ImageError("cannot read \(what) at byte \(offset + UInt64(got)): \(error.errno)")
            }
            if n == 0 { break }
            got += n
        }
        return Array(buffer[..<got])
    }

    private func partitions(of fd: FileDescriptor, name: String) throws(ImageError) -> PartitionTable {
        let head = try read(fd, at: 0, count: PartitionTable.headerBytes, what: name)
        do {
            do {
                return try PartitionTable.parse(head)
            } catch {
                // GPT entries beyond the first sectors: read where the header says.
                guard let location = PartitionTable.gptEntriesLocation(head) else { throw error }
                return try PartitionTable.parse(head, entries: try read(fd, at: location.offset, count: location.length, what: name))
            }
        } catch let error as PartitionError {
            throw ImageError("the partition table of \(name) is damaged: \(error)")
        } catch let error as ImageError {
            throw error
        } catch {
            throw ImageError("\(error)")
        }
    }

    /// The file system at `offset`, by its superblock's magic number.
    private func fileSystemType(_ fd: FileDescriptor, at offset: UInt64, name: String) throws(ImageError) -> String? {
        let block = try read(fd, at: offset, count: 0x10048, what: name)
        if block.count > 1081, block[1080] == 0x53, block[1081] == 0xEF { return "ext4" }  // ext2/3 mount as ext4
        if block.starts(with: Array("XFSB".utf8)) { return "xfs" }
        if block.count >= 0x10048, Array(block[0x10040..<0x10048]) == Array("_BHRfS_M".utf8) { return "btrfs" }
        return nil
    }

    /// Mounts `device` read-only, detached; returns its top directory if it has usr and etc.
    private func mountRoot(device: String, type: String) throws(ImageError) -> FileDescriptor {
        // ext4 with an unclean journal cannot replay it on a read-only device: then mount without it.
        let variants: [[String]] = type == "ext4" ? [["ro"], ["ro", "noload"]] : [["ro"]]
        var problem = ""
        for flags in variants {
            let mount: FileDescriptor
            do {
                let context = try FileSystemContext(type: type)
                do throws(SystemError) {
                    try context.set("source", device)
                    for flag in flags { try context.set(flag: flag) }
                    try context.create()
                    mount = try context.mount(attributes: [.readOnly, .noDevices, .noSetUID])
                } catch {
                    let said = context.kernelMessages()
                    problem = "does not mount: \(error)" + (said.isEmpty ? "" : " (the kernel says: \(said.joined(separator: "; ")))")
                    continue
                }
            } catch {
                throw ImageError("cannot mount \(type): \(error)")
            }
            let missing = ["usr", "etc"].filter { name in
                guard let fd = try? mount.open(at: Array(name.utf8), flags: O_PATH | O_DIRECTORY) else { return true }
                fd.closeQuietly()
                return false
            }
            if missing.isEmpty { return mount }
            mount.closeQuietly()
            throw ImageError("not a root file system (no \(missing.joined(separator: " or ")))")
        }
        throw ImageError(problem)
    }

    private func connectNBD(_ path: String, qemuNBD: String, log: (String) -> Void) throws(ImageError) -> String {
        for number in 0..<64 {
            let device = "/dev/nbd\(number)"
            guard access("/sys/block/nbd\(number)", F_OK) == 0, access("/sys/block/nbd\(number)/pid", F_OK) != 0 else { continue }
            let status: ExitStatus
            do {
                status = try ChildProcess.run(
                    qemuNBD, arguments: ["qemu-nbd", "--read-only", "--format=qcow2", "--connect=\(device)", path],
                    timeoutSeconds: 60)
            } catch {
                throw ImageError("cannot run qemu-nbd: \(error)")
            }
            guard status == .exited(0) else { continue }  // taken meanwhile, or refused: try the next one
            releases.append {
                _ = try? ChildProcess.run(qemuNBD, arguments: ["qemu-nbd", "--disconnect", device], timeoutSeconds: 60)
            }
            log("qemu-nbd connected \(path) to \(device)")
            return device
        }
        throw ImageError("no free nbd device (/dev/nbd0-63 are all in use or absent)")
    }

    /// `qemu-img convert` to a raw file under /var/tmp, opened and unlinked at once: it is freed when the
    /// last descriptor (ours, then the loop device's) goes.
    private func convert(_ path: String, qemuImg: String) throws(ImageError) -> FileDescriptor {
        var template = Array("/var/tmp/dpuctl-image.XXXXXX".utf8CString)
        guard let directory = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            throw ImageError("cannot make a temporary directory in /var/tmp: \(Errno(rawValue: errno))")
        }
        let raw = directory + "/disk.raw"
        defer {
            unlink(raw)
            rmdir(directory)
        }
        let status: ExitStatus
        do {
            status = try ChildProcess.run(
                qemuImg, arguments: ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw], timeoutSeconds: 3600)
        } catch {
            throw ImageError("cannot convert \(path) with qemu-img: \(error)")
        }
        guard status == .exited(0) else {
            throw ImageError("qemu-img convert of \(path) \(status) (its message is above); check the image and the free space in /var/tmp")
        }
        do {
            let fd = try FileDescriptor.openPath(raw, flags: O_RDONLY)
            releases.append { fd.closeQuietly() }
            return fd
        } catch {
            throw ImageError("cannot open the converted image: \(error.errno)")
        }
    }

    static func waitFor(_ path: String) -> Bool {
        for _ in 0..<100 {
            if access(path, F_OK) == 0 { return true }
            usleep(50_000)
        }
        return false
    }
}

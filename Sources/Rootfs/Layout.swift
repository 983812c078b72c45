import DPUConfig
import DPUSystem
import Glibc
import SystemPackage

/// What the rootfs holds besides the copied system: the skeleton of guide §3.2.1 and dpuctl's pieces of
/// §3.5.1 (rexec and mount.qtfs, the qemu-kvm wrappers, libudsproxy.so). Each is made only when missing
/// or different, so that running `prepare` again changes nothing that is right.
enum Layout {
    /// Directories of the skeleton and their modes (made only when missing; an image's own stay as
    /// they are).
    static let directories: [(path: String, mode: mode_t)] = [
        ("boot", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("mnt", 0o755), ("opt", 0o755),
        ("proc", 0o555), ("root", 0o700), ("run", 0o755), ("sys", 0o555), ("tmp", 0o1777), ("var", 0o755),
        ("var/cache", 0o755), ("var/lib", 0o755), ("var/log", 0o755), ("var/tmp", 0o1777), ("local", 0o755),
        ("local_proc", 0o555),
    ]

    /// Links of the skeleton: relative, so that they mean the same inside the chroot and from outside
    /// (an absolute var/run -> /run is what sent the guide's bind onto the machine's own /run).
    static let links: [(path: String, target: String)] = [("var/run", "../run"), ("var/lock", "../run/lock")]

    /// Paths dpuctl installs, which the copy leaves alone.
    static let installedPaths = [
        "usr/bin/dpuctl", "usr/bin/rexec", "usr/sbin/mount.qtfs", "sbin/mount.qtfs", "usr/bin/qemu-kvm",
        "usr/libexec/qemu-kvm", "usr/lib64/libudsproxy.so",
    ]

    /// The guide's wrappers: both run the host's /usr/bin/qemu-kvm.
    static let kvmWrappers: [(path: String, program: String)] = [
        ("usr/bin/qemu-kvm", "/usr/bin/qemu-kvm"), ("usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"),
    ]

    /// The emulators in `tree`'s usr/bin (`qemu-system-*`). libvirtd probes every emulator it finds, and
    /// one that ran on the DPU would bind its monitor and open its files there, so each becomes a wrapper
    /// that runs the same program on the host.
    static func emulators(in tree: FileDescriptor) -> [String] {
        guard let bin = try? tree.open(at: Array("usr/bin".utf8), flags: O_RDONLY | O_DIRECTORY),
            let names = try? bin.directoryNames()
        else { return [] }
        defer { bin.closeQuietly() }
        return names.map(describe).filter { $0.hasPrefix("qemu-system-") }.sorted()
    }

    /// Every wrapper: the guide's two and one per emulator.
    static func wrappers(emulators: [String]) -> [(path: String, program: String)] {
        kvmWrappers + emulators.map { ("usr/bin/" + $0, "/usr/bin/" + $0) }
    }

    static func skeleton(in root: FileDescriptor) throws(SystemError) -> [Change] {
        var changes: [Change] = []
        for (path, mode) in directories {
            let (parent, name) = try openParent(path, in: root)
            defer { parent.closeQuietly() }
            do {
                _ = try parent.status(of: name)
            } catch where error.errno == .noSuchFileOrDirectory {
                try parent.makeDirectory(name, mode: 0o700)
                let made = try parent.open(at: name, flags: O_PATH | O_NOFOLLOW)
                defer { made.closeQuietly() }
                try made.changeFileMode(mode)
                changes.append(Change(path: path, what: ["new"]))
            }
        }
        for (path, target) in links {
            let (parent, name) = try openParent(path, in: root)
            defer { parent.closeQuietly() }
            if let info = try? parent.status(of: name), info.st_mode & S_IFMT == S_IFDIR { continue }  // an image's real directory
            if let change = try symbolicLink(Array(path.utf8), in: root, target: Array(target.utf8)) { changes.append(change) }
        }
        return changes
    }

    static func install(_ request: RootfsRequest, emulators: [String], in root: FileDescriptor) throws(SystemError) -> [Change] {
        var changes: [Change] = []
        func add(_ change: Change?) { if let change { changes.append(change) } }
        add(try copyFile(request.dpuctlBinary, to: "usr/bin/dpuctl", in: root, mode: 0o755))
        add(try symbolicLink(Array("usr/bin/rexec".utf8), in: root, target: Array("dpuctl".utf8)))
        add(try symbolicLink(Array("usr/sbin/mount.qtfs".utf8), in: root, target: Array("../bin/dpuctl".utf8)))
        // mount(8) looks for helpers in /sbin: where /sbin is not merged into /usr it needs its own link.
        if let sbin = try? root.status(of: Array("sbin".utf8)), sbin.st_mode & S_IFMT == S_IFDIR {
            add(try symbolicLink(Array("sbin/mount.qtfs".utf8), in: root, target: Array("../usr/bin/dpuctl".utf8)))
        }
        for (path, program) in wrappers(emulators: emulators) {
            let address = request.hostAddress?.description ?? existingAddress(path, in: root)
            add(try writeIfDifferent(path, in: root, contents: Array(wrapper(address: address, program: program).utf8), mode: 0o755))
        }
        if let library = request.udsproxyLibrary {
            add(try copyFile(library, to: "usr/lib64/libudsproxy.so", in: root, mode: 0o755))
        }
        return changes
    }

    /// The qemu-kvm wrapper of guide §3.5.1, with its faults fixed: `"$@"` keeps every argument as it
    /// is (`$*` split them at spaces), and the address is written in, not left as `$host:$port`.
    ///
    /// QEMU run with `-daemonize -pidfile FILE` (libvirt's capability probe) gets `rexec --daemon-pidfile
    /// FILE`, so that FILE ends up naming a local stand-in rather than a host pid libvirt would kill here.
    /// The scan is in the wrapper, not in rexec: rexec stays ignorant of any one program's options, and a
    /// few lines of POSIX sh cost microseconds next to the remote start.
    static func wrapper(address: String?, program: String) -> String {
        let environment = address.map { "CMD_NET_ADDR=\(shellQuote($0)) " } ?? ""
        return """
            #!/bin/sh
            # An emulator for libvirtd in the DPU rootfs, made by `dpuctl rootfs prepare`: it runs on the
            # host through rexec, with exactly these arguments. When it daemonizes with a pid file, rexec
            # leaves a stand-in for the daemon here and puts the stand-in's pid in that file.
            daemonize= pidfile= next=
            for argument; do
                if [ -n "$next" ]; then pidfile=$argument next=; continue; fi
                case $argument in
                -daemonize | --daemonize) daemonize=1 ;;
                -pidfile | --pidfile) next=1 ;;
                esac
            done
            if [ -n "$daemonize" ] && [ -n "$pidfile" ]; then
                set -- --daemon-pidfile "$pidfile" \(program) "$@"
            else
                set -- \(program) "$@"
            fi
            \(environment)exec /usr/bin/rexec "$@"

            """
    }

    /// The CMD_NET_ADDR a wrapper already has, kept when `--host` is not given again.
    static func existingAddress(_ path: String, in root: FileDescriptor) -> String? {
        guard let text = try? readFile(path, in: root) else { return nil }
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix("CMD_NET_ADDR='") {
            let rest = line.dropFirst("CMD_NET_ADDR='".count)
            if let end = rest.firstIndex(of: "'") { return String(rest[..<end]) }
        }
        return nil
    }

    // MARK: Files inside the rootfs, never following a symbolic link

    /// The parent directory of `path` inside the rootfs (made if missing) and the last name.
    static func openParent(_ path: String, in root: FileDescriptor) throws(SystemError) -> (FileDescriptor, [UInt8]) {
        var components = path.split(separator: "/").map { Array($0.utf8) }
        let name = components.removeLast()
        var directory = try root.duplicateCloseOnExec()
        for component in components {
            do {
                _ = try directory.status(of: component)
            } catch where error.errno == .noSuchFileOrDirectory {
                try directory.makeDirectory(component, mode: 0o755)
            }
            let next: FileDescriptor
            do {
                next = try directory.open(at: component, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            } catch {
                directory.closeQuietly()
                throw error
            }
            directory.closeQuietly()
            directory = next
        }
        return (directory, name)
    }

    static func readFile(_ path: String, in root: FileDescriptor, limit: Int = 1 << 20) throws(SystemError) -> [UInt8] {
        let fd = try root.open(beneath: Array(path.utf8), flags: O_RDONLY | O_NOFOLLOW, resolve: [.beneath, .noSymlinks])
        defer { fd.closeQuietly() }
        var bytes: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
        defer { buffer.deallocate() }
        while bytes.count < limit {
            let count = try fd.readSome(into: buffer) ?? 0
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return bytes
    }

    /// Writes `contents` to `name` in `directory` through a temporary name and a rename, root-owned.
    static func writeFile(_ name: [UInt8], in directory: FileDescriptor, contents: [UInt8], mode: mode_t) throws(SystemError) {
        let temporary = Array(".dpuctl-new.\(getpid())".utf8)
        let fd = try directory.open(at: temporary, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: 0o600)
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: max(contents.count, 1), alignment: 8)
        defer { bytes.deallocate() }
        bytes.copyBytes(from: contents)
        do throws(SystemError) {
            try fd.writeAll([UnsafeRawBufferPointer(rebasing: bytes[..<contents.count])])
            try fd.changeFileMode(mode)
            try directory.changeOwner(of: temporary, uid: 0, gid: 0)
            fd.closeQuietly()
            try directory.rename(temporary, to: directory, name)
        } catch {
            fd.closeQuietly()
            try? directory.removeEntry(temporary, directory: false)
            throw error
        }
    }

    static func writeIfDifferent(_ path: String, in root: FileDescriptor, contents: [UInt8], mode: mode_t) throws(SystemError) -> Change? {
        let (parent, name) = try openParent(path, in: root)
        defer { parent.closeQuietly() }
        let existing = try? parent.status(of: name)
        if let existing, existing.st_mode & S_IFMT == S_IFREG, existing.st_mode & 0o7777 == mode, existing.st_uid == 0,
            (try? readFile(path, in: root)) == contents
        {
            return nil
        }
        try writeFile(name, in: parent, contents: contents, mode: mode)
        return Change(path: path, what: [existing == nil ? "new" : "content"])
    }

    /// Copies a file (dpuctl, libudsproxy.so) keeping its modification time, so that size and time tell
    /// whether it is the same next time.
    static func copyFile(_ source: String, to path: String, in root: FileDescriptor, mode: mode_t) throws(SystemError) -> Change? {
        let input = try FileDescriptor.openPath(source, flags: O_RDONLY)
        defer { input.closeQuietly() }
        let info = try input.status()
        let (parent, name) = try openParent(path, in: root)
        defer { parent.closeQuietly() }
        let existing = try? parent.status(of: name)
        if let existing, existing.st_mode & S_IFMT == S_IFREG, existing.st_size == info.st_size,
            existing.st_mtim.tv_sec == info.st_mtim.tv_sec, existing.st_mtim.tv_nsec == info.st_mtim.tv_nsec,
            existing.st_mode & 0o7777 == mode, existing.st_uid == 0
        {
            return nil
        }
        var contents: [UInt8] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let count = try input.readSome(into: buffer) ?? 0
            if count == 0 { break }
            contents += buffer[..<count]
        }
        try writeFile(name, in: parent, contents: contents, mode: mode)
        try parent.setTimes(of: name, access: info.st_atim, modification: info.st_mtim)
        return Change(path: path, what: [existing == nil ? "new" : "content"])
    }

    /// Makes `path` a symbolic link to `target` unless it already is one.
    static func symbolicLink(_ path: [UInt8], in root: FileDescriptor, target: [UInt8]) throws(SystemError) -> Change? {
        let (parent, name) = try openParent(describe(path), in: root)
        defer { parent.closeQuietly() }
        let existing = try? parent.status(of: name)
        if let existing, existing.st_mode & S_IFMT == S_IFLNK, try parent.readLink(name) == target { return nil }
        if let existing, existing.st_mode & S_IFMT == S_IFDIR {
            throw SystemError(.fileExists, "make a symbolic link (a directory is in the way)", describe(path))
        }
        let temporary = Array(".dpuctl-link.\(getpid())".utf8)
        try? parent.removeEntry(temporary, directory: false)
        try parent.makeSymbolicLink(temporary, target: target)
        try parent.rename(temporary, to: parent, name)
        let what = existing == nil ? "new" : (existing!.st_mode & S_IFMT == S_IFLNK ? "link target" : "type")
        return Change(path: describe(path) + " -> " + describe(target), what: [what])
    }
}

/// `word` in single quotes for a POSIX shell.
func shellQuote(_ word: String) -> String {
    "'" + word.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
}

import DPUConfig
import DPUSystem
import Glibc
import SystemPackage

/// One line of `rootfs status`.
public struct RootfsStatusRow: Sendable, Equatable {
    public enum State: String, Sendable { case ok, missing, different }
    public var state: State
    public var item: String
    public var path: String
    public var detail: String
}

/// What a rootfs has and lacks, read-only.
public enum RootfsInspector {
    public static func status(root rootPath: String, dpuctlBinary: String, udsproxyLibrary: String?) -> [RootfsStatusRow] {
        var rows: [RootfsStatusRow] = []
        func row(_ state: RootfsStatusRow.State, _ item: String, _ path: String, _ detail: String = "") {
            rows.append(RootfsStatusRow(state: state, item: item, path: path, detail: detail))
        }
        guard let root = try? FileDescriptor.openPath(rootPath, flags: O_RDONLY | O_DIRECTORY) else {
            row(.missing, "rootfs", rootPath, "make it with `dpuctl rootfs prepare --root \(rootPath)`")
            return rows
        }
        defer { root.closeQuietly() }
        var source = "unknown"
        if let marker = try? ConfigFile(text: String(decoding: (try? Layout.readFile(RootfsPreparer.markerName, in: root)) ?? [], as: UTF8.self), path: RootfsPreparer.markerName),
            let section = marker.sections(named: "rootfs").first, let value = try? section.value("source")
        {
            source = value.value
            row(.ok, "marker", RootfsPreparer.markerName, "made from \(source)")
        } else {
            row(.missing, "marker", RootfsPreparer.markerName, "not made by `dpuctl rootfs prepare` (it refuses to write here without --force)")
        }

        // The system.
        if source == "host" {
            for tree in RootfsPreparer.hostTrees {
                var host = Glibc.stat()
                guard lstat("/" + tree, &host) == 0 else { continue }
                let isLink = host.st_mode & S_IFMT == S_IFLNK
                guard let info = try? root.status(of: Array(tree.utf8)) else {
                    row(.missing, "system", tree, "copied from this machine's /\(tree)")
                    continue
                }
                if isLink {
                    var target = (try? FileDescriptor(rawValue: AT_FDCWD).readLink(Array(("/" + tree).utf8))) ?? []
                    while target.first == 0x2F { target.removeFirst() }
                    let have = (try? root.readLink(Array(tree.utf8))) ?? []
                    row(have == target ? .ok : .different, "system", tree, have == target ? "-> \(describe(target))" : "should link to \(describe(target)) as on this machine")
                } else {
                    row(info.st_mode & S_IFMT == S_IFDIR ? .ok : .different, "system", tree, "directory")
                }
            }
        } else {
            for tree in ["usr", "etc"] {
                let present = (try? root.open(beneath: Array(tree.utf8), flags: O_PATH | O_DIRECTORY, resolve: [.inRoot]))
                present?.closeQuietly()
                row(present == nil ? .missing : .ok, "system", tree)
            }
        }

        // The skeleton.
        let missing = Layout.directories.map(\.path).filter {
            (try? root.open(beneath: Array($0.utf8), flags: O_PATH | O_DIRECTORY, resolve: [.inRoot])).map { $0.closeQuietly() } == nil
        }
        row(missing.isEmpty ? .ok : .missing, "skeleton", missing.isEmpty ? "\(Layout.directories.count) directories" : missing.joined(separator: " "))
        for (path, target) in Layout.links {
            link(root, path, target, item: "skeleton", &rows, directoryIsFine: true)
        }

        // dpuctl's pieces.
        file(root, "usr/bin/dpuctl", sameAs: dpuctlBinary, item: "dpuctl", &rows)
        link(root, "usr/bin/rexec", "dpuctl", item: "rexec", &rows)
        link(root, "usr/sbin/mount.qtfs", "../bin/dpuctl", item: "mount.qtfs", &rows)
        if let sbin = try? root.status(of: Array("sbin".utf8)), sbin.st_mode & S_IFMT == S_IFDIR {
            link(root, "sbin/mount.qtfs", "../usr/bin/dpuctl", item: "mount.qtfs", &rows)
        }
        for (path, program) in Layout.wrappers(emulators: Layout.emulators(in: root)) {
            let item = program.split(separator: "/").last.map(String.init) ?? program
            guard let text = try? Layout.readFile(path, in: root) else {
                row(.missing, item, path, "the wrapper that runs the emulator on the host through rexec")
                continue
            }
            let address = Layout.existingAddress(path, in: root)
            if text == Array(Layout.wrapper(address: address, program: program).utf8) {
                row(.ok, item, path, address.map { "CMD_NET_ADDR=\($0)" } ?? "no CMD_NET_ADDR: rexec finds the host in its configuration (prepare --host URL writes one in)")
            } else if text.starts(with: Array("#!/bin/sh\n# An emulator for libvirtd in the DPU rootfs, made by `dpuctl rootfs prepare`".utf8)) {
                row(.different, item, path, "an older dpuctl's wrapper: `dpuctl rootfs prepare` brings it up to date")
            } else {
                row(.different, item, path, "not dpuctl's wrapper (a real emulator would run on the DPU)")
            }
        }
        if let udsproxyLibrary {
            file(root, "usr/lib64/libudsproxy.so", sameAs: udsproxyLibrary, item: "libudsproxy", &rows)
        } else {
            let present = (try? root.status(of: Array("usr/lib64/libudsproxy.so".utf8))) != nil
            row(present ? .ok : .missing, "libudsproxy", "usr/lib64/libudsproxy.so", present ? "(no libudsproxy.so here to compare with)" : "")
        }
        return rows
    }

    private static func link(
        _ root: FileDescriptor, _ path: String, _ target: String, item: String, _ rows: inout [RootfsStatusRow],
        directoryIsFine: Bool = false
    ) {
        let (parentPath, name) = split(path)
        let parent = parentPath.isEmpty ? try? root.duplicateCloseOnExec()
            : try? root.open(beneath: Array(parentPath.utf8), flags: O_PATH | O_DIRECTORY, resolve: [.beneath, .noSymlinks])
        defer { parent?.closeQuietly() }
        guard let parent, let info = try? parent.status(of: Array(name.utf8)) else {
            rows.append(RootfsStatusRow(state: .missing, item: item, path: path, detail: "-> \(target)"))
            return
        }
        if directoryIsFine && info.st_mode & S_IFMT == S_IFDIR {
            rows.append(RootfsStatusRow(state: .ok, item: item, path: path, detail: "directory"))
            return
        }
        let have = info.st_mode & S_IFMT == S_IFLNK ? (try? parent.readLink(Array(name.utf8))).map(describe) : nil
        rows.append(have == target
            ? RootfsStatusRow(state: .ok, item: item, path: path, detail: "-> \(target)")
            : RootfsStatusRow(state: .different, item: item, path: path, detail: "should be a link to \(target)" + (have.map { ", is one to \($0)" } ?? "")))
    }

    private static func file(_ root: FileDescriptor, _ path: String, sameAs source: String, item: String, _ rows: inout [RootfsStatusRow]) {
        guard let installed = try? root.open(beneath: Array(path.utf8), flags: O_PATH | O_NOFOLLOW, resolve: [.beneath, .noSymlinks]) else {
            rows.append(RootfsStatusRow(state: .missing, item: item, path: path, detail: "copy of \(source)"))
            return
        }
        defer { installed.closeQuietly() }
        var original = Glibc.stat()
        guard let info = try? installed.status(), stat(source, &original) == 0 else {
            rows.append(RootfsStatusRow(state: .ok, item: item, path: path, detail: ""))
            return
        }
        let same = info.st_size == original.st_size && info.st_mtim.tv_sec == original.st_mtim.tv_sec
            && info.st_mtim.tv_nsec == original.st_mtim.tv_nsec
        rows.append(RootfsStatusRow(
            state: same ? .ok : .different, item: item, path: path,
            detail: same ? "same as \(source)" : "not the same as \(source) (size or time differ); `dpuctl rootfs prepare` installs it"))
    }

    private static func split(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<slash]), String(path[path.index(after: slash)...]))
    }
}

import DPUSystem
import Glibc
import SystemPackage

/// A process that keeps a mount busy, and how.
public struct Holder: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var command: String
    /// "cwd", "root", "fd 3 /path", "maps /path".
    public var uses: [String]

    public var description: String {
        let shown = uses.prefix(3).joined(separator: ", ")
        let more = uses.count > 3 ? " and \(uses.count - 3) more" : ""
        return "\(pid) (\(command)): \(shown)\(more)"
    }
}

/// Finds the processes that use files below a path: their working directory, root, open files and
/// mapped files (what fuser -m reports), by scanning /proc.
public enum Holders {
    public static func scan(under path: String) -> [Holder] {
        let own = getpid()
        var holders: [Holder] = []
        for pid in processIDs() where pid != own {
            var uses: [String] = []
            for name in ["cwd", "root", "exe"] {
                if let target = link("/proc/\(pid)/\(name)"), RootPath.isWithin(target, path) { uses.append(name) }
            }
            for fd in entries("/proc/\(pid)/fd") {
                if let target = link("/proc/\(pid)/fd/\(fd)"), RootPath.isWithin(target, path) {
                    uses.append("fd \(fd) \(target)")
                }
            }
            if let maps = try? readTextFile("/proc/\(pid)/maps", limit: 4 << 20) {
                var seen: Set<String> = []
                for line in maps.split(separator: "\n") {
                    guard let slash = line.firstIndex(of: "/") else { continue }
                    let file = String(line[slash...])
                    if RootPath.isWithin(file, path), seen.insert(file).inserted { uses.append("maps \(file)") }
                }
            }
            guard !uses.isEmpty else { continue }
            let command = ((try? readTextFile("/proc/\(pid)/comm")) ?? "?").trimmingCharacters(in: "\n")
            holders.append(Holder(pid: pid, command: command, uses: uses))
        }
        return holders
    }

    /// The pids in /proc.
    static func processIDs() -> [Int32] { entries("/proc").compactMap { Int32($0) }.sorted() }

    /// Names in a directory (empty when it cannot be read: the process went away, or is not ours to see).
    static func entries(_ directory: String) -> [String] {
        guard let fd = try? FileDescriptor.openPath(directory, flags: O_RDONLY | O_DIRECTORY) else { return [] }
        defer { fd.closeQuietly() }
        return ((try? fd.directoryNames()) ?? []).map(describe)
    }

    static func link(_ path: String) -> String? {
        (try? FileDescriptor(rawValue: AT_FDCWD).readLink(Array(path.utf8))).map(describe)
    }

    /// The processes whose command line is a qtfs client for `mountPoint` (`mount.qtfs SRC MOUNTPOINT` or
    /// `dpuctl qtfs mount SRC MOUNTPOINT`).
    public static func qtfsClients(for mountPoint: String) -> [Int32] {
        processIDs().filter { pid in
            guard let text = try? readTextFile("/proc/\(pid)/cmdline", limit: 1 << 16) else { return false }
            let argv = text.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
            guard let first = argv.first, argv.contains(mountPoint) else { return false }
            let name = first.split(separator: "/").last.map(String.init) ?? first
            return name == "mount.qtfs" || (name == "dpuctl" && argv.dropFirst().prefix(2) == ["qtfs", "mount"])
        }
    }
}

extension String {
    func trimmingCharacters(in characters: String) -> String {
        var text = Substring(self)
        while let last = text.last, characters.contains(last) { text = text.dropLast() }
        return String(text)
    }
}

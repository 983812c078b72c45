import DPUSystem
import Glibc
import SystemPackage

/// Whether the server's machine sees one of our open files as the same file, and at which path: a file
/// on a qtfs mount is the host's own file (the mount's source is `qtfs:HOSTPATH`), at HOSTPATH plus the
/// mount's root plus the rest of our path. Any other file is this machine's alone, even where the host
/// happens to have a file of the same name (`virsh save VM /root/vm.save` on the DPU's own disk): such a
/// file is streamed, never reopened by path.
///
/// The mount is the fd's own (`mnt_id` in /proc/self/fdinfo/N), so an overmount or a longer path prefix
/// cannot mislead. The mount table is read once, on the first question.
struct SharedFiles {
    private var mounts: [MountInfoEntry]?

    /// The path the host opens for `fd`, or nil when the host does not share its file.
    mutating func hostPath(of fd: FileDescriptor) -> String? {
        guard let id = Self.mountID(of: fd), let path = try? fd.linkTarget(), path.hasPrefix("/"),
            !path.hasSuffix(" (deleted)")
        else { return nil }
        if mounts == nil { mounts = (try? MountInfo.read()) ?? [] }
        guard let mount = mounts?.first(where: { $0.id == id }) else { return nil }
        return Self.hostPath(path, on: mount)
    }

    /// `path` (on `mount`) as the host names it; nil unless `mount` is qtfs's.
    static func hostPath(_ path: String, on mount: MountInfoEntry) -> String? {
        guard mount.fileSystemType == "fuse.qtfs", mount.source.hasPrefix("qtfs:/") else { return nil }
        let hostRoot = String(mount.source.dropFirst("qtfs:".count))
        let rest: Substring
        if mount.mountPoint == "/" {
            rest = path.dropFirst()
        } else if path == mount.mountPoint {
            rest = ""
        } else if path.hasPrefix(mount.mountPoint + "/") {
            rest = path.dropFirst(mount.mountPoint.count + 1)
        } else {
            return nil
        }
        var host = hostRoot
        for part in [Substring(mount.root), rest] {
            let trimmed = part.drop { $0 == "/" }
            if trimmed.isEmpty { continue }
            if !host.hasSuffix("/") { host += "/" }
            host += trimmed
        }
        return host
    }

    /// The id of the mount `fd`'s file is on (`mnt_id:` in /proc/self/fdinfo/N).
    static func mountID(of fd: FileDescriptor) -> Int? {
        guard let text = try? readTextFile("/proc/self/fdinfo/\(fd.rawValue)", limit: 4096) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("mnt_id:") {
            return Int(String(line.dropFirst("mnt_id:".count)).trimmingCharacters(in: " \t"))
        }
        return nil
    }
}

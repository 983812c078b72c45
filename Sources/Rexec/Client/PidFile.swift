import DPUSystem
import Glibc
import SystemPackage

/// `/var/run/rexec/pids/<client pid>`: the remote pid, as decimal digits without a newline, locked with
/// flock for as long as the client lives — the original's map from a local rexec pid to the remote one.
/// Files whose lock is free belong to clients that died; they are removed when the next client starts.
struct PidFile {
    let path: String
    let fd: FileDescriptor

    /// Creates, locks and fills the file. Returns nil without complaint when the directory cannot be
    /// created for lack of permission (a non-root caller: the map is for root's tools).
    static func create(directory: String, remotePID: pid_t) throws(SystemError) -> PidFile? {
        let path = "\(directory)/\(getpid())"
        let fd: FileDescriptor
        var leftover = false
        do throws(SystemError) {
            // Usually the directory is there and no file has our pid: three system calls in all.
            fd = try FileDescriptor.openPath(path, flags: O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW, mode: 0o600)
        } catch where error.errno == .noSuchFileOrDirectory {
            do throws(SystemError) {
                try makeDirectories(directory)
            } catch where [.permissionDenied, .notPermitted, .readOnlyFileSystem].contains(error.errno) {
                return nil
            }
            fd = try FileDescriptor.openPath(path, flags: O_CREAT | O_WRONLY | O_NOFOLLOW, mode: 0o600)
            leftover = true
        } catch where error.errno == .fileExists {
            // A dead process's leftover under our pid: ours now, emptied once we hold the lock. (Only
            // then: on ext4 a truncate-then-write makes the close wait for the disk.)
            // O_NONBLOCK: whatever sits at that name (a FIFO), opening it must not wait.
            fd = try FileDescriptor.openPath(path, flags: O_WRONLY | O_NOFOLLOW | O_NONBLOCK)
            leftover = true
        } catch where [.permissionDenied, .notPermitted, .readOnlyFileSystem].contains(error.errno) {
            return nil
        }
        do throws(SystemError) {
            try fd.lock()
            if leftover, (try fd.descriptorStatus()).size > 0 { try fd.truncate(to: 0) }
            try fd.writeFully(String(remotePID).utf8)
        } catch {
            fd.closeQuietly()
            unlink(path)
            throw error
        }
        removeStale(directory)
        return PidFile(path: path, fd: fd)
    }

    func remove() {
        unlink(path)
        fd.closeQuietly()
    }

    /// `mkdir -p` with mode 0700 for what it creates (usually one mkdir: the directory exists).
    private static func makeDirectories(_ path: String) throws(SystemError) {
        if mkdir(path, 0o700) == 0 || errno == EEXIST { return }
        guard errno == ENOENT else { throw SystemError(Errno(rawValue: errno), "mkdir", path) }
        let bytes = Array(path.utf8)
        for index in bytes.indices where index > 0 && bytes[index] == UInt8(ascii: "/") || index == bytes.count - 1 {
            let prefix = String(decoding: bytes[...index].last == UInt8(ascii: "/") ? bytes[..<index] : bytes[...index], as: UTF8.self)
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw SystemError(Errno(rawValue: errno), "mkdir", prefix)
            }
        }
    }

    /// Deletes files whose lock nobody holds (their client died without cleaning up).
    private static func removeStale(_ directory: String) {
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        let own = String(getpid())
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            // Pid names only (the original ignores names of 16 characters or more).
            guard name != own, !name.isEmpty, name.utf8.count < 16, name.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { continue }
            // A live process of that pid (its client, or another process that got the number): leave the
            // file; checking its lock would cost every client an open per running client.
            if let pid = pid_t(name), kill(pid, 0) == 0 || errno == EPERM { continue }
            let path = "\(directory)/\(name)"
            guard let fd = try? FileDescriptor.openPath(path, flags: O_RDONLY | O_NOFOLLOW) else { continue }
            // An empty file may be a client between its open and its flock: leave it.
            if (try? fd.lock(nonBlocking: true)) == true, ((try? fd.descriptorStatus())?.size ?? 0) > 0 { unlink(path) }
            fd.closeQuietly()
        }
    }
}

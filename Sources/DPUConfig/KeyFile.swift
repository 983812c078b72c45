import DPUSystem
import DPUWire
import Glibc
import SystemPackage

/// The pre-shared key file (default `/etc/dpuctl/key`): hex text, owned by the user the daemon runs as
/// (root) and readable by nobody else.
public enum KeyFile {
    public static let defaultPath = "/etc/dpuctl/key"

    /// Loads and checks a key file. A symlink is refused (its target's permissions are what matter, and
    /// a link is an easy way to point a daemon at the wrong file).
    public static func load(_ path: String) throws(KeyFileError) -> PreSharedKey {
        try load(path, missingIsNil: false)!
    }

    /// As `load`, but nil when nothing is at `path` (one open instead of an access() first: the rexec
    /// client reads the key on every remote exec).
    public static func loadIfPresent(_ path: String) throws(KeyFileError) -> PreSharedKey? {
        try load(path, missingIsNil: true)
    }

    private static func load(_ path: String, missingIsNil: Bool) throws(KeyFileError) -> PreSharedKey? {
        let fd: FileDescriptor
        do {
            // O_NONBLOCK: a FIFO put at the path must not hang us before fstat refuses it.
            fd = try FileDescriptor.openPath(path, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
        } catch {
            switch error.errno {
            case .noSuchFileOrDirectory where missingIsNil:
                return nil
            case .noSuchFileOrDirectory:
                throw KeyFileError(path: path, "does not exist; create one with `dpuctl key generate \(path)` and copy it to the peer")
            case .tooManySymbolicLinkLevels:
                throw KeyFileError(path: path, "is a symbolic link; point --key at the file itself")
            default:
                throw KeyFileError(path: path, "cannot be opened: \(error.errno)")
            }
        }
        defer { fd.closeQuietly() }
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else { throw KeyFileError(path: path, "cannot be examined") }
        guard info.st_mode & S_IFMT == S_IFREG else { throw KeyFileError(path: path, "is not a regular file") }
        let owner = geteuid()
        guard info.st_uid == owner else {
            throw KeyFileError(path: path, "is owned by uid \(info.st_uid), not by uid \(owner) that runs dpuctl; `chown \(owner) \(path)`")
        }
        guard info.st_mode & 0o077 == 0 else {
            let mode = String(info.st_mode & 0o777, radix: 8)
            throw KeyFileError(path: path, "has mode \(mode): group or others can access it; `chmod 600 \(path)`")
        }
        let text: String
        do { text = try fd.readText(limit: 4096, subject: path) } catch {
            throw KeyFileError(path: path, "cannot be read: \(error.errno)")
        }
        do { return try PreSharedKey(fileText: text) } catch { throw KeyFileError(path: path, error.message) }
    }

    /// Writes a fresh random key to `path` with mode 0600, refusing to overwrite an existing file unless
    /// `force` (a replaced key breaks the peer until it gets the new one).
    public static func generate(_ path: String, force: Bool) throws(KeyFileError) {
        let text = PreSharedKey.generateFileText()
        let temporary = path + ".new"
        unlink(temporary)
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.openPath(temporary, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        } catch {
            throw KeyFileError(path: path, "cannot be created: \(error)")
        }
        do {
            // O_CREAT's mode is masked by the umask; set it exactly.
            guard fchmod(fd.rawValue, 0o600) == 0 else { throw SystemError(Errno(rawValue: errno), "fchmod", temporary) }
            do { _ = try fd.writeAll(text.utf8) } catch { throw SystemError((error as? Errno) ?? .ioError, "write", temporary) }
            guard fsync(fd.rawValue) == 0 else { throw SystemError(Errno(rawValue: errno), "fsync", temporary) }
            fd.closeQuietly()
        } catch {
            fd.closeQuietly()
            unlink(temporary)
            throw KeyFileError(path: path, "cannot be written: \(error)")
        }
        if !force {
            // link(2) fails if the target exists: no window where a concurrent writer is overwritten.
            guard link(temporary, path) == 0 else {
                let error = Errno(rawValue: errno)
                unlink(temporary)
                if error == .fileExists {
                    throw KeyFileError(path: path, "already exists; keep it, or replace it with --force (then copy it to the peer again)")
                }
                throw KeyFileError(path: path, "cannot be created: \(error)")
            }
            unlink(temporary)
        } else if rename(temporary, path) != 0 {
            let error = Errno(rawValue: errno)
            unlink(temporary)
            throw KeyFileError(path: path, "cannot be replaced: \(error)")
        }
    }
}

/// A key file that cannot be used, and what to do about it.
public struct KeyFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var reason: String
    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "key file \(path) \(reason)" }
}

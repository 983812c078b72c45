import CDPUSystem
import Glibc
import SystemPackage

/// Linux namespace kinds (CLONE_NEW*), for `setns(2)` and `unshare(2)`.
public struct NamespaceKinds: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let mount = NamespaceKinds(rawValue: 0x0002_0000)
    public static let uts = NamespaceKinds(rawValue: 0x0400_0000)
    public static let ipc = NamespaceKinds(rawValue: 0x0800_0000)
    public static let user = NamespaceKinds(rawValue: 0x1000_0000)
    public static let pid = NamespaceKinds(rawValue: 0x2000_0000)
    public static let network = NamespaceKinds(rawValue: 0x4000_0000)
    public static let cgroup = NamespaceKinds(rawValue: 0x0200_0000)
}

public enum Namespace {
    /// `setns(2)`: moves the calling thread into the namespace `fd` refers to (a /proc/PID/ns/* file or a
    /// pidfd). `kinds` empty means "whatever `fd` is".
    public static func enter(_ fd: FileDescriptor, kinds: NamespaceKinds = []) throws(SystemError) {
        _ = try syscall("setns") { cdpu_setns(fd.rawValue, kinds.rawValue) }
    }

    /// `unshare(2)`.
    public static func unshare(_ kinds: NamespaceKinds) throws(SystemError) {
        _ = try syscall("unshare") { cdpu_unshare(kinds.rawValue) }
    }
}

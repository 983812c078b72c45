import Glibc

/// User accounts (`getpwnam_r(3)`), for configuration that names users.
public enum Accounts {
    /// The uid of the user `name`, or nil if there is none.
    public static func userID(named name: String) -> uid_t? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>? = nil
        var buffer = [CChar](repeating: 0, count: 16384)
        let status = getpwnam_r(name, &entry, &buffer, buffer.count, &result)
        guard status == 0, result != nil else { return nil }
        return entry.pw_uid
    }
}

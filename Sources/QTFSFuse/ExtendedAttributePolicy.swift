/// Which extended attributes a mount carries between the DPU and the host.
///
/// Everything is carried (user.*, trusted.* — libvirt's ownership memory —, security.capability, ...)
/// except two families, which stay out unless the mount asks for them:
/// - POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`; option `acl`): the DPU's kernel
///   checks permissions against the host's mode bits (default_permissions, no FUSE_POSIX_ACL), so an ACL
///   the DPU could read would not be what it enforces.
/// - LSM labels (`security.selinux`, `security.SMACK64*`, `security.apparmor`; option `seclabel`): they
///   belong to the host's policy. An LSM running on the DPU labels the mount itself and never asks the
///   file system; without one, reading the host's label means nothing here and writing it would relabel
///   a host file from the DPU.
/// Left out means EOPNOTSUPP, as on a file system without them. Tools remember that per file system
/// (`ls -l` stops asking for both after the first file) where a per-file ENODATA costs two FUSE round
/// trips for every file listed.
struct ExtendedAttributePolicy: Sendable, Equatable {
    var acl = false
    var securityLabels = false

    private static let aclNames: [[UInt8]] = [Array("system.posix_acl_access".utf8), Array("system.posix_acl_default".utf8)]
    private static let labelNames: [[UInt8]] = [Array("security.selinux".utf8), Array("security.apparmor".utf8)]
    private static let smackPrefix = Array("security.SMACK64".utf8)

    /// Whether the attribute `name` (no terminating NUL) travels.
    func carries<Name: Collection<UInt8>>(_ name: Name) -> Bool {
        if !acl, Self.aclNames.contains(where: { $0.elementsEqual(name) }) { return false }
        if !securityLabels,
            Self.labelNames.contains(where: { $0.elementsEqual(name) }) || name.starts(with: Self.smackPrefix)
        {
            return false
        }
        return true
    }

    /// A listxattr answer (names each ending in NUL) without the names that do not travel.
    func filter(list: [UInt8]) -> [UInt8] {
        guard !(acl && securityLabels) else { return list }
        var kept: [UInt8] = []
        kept.reserveCapacity(list.count)
        for name in list.split(separator: 0, omittingEmptySubsequences: true) where carries(name) {
            kept += name
            kept.append(0)
        }
        return kept
    }
}

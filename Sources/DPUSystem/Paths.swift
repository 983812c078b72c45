import Glibc

/// `realpath(3)`: `path` with every symbolic link, `.` and `..` resolved; the file must exist.
public func realPath(_ path: String) throws(SystemError) -> String {
    var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard Glibc.realpath(path, &resolved) != nil else { throw SystemError(currentErrno, "realpath", path) }
    return cString(resolved)
}

/// `path` made absolute and free of `.`, `..` and repeated slashes by looking at the text only (no file
/// system access, so symbolic links are not followed). A relative path is taken from `base`.
public func lexicallyNormalized(_ path: [UInt8], base: [UInt8] = [UInt8(ascii: "/")]) -> [UInt8] {
    let slash = UInt8(ascii: "/")
    let whole = path.first == slash ? path : base + [slash] + path
    var parts: [ArraySlice<UInt8>] = []
    for part in whole.split(separator: slash, omittingEmptySubsequences: true) {
        if part.elementsEqual([UInt8(ascii: ".")]) { continue }
        if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
            if !parts.isEmpty { parts.removeLast() }
            continue
        }
        parts.append(part)
    }
    var result: [UInt8] = []
    for part in parts {
        result.append(slash)
        result.append(contentsOf: part)
    }
    return result.isEmpty ? [slash] : result
}

/// Whether `prefix` is `path` or a directory above it (`/a/b` covers `/a/b` and `/a/b/c`, not `/a/bc`).
/// Both must be normalized (absolute, no trailing slash except for `/` itself).
public func pathIsWithin(_ path: [UInt8], _ prefix: [UInt8]) -> Bool {
    let slash = UInt8(ascii: "/")
    if prefix == [slash] { return path.first == slash }
    guard path.count >= prefix.count, path.starts(with: prefix) else { return false }
    return path.count == prefix.count || path[prefix.count] == slash
}

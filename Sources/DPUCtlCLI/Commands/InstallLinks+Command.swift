import ArgumentParser
import Glibc

/// `dpuctl install-links`: the symlinks that make dpuctl answer to the original's command names.
struct InstallLinksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-links",
        abstract: "Create a symlink to dpuctl for every applet name (rexec, rexec_server, mount.qtfs, ...).",
        discussion: "Links go to PREFIX/bin or PREFIX/sbin as `dpuctl --list` says. PREFIX defaults to the directory above the one dpuctl is in.")

    @Option(help: ArgumentHelp("Install under this prefix.", valueName: "dir"))
    var prefix: String?

    @Flag(help: "Replace files that are in the way.")
    var force = false

    func run() async throws {
        try await reportingErrors("dpuctl install-links") {
            let executable = try selfExecutable()
            let binDirectory = executable.split(separator: "/").dropLast().joined(separator: "/")
            let prefix = self.prefix ?? "/" + binDirectory.split(separator: "/").dropLast().joined(separator: "/")
            for applet in Applets.all {
                let directory = prefix + "/" + applet.directory
                let link = directory + "/" + applet.name
                try makeDirectories(directory)
                var existing = [CChar](repeating: 0, count: 4096)
                let length = readlink(link, &existing, existing.count - 1)
                if length > 0, String(decoding: existing[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) == executable {
                    print("\(link): already links to \(executable)")
                    continue
                }
                if access(link, F_OK) == 0 || length >= 0 {
                    guard force else {
                        throw LinkError(message: "\(link) exists and is not a link to \(executable); use --force to replace it")
                    }
                    guard unlink(link) == 0 else {
                        throw LinkError(message: "cannot remove \(link): \(String(cString: strerror(errno)))")
                    }
                }
                guard symlink(executable, link) == 0 else {
                    throw LinkError(message: "cannot create \(link): \(String(cString: strerror(errno)))")
                }
                print("\(link) -> \(executable)")
            }
        }
    }
}

/// `mkdir -p`: creates `path` and its missing parents with mode 0755.
func makeDirectories(_ path: String) throws {
    var current = ""
    for component in path.split(separator: "/") {
        current += "/" + component
        guard mkdir(current, 0o755) == 0 || errno == EEXIST else {
            throw LinkError(message: "cannot create \(current): \(String(cString: strerror(errno)))")
        }
    }
}

struct LinkError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The absolute path of the running binary (/proc/self/exe).
func selfExecutable() throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard length > 0 else { throw LinkError(message: "cannot find the dpuctl binary through /proc/self/exe") }
    return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

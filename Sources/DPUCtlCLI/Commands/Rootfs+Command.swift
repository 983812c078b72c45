import ArgumentParser
import DPUSystem
import Glibc
import Rootfs

/// `dpuctl rootfs`: build the DPU rootfs (/another_rootfs).
struct RootfsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs", abstract: "Prepare the DPU rootfs that libvirtd runs in.",
        subcommands: [RootfsPrepareCommand.self, RootfsStatusCommand.self])
}

struct RootfsOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The rootfs directory.", valueName: "dir"))
    var root: String = "/another_rootfs"
}

struct RootfsPrepareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare", abstract: "Copy a rootfs from this machine or an image and install dpuctl's pieces in it.",
        discussion: """
            Copies /usr, /bin, /sbin, /lib and /lib64 of this machine (links where /usr is merged), or the \
            root file system of a qcow2 or raw image, keeping owners, modes, setuid bits, extended \
            attributes and file capabilities, hard links and symbolic links; makes the skeleton (with \
            var/run -> ../run); then installs dpuctl with its rexec and mount.qtfs links, the qemu-kvm \
            wrappers in /usr/bin and /usr/libexec, and libudsproxy.so. A second run changes only what \
            differs and lists it. It refuses /, a directory with mounts under it, and a non-empty \
            directory it did not make (unless --force).
            """)

    @OptionGroup var rootfs: RootfsOptions

    @Option(help: ArgumentHelp("Where to copy from: `host` (this machine).", valueName: "source"))
    var from: String = "host"

    @Option(name: .customLong("from-image"), help: ArgumentHelp("A qcow2 or raw disk image to copy from.", valueName: "file"))
    var fromImage: String?

    @Option(help: ArgumentHelp("The host's rexec address baked into the qemu-kvm wrappers.", valueName: "url"))
    var host: String?

    @Flag(help: "Write into a non-empty directory that dpuctl did not create.")
    var force = false

    func validate() throws {
        guard from == "host" else { throw ValidationError("--from takes `host`; for an image use --from-image FILE") }
        if let host {
            do { _ = try Endpoint(parsing: host) } catch {
                throw ValidationError("--host: \(error) (expected tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT)")
            }
        }
    }

    func run() async throws {
        try await reportingErrors("dpuctl rootfs prepare") {
            let binary = try selfExecutable()
            let (library, searched) = udsproxyLibrary(next: binary)
            let request = RootfsRequest(
                root: rootfs.root, source: fromImage.map { .image($0) } ?? .host,
                hostAddress: try host.map { try Endpoint(parsing: $0) }, force: force, dpuctlBinary: binary,
                udsproxyLibrary: library, udsproxySearched: searched, searchPath: getenv("PATH").map { String(cString: $0) })
            let bar = isatty(2) == 1 ? ProgressBar() : nil
            let report: RootfsReport
            do {
                report = try RootfsPreparer.prepare(
                    request, progress: bar.map { bar in { bar.show($0, total: $1) } },
                    log: { message in
                        bar?.clear()
                        print(message)
                    })
                bar?.clear()
            } catch {
                bar?.clear()
                throw error
            }
            printReport(report, root: rootfs.root)
        }
    }

    private func printReport(_ report: RootfsReport, root: String) {
        let copy = report.copy
        print("copied from \(report.origin): \(copy.created) new, \(copy.changes.count) fixed, \(copy.unchanged) already as there (\(bytes(copy.bytesCopied)) written)")
        if copy.created <= copy.createdSample.count {
            for path in copy.createdSample { print("  new: \(path)") }
        }
        for change in copy.changes.prefix(200) { print("  \(change.what.joined(separator: ", ")): \(change.path)") }
        if copy.changes.count > 200 { print("  and \(copy.changes.count - 200) more fixed") }
        for change in report.setup { print("  \(change.what.joined(separator: ", ")): \(change.path)") }
        for warning in copy.warnings + report.warnings { print("warning: \(warning)") }
        let total = copy.created + copy.changes.count + report.setup.count
        print(total == 0 ? "\(root): nothing to change" : "\(root): \(total) change\(total == 1 ? "" : "s")")
    }
}

struct RootfsStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Report what the rootfs is missing.",
        discussion: "Exits 0 when nothing is missing or different, 3 otherwise.")

    @OptionGroup var rootfs: RootfsOptions

    func run() async throws {
        var complete = true
        try await reportingErrors("dpuctl rootfs status") {
            let binary = try selfExecutable()
            let rows = RootfsInspector.status(root: rootfs.root, dpuctlBinary: binary, udsproxyLibrary: udsproxyLibrary(next: binary).0)
            print(textTable([["STATE", "ITEM", "PATH", "DETAIL"]] + rows.map { [$0.state.rawValue, $0.item, $0.path, $0.detail] }), terminator: "")
            let missing = rows.filter { $0.state == .missing }.count, different = rows.filter { $0.state == .different }.count
            print("\(rootfs.root): \(missing) missing, \(different) different")
            complete = missing == 0 && different == 0
        }
        if !complete { throw ExitCode(3) }
    }
}

/// libudsproxy.so as built (next to the binary) or installed (PREFIX/lib, /usr/lib64, ...); and where it
/// was looked for.
func udsproxyLibrary(next binary: String) -> (String?, [String]) {
    let directory = String(binary[..<(binary.lastIndex(of: "/") ?? binary.startIndex)])
    let candidates = [
        directory + "/libudsproxy.so", directory + "/../lib/libudsproxy.so", directory + "/../lib64/libudsproxy.so",
        "/usr/local/lib/libudsproxy.so", "/usr/lib64/libudsproxy.so", "/usr/lib/libudsproxy.so",
    ]
    return (candidates.first { access($0, R_OK) == 0 }, candidates)
}

/// A one-line progress bar on stderr: entries and bytes, redrawn at most ten times a second.
final class ProgressBar {
    private var last = timespec()

    func show(_ done: CopyProgress, total: CopyProgress?) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let elapsed = Double(now.tv_sec - last.tv_sec) + Double(now.tv_nsec - last.tv_nsec) / 1e9
        guard elapsed >= 0.1 || done == total else { return }
        last = now
        var line = "\r"
        if let total, total.bytes > 0 || total.entries > 0 {
            let fraction = total.bytes > 0 ? Double(done.bytes) / Double(total.bytes) : Double(done.entries) / Double(max(total.entries, 1))
            let width = 30
            let filled = min(width, Int(fraction * Double(width)))
            line += "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
            line += "\(Int(min(fraction, 1) * 100))%  \(done.entries)/\(total.entries) files  \(bytes(done.bytes))/\(bytes(total.bytes))"
        } else {
            line += "\(done.entries) files  \(bytes(done.bytes))"
        }
        line += "\u{1B}[K"
        write(2, line, line.utf8.count)
    }

    func clear() {
        let line = "\r\u{1B}[K"
        write(2, line, line.utf8.count)
    }
}

/// 1536 -> "1.5 KiB".
func bytes(_ count: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(count) B" }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}

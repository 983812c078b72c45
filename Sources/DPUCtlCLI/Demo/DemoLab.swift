import DPUSystem
import Glibc
import SystemPackage

/// The demo's two machines on one kernel (DESIGN.md, Testing, as the tests' lab does it): "host" and
/// "dpu", each a network namespace joined by a veth pair (198.51.100.1 and .2, nothing else) and its own
/// mount and pid namespaces, rooted at `dpuctl demo machine-init`. Killing a machine's init ends every
/// process in it (daemons, libvirtd, QEMU) and drops its mounts, so teardown cannot leak.
struct DemoLab {
    /// Where a kept demo records its machines, so that `dpuctl demo exec` and `down` find them.
    static let stateDirectory = "/run/dpuctl-demo"
    static let hostAddress = "198.51.100.1"
    static let dpuAddress = "198.51.100.2"

    var host: DemoMachine
    var dpu: DemoMachine

    /// Builds both machines. `dpuctl` is this binary (the init runs it).
    static func create(dpuctl: String) throws -> DemoLab {
        try makeDirectories(stateDirectory)
        try run("ip", "netns", "add", "dpuctl-host")
        try run("ip", "netns", "add", "dpuctl-dpu")
        try run("ip", "link", "add", "dpuctl-h", "type", "veth", "peer", "name", "dpuctl-d")
        try run("ip", "link", "set", "dpuctl-h", "netns", "dpuctl-host")
        try run("ip", "link", "set", "dpuctl-d", "netns", "dpuctl-dpu")
        for (netns, link, address) in [("dpuctl-host", "dpuctl-h", hostAddress), ("dpuctl-dpu", "dpuctl-d", dpuAddress)] {
            try run("ip", "-n", netns, "addr", "add", address + "/24", "dev", link)
            try run("ip", "-n", netns, "link", "set", link, "up")
            try run("ip", "-n", netns, "link", "set", "lo", "up")
        }
        let lab = DemoLab(
            host: try DemoMachine.start(name: "host", netns: "dpuctl-host", address: hostAddress, dpuctl: dpuctl),
            dpu: try DemoMachine.start(name: "dpu", netns: "dpuctl-dpu", address: dpuAddress, dpuctl: dpuctl))
        try writeFile(stateDirectory + "/machines", "host \(lab.host.initPID)\ndpu \(lab.dpu.initPID)\n")
        return lab
    }

    /// The machines of a kept demo, if one is up.
    static func load() -> DemoLab? {
        guard let text = try? readTextFile(stateDirectory + "/machines") else { return nil }
        var pids: [String: pid_t] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2, let pid = pid_t(fields[1]) { pids[String(fields[0])] = pid }
        }
        guard let host = pids["host"], let dpu = pids["dpu"], kill(host, 0) == 0, kill(dpu, 0) == 0 else { return nil }
        return DemoLab(
            host: DemoMachine(name: "host", netns: "dpuctl-host", address: hostAddress, initPID: host),
            dpu: DemoMachine(name: "dpu", netns: "dpuctl-dpu", address: dpuAddress, initPID: dpu))
    }

    /// Whether anything of a demo is still there (machines, namespaces, state).
    static var exists: Bool {
        access(stateDirectory + "/machines", F_OK) == 0 || access("/run/netns/dpuctl-host", F_OK) == 0
            || access("/run/netns/dpuctl-dpu", F_OK) == 0
    }

    /// Ends both machines and removes the namespaces and the state. Safe to call on a half-built lab.
    static func destroy() {
        if let text = try? readTextFile(stateDirectory + "/machines") {
            for line in text.split(separator: "\n") {
                if let pid = line.split(separator: " ").last.flatMap({ pid_t($0) }) { DemoMachine.end(initPID: pid) }
            }
        }
        _ = try? ChildProcess.run("/usr/sbin/ip", arguments: ["ip", "netns", "del", "dpuctl-host"], timeoutSeconds: 10)
        _ = try? ChildProcess.run("/usr/sbin/ip", arguments: ["ip", "netns", "del", "dpuctl-dpu"], timeoutSeconds: 10)
        for file in ["machines", "key", "host.log", "dpu.log"] { unlink(stateDirectory + "/" + file) }
        if let entries = try? listDirectory(stateDirectory) {
            for entry in entries { unlink(stateDirectory + "/" + entry) }
        }
        rmdir(stateDirectory)
    }
}

/// One simulated machine.
struct DemoMachine {
    let name: String
    let netns: String
    let address: String
    let initPID: pid_t

    /// Starts the machine's init in new pid and mount namespaces inside `netns`.
    static func start(name: String, netns: String, address: String, dpuctl: String) throws -> DemoMachine {
        let null = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        defer { null.closeQuietly() }
        let unshare = try Spawn.start(SpawnRequest(
            path: "/usr/sbin/ip",
            arguments: [
                "ip", "netns", "exec", netns, "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                "--propagation", "private", dpuctl, "demo", "machine-init",
            ],
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], fileDescriptors: [0: null, 1: null, 2: null],
            newSession: true))
        // The init is unshare's only child; wait for it to appear.
        for _ in 0..<200 {
            if let text = try? readTextFile("/proc/\(unshare)/task/\(unshare)/children"),
                let pid = text.split(separator: " ").first.flatMap({ pid_t($0) })
            {
                return DemoMachine(name: name, netns: netns, address: address, initPID: pid)
            }
            usleep(10_000)
        }
        throw DemoError("the \(name) machine's init did not start (ip netns exec \(netns) unshare ...)")
    }

    /// SIGKILL to a pid namespace's init ends every process in it.
    static func end(initPID: pid_t) {
        guard kill(initPID, SIGKILL) == 0 else { return }
        for _ in 0..<500 where kill(initPID, 0) == 0 { usleep(10_000) }
    }

    /// The command line that runs `command` inside this machine (its network, mount and pid namespaces),
    /// optionally chrooted into `root` (chroot runs inside, so the machine's mounts under it are seen).
    func commandLine(_ command: [String], root: String? = nil) -> [String] {
        ["nsenter", "--target", String(initPID), "--mount", "--net", "--pid", "--wd=/", "--"]
            + (root.map { ["/usr/sbin/chroot", $0] } ?? []) + command
    }

    /// Runs `command` to completion; a non-zero exit is an error naming the command.
    @discardableResult
    func run(_ command: [String], root: String? = nil, timeout: Int32 = 300, check: Bool = true) throws -> ExitStatus {
        let status = try ChildProcess.run("/usr/bin/nsenter", arguments: commandLine(command, root: root), timeoutSeconds: timeout)
        if check, status != .exited(0) {
            throw DemoError("on the \(name): `\(command.joined(separator: " "))` \(status)")
        }
        return status
    }

    /// Runs a shell script (sh -ec) in the machine.
    func sh(_ script: String, root: String? = nil, timeout: Int32 = 300) throws {
        try run(["/bin/sh", "-ec", script], root: root, timeout: timeout)
    }

    /// Runs `command` and returns its status and its output (stdout and stderr).
    func capture(_ command: [String], root: String? = nil, timeout: Int32 = 60) throws -> (ExitStatus, String) {
        let output = try ChildProcess.anonymousFile()
        defer { output.closeQuietly() }
        let status = try ChildProcess.run(
            "/usr/bin/nsenter", arguments: commandLine(command, root: root), output: output, errorOutput: output,
            timeoutSeconds: timeout)
        return (status, try ChildProcess.contents(of: output))
    }

    /// Starts a long-running `command` in the machine; its output goes to `log`.
    func start(_ command: [String], root: String? = nil, environment: [String] = [], log: String) throws {
        let null = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        defer { null.closeQuietly() }
        let output = try FileDescriptor.openPath(log, flags: O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        defer { output.closeQuietly() }
        let line = commandLine((environment.isEmpty ? [] : ["/usr/bin/env"] + environment) + command, root: root)
        _ = try Spawn.start(SpawnRequest(
            path: "/usr/bin/nsenter", arguments: line, environment: ChildProcess.currentEnvironment,
            fileDescriptors: [0: null, 1: output, 2: output], newSession: true))
    }
}

struct DemoError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program on this machine (outside the lab) and fails with its command line if it fails.
private func run(_ arguments: String...) throws {
    let path = Spawn.resolve(arguments[0], path: "/usr/sbin:/usr/bin:/sbin:/bin") ?? arguments[0]
    let status = try ChildProcess.run(path, arguments: arguments, timeoutSeconds: 30)
    guard status == .exited(0) else { throw DemoError("`\(arguments.joined(separator: " "))` \(status)") }
}

func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
    let fd = try FileDescriptor.openPath(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
    defer { fd.closeQuietly() }
    _ = try fd.writeAll(text.utf8)
}

func listDirectory(_ path: String) throws -> [String] {
    guard let directory = opendir(path) else { throw DemoError("cannot list \(path)") }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

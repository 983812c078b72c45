import Glibc
import SystemPackage
import Testing

@testable import DPUSystem

@Suite struct Spawning {
    /// Runs `script` under /bin/sh with `fds` and returns its stdout and exit status.
    func run(
        _ script: String, fds extra: [Int32: FileDescriptor] = [:], cwd: String? = nil, umask: mode_t? = nil,
        environment: [String] = ["PATH=/usr/bin:/bin"], shell: String = "/bin/sh"
    ) throws -> (String, DPUSystem.ExitStatus) {
        let (outRead, outWrite) = try FileDescriptor.makePipe()
        let devNull = try FileDescriptor.openPath("/dev/null", flags: O_RDWR)
        var map: [Int32: FileDescriptor] = [0: devNull, 1: outWrite, 2: devNull]
        map.merge(extra) { $1 }
        let pid = try Spawn.start(SpawnRequest(
            path: shell, arguments: ["sh", "-c", script], environment: environment,
            workingDirectory: cwd, umask: umask, fileDescriptors: map, newSession: true))
        outWrite.closeQuietly()
        devNull.closeQuietly()
        let handle = try ProcessHandle(pid: pid)
        defer { handle.close() }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while let count = try chunk.withUnsafeMutableBytes({ try outRead.readSome(into: $0) }), count > 0 {
            output += chunk[..<count]
        }
        outRead.closeQuietly()
        let status = try #require(try handle.wait())
        return (String(decoding: output, as: UTF8.self), status)
    }

    @Test func theChildSeesExactlyTheMappedDescriptors() throws {
        let (r, w) = try FileDescriptor.makePipe()
        defer { r.closeQuietly(); w.closeQuietly() }
        let (output, status) = try run("ls /proc/self/fd | sort -n | tr '\\n' ' '", fds: [7: w])
        #expect(status == DPUSystem.ExitStatus.exited(0))
        // 0, 1, 2, 7 and the fd ls uses to read /proc/self/fd (3); nothing of ours leaked.
        #expect(output == "0 1 2 3 7 ")
    }

    @Test func aMapThatSwapsDescriptorsIsResolved() throws {
        // Our fd 1000 must become the child's 1001 and our 1001 the child's 1000: a naive dup2 in order
        // would clobber one of them. (Numbers far above what the other tests running beside this one
        // open, so that the dup2 below takes nobody's descriptor.)
        let (readA, writeA) = try FileDescriptor.makePipe()
        let (readB, writeB) = try FileDescriptor.makePipe()
        defer { readA.closeQuietly(); readB.closeQuietly() }
        #expect(dup2(writeA.rawValue, 1000) == 1000 && dup2(writeB.rawValue, 1001) == 1001)
        writeA.closeQuietly()
        writeB.closeQuietly()
        // bash, because dash only knows single-digit descriptors in redirections.
        let (_, status) = try run(
            "echo via-1000 >&1000; echo via-1001 >&1001",
            fds: [1000: FileDescriptor(rawValue: 1001), 1001: FileDescriptor(rawValue: 1000)], shell: "/bin/bash")
        close(1000)
        close(1001)
        #expect(status == DPUSystem.ExitStatus.exited(0))
        func drain(_ fd: FileDescriptor) throws -> String {
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = try buffer.withUnsafeMutableBytes { try fd.readSome(into: $0) } ?? 0
            return String(decoding: buffer[..<count], as: UTF8.self)
        }
        #expect(try drain(readB) == "via-1000\n")  // child 1000 = our 1001 = pipe B
        #expect(try drain(readA) == "via-1001\n")
    }

    @Test func workingDirectoryUmaskAndSessionApply() throws {
        let (output, _) = try run("pwd; umask; ps -o sid= -p $$ | tr -d ' '; echo $$", cwd: "/tmp", umask: 0o027)
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[0] == "/tmp")
        #expect(lines[1] == "0027")
        #expect(lines[2] == lines[3], "the child leads its own session")
    }

    @Test func exitStatusAndDeathBySignalAreReported() throws {
        #expect(try run("exit 3").1 == DPUSystem.ExitStatus.exited(3))
        #expect(try run("kill -TERM $$").1 == DPUSystem.ExitStatus.signaled(SIGTERM, coreDumped: false))
        #expect(DPUSystem.ExitStatus.signaled(SIGKILL, coreDumped: false).shellStatus == 137)
    }

    @Test func aMissingProgramIsAnErrorNotAnExitStatus() {
        #expect {
            try Spawn.start(SpawnRequest(path: "/nonexistent/program", arguments: ["x"], environment: []))
        } throws: { error in
            let system = error as? SystemError
            return system?.errno == .noSuchFileOrDirectory && system?.operation == "execve"
        }
        #expect {
            try Spawn.start(SpawnRequest(path: "/bin/true", arguments: ["true"], environment: [], workingDirectory: "/nonexistent"))
        } throws: { ($0 as? SystemError)?.operation == "chdir" }
    }

    @Test func pathSearchFindsExecutablesOnly() {
        #expect(Spawn.resolve("sh", path: "/nonexistent:/bin") == "/bin/sh")
        #expect(Spawn.resolve("passwd", path: "/etc") == nil)
        #expect(Spawn.resolve("./relative", path: "/bin") == "./relative")
    }

    @Test func signalsThroughThePidfdReachTheProcess() throws {
        let pid = try Spawn.start(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"], environment: []))
        let handle = try ProcessHandle(pid: pid)
        defer { handle.close() }
        #expect(try handle.wait(nonBlocking: true) == nil)
        try handle.signal(SIGUSR1)
        #expect(try handle.wait() == DPUSystem.ExitStatus.signaled(SIGUSR1, coreDumped: false))
        // Signalling a reaped process is not an error: nobody is left.
        try handle.signal(SIGTERM)
    }

    @Test func isRunningFollowsTheProcess() throws {
        let pid = try Spawn.start(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"], environment: []))
        let handle = try ProcessHandle(pid: pid)
        defer { handle.close() }
        #expect(handle.isRunning)
        try handle.signal(SIGKILL)
        _ = try handle.wait()
        #expect(!handle.isRunning)
    }

    @Test func forkIsRefusedWithMoreThanOneThread() throws {
        // The test runner has threads of its own: a copy of this process could inherit a held lock.
        #expect(try #require(Fork.threadCount()) > 1)
        #expect(throws: SystemError.self) { _ = try Fork.singleThreaded() }
    }
}

@Suite struct Parsing {
    @Test func mountinfoLinesAreParsedAndUnescaped() {
        let text = """
            36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            22 1 0:21 / /proc rw,nosuid - proc proc rw
            garbage line
            """
        let entries = MountInfo.parse(text)
        #expect(entries.count == 2)
        #expect(entries[0].mountPoint == "/mnt/with space" && entries[0].root == "/mnt1")
        #expect(entries[0].optionalFields == ["master:1"] && entries[0].fileSystemType == "ext3")
        #expect(entries[1].source == "proc" && entries[1].parentID == 1)
    }

    @Test func thisProcessMountTableHasARoot() throws {
        #expect(try MountInfo.read().contains { $0.mountPoint == "/" })
    }

    @Test func signalNamesRoundTrip() {
        #expect(Signals.name(of: SIGTERM) == "TERM")
        #expect(Signals.number(named: "SIGWINCH") == SIGWINCH)
        #expect(Signals.number(named: "usr1") == SIGUSR1)
        #expect(Signals.number(named: "9") == 9)
        #expect(Signals.number(named: "NOPE") == nil)
    }
}

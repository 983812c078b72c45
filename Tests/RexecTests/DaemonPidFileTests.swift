import DPUSystem
import Glibc
import SystemPackage
import Testing

@testable import Rexec

/// What the server accepts as a program's daemon (see `DaemonPidFile`): the file's content, and the
/// process it names, checked on real files and processes.
@Suite(.serialized) struct DaemonPidFiles {
    @Test func onlyDecimalPidsParse() {
        #expect(DaemonPidFile.parse(Array("4242\n".utf8)) == 4242)
        #expect(DaemonPidFile.parse(Array("4242".utf8)) == 4242)
        #expect(DaemonPidFile.parse(Array("7 \r\n".utf8)) == 7)
        for bad in ["", "\n", "0", "0\n", "-1", "+5", " 5", "5x", "5\n6", "0x10", "99999999999", "2147483648", "٣"] {
            #expect(DaemonPidFile.parse(Array(bad.utf8)) == nil, "\(bad)")
        }
    }

    func temporaryFile(_ contents: String) -> String {
        var template = Array("/tmp/dpuctl-daemon-pid.XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = contents.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        return path
    }

    func refusal(_ outcome: DaemonPidFile.Outcome) -> String? {
        switch outcome {
        case .follow(let handle):
            handle.close()
            return nil
        case .refused(let why): return why
        }
    }

    @Test func aProcessStartedAfterTheProgramIsFollowed() throws {
        let programStart = try #require(DaemonPidFile.startTime(getpid()))
        let pid = try Spawn.start(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"], environment: []))
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        let path = temporaryFile("\(pid)\n")
        defer { unlink(path) }
        switch DaemonPidFile.follow(path: path, programStart: programStart, taken: { _ in false }) {
        case .follow(let handle):
            #expect(handle.pid == pid)
            #expect(handle.isRunning)
            handle.close()
        case .refused(let why): Issue.record("refused: \(why)")
        }
        // Another session's process is not ours to take.
        #expect(refusal(DaemonPidFile.follow(path: path, programStart: programStart, taken: { $0 == pid }))?.hasSuffix("is not the program's daemon") == true)
        // Nor one that was there before the program started.
        #expect(refusal(DaemonPidFile.follow(path: path, programStart: UInt64.max, taken: { _ in false }))?.hasSuffix("was not started by the program") == true)
    }

    @Test func whatIsNotAChildsPidIsRefused() throws {
        for (contents, ending) in [("1\n", "is not the program's daemon"), ("\(getpid())", "is not the program's daemon"), ("12x", "does not hold a pid"),
                                   (String(repeating: "1", count: 40), "does not hold a pid"), ("2147483647", "which is not running (No such process)")] {
            let path = temporaryFile(contents)
            defer { unlink(path) }
            let why = refusal(DaemonPidFile.follow(path: path, programStart: 0, taken: { _ in false }))
            #expect(why?.hasSuffix(ending) == true, "\(contents): \(why ?? "followed")")
            if ending == "does not hold a pid" { #expect(why?.contains(contents) == false, "a file's content is not echoed") }
        }
        #expect(refusal(DaemonPidFile.follow(path: "/nonexistent/q.pid", programStart: 0, taken: { _ in false }))
            == "the server cannot read the daemon's pid file /nonexistent/q.pid (No such file or directory)")
    }

    @Test func aFIFOOrADeviceIsNotReadAsAPidFile() throws {
        let fifo = temporaryFile("")
        unlink(fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        // A FIFO without a writer would block a plain open and read forever.
        #expect(refusal(DaemonPidFile.follow(path: fifo, programStart: 0, taken: { _ in false }))?.hasSuffix("does not hold a pid") == true)
        #expect(refusal(DaemonPidFile.follow(path: "/dev/zero", programStart: 0, taken: { _ in false }))?.hasSuffix("does not hold a pid") == true)
    }
}

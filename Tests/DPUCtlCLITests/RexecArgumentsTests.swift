import ArgumentParser
import Rexec
import Testing

@testable import DPUCtlCLI

/// The rexec client parses its options by hand (start-up time); argument-parser answers everything else.
/// The two must agree on what they both accept.
@Suite struct RexecHandParser {
    func bytes(_ words: [String]) -> [[UInt8]] { words.map { Array($0.utf8) } }

    @Test func argumentsAfterTheProgramBelongToIt() throws {
        let options = try #require(RexecArguments.parse(bytes(["/bin/ls", "-la", "--tty"])))
        #expect(options.command == bytes(["/bin/ls", "-la", "--tty"]))
        #expect(options.tty == nil)
    }

    @Test func everyOptionIsUnderstood() throws {
        let options = try #require(RexecArguments.parse(bytes([
            "-t", "--connect", "tcp://198.51.100.1:7777", "--key=/k", "--config", "/c", "-e", "A=1", "--env=B=2", "-u", "C",
            "--unset=D", "--clear-env", "--exclude-fd", "5,7", "--exclude-fd=9", "--cwd", "/w", "--daemon-pidfile", "/run/q.pid", "--",
            "-program", "x",
        ])))
        #expect(options.tty == true)
        #expect(options.connect == "tcp://198.51.100.1:7777")
        #expect(options.keyPath == "/k" && options.configPath == "/c")
        #expect(options.environmentEdits == [.set(Array("A=1".utf8)), .set(Array("B=2".utf8)), .unset(Array("C".utf8)), .unset(Array("D".utf8))])
        #expect(options.clearEnvironment)
        #expect(options.excludedDescriptors == [5, 7, 9])
        #expect(options.workingDirectory == Array("/w".utf8))
        #expect(options.daemonPidFile == Array("/run/q.pid".utf8))
        #expect(options.command == bytes(["-program", "x"]))
        #expect(RexecArguments.parse(bytes(["--exclude-fd", "all", "-T", "p"]))?.excludeAllDescriptors == true)
    }

    @Test func argvBytesNeedNotBeUTF8() throws {
        let options = try #require(RexecArguments.parse([Array("/bin/echo".utf8), [0xff, 0xfe, 0x41]]))
        #expect(options.command[1] == [0xff, 0xfe, 0x41])
    }

    @Test func helpAndMistakesGoToArgumentParser() {
        for words in [
            [], ["--help"], ["-h"], ["--bogus", "/bin/ls"], ["--connect"], ["-t", "-T", "/bin/ls"], ["-e", "NOEQUALS", "x"],
            ["-e", "=x", "y"], ["--exclude-fd", "2", "x"], ["--daemon-pidfile", "", "x"], ["--daemon-pidfile"], ["--exclude-fd", "a", "x"], ["-u", "", "x"], ["--tty"],
            ["--generate-completion-script", "bash"], ["--experimental-dump-help"],
        ] {
            #expect(RexecArguments.parse(bytes(words)) == nil, "\(words)")
        }
    }

    @Test func argumentParserAgreesOnWhatBothAccept() throws {
        for words in [
            ["/bin/true"], ["-t", "/bin/sh"], ["-T", "--", "/bin/sh", "-c", "x"], ["--connect", "unix:///x", "/bin/true"],
            ["--key", "/k", "--config", "/c", "/bin/true"], ["-e", "A=1", "-u", "B", "--clear-env", "/bin/env"],
            ["--exclude-fd", "5,7", "--exclude-fd", "9", "/bin/true"], ["--exclude-fd", "all", "/bin/true"], ["--cwd", "/tmp", "/bin/pwd"],
            ["--daemon-pidfile", "q.pid", "/usr/bin/qemu-kvm", "-daemonize", "-pidfile", "q.pid"], ["--daemon-pidfile=/q.pid", "/bin/true"],
        ] {
            let fast = try #require(RexecArguments.parse(bytes(words)), "\(words)")
            let slow = try RexecCommand.parse(words).options()
            #expect(fast == slow, "\(words)")
        }
    }
}

import DPUSystem
import DPUWire
import Glibc
import SystemPackage
import Testing

@testable import Rexec

@Suite struct WhitelistFormat {
    @Test func oneProgramPerLineMatchedExactly() {
        let list = Whitelist.parse(Array("/usr/bin/qemu-kvm\nkill\n  taskset  \n\n# a comment\n/usr/bin/kill\r\n".utf8), path: "w")
        #expect(list.allows(Array("/usr/bin/qemu-kvm".utf8)))
        #expect(list.allows(Array("kill".utf8)))
        #expect(list.allows(Array("taskset".utf8)))
        #expect(list.allows(Array("/usr/bin/kill".utf8)))
        #expect(!list.allows(Array("qemu-kvm".utf8)))  // exact: the path and the bare name differ
        #expect(!list.allows(Array("/usr/bin/qemu-kvm ".utf8)))
        #expect(!list.allows(Array("# a comment".utf8)))
        #expect(!list.allows([]))
        #expect(list.programs.count == 4)
    }

    @Test func theOriginalsShippedListsParse() {
        // usecases/libvirtd-offload/config/whitelist (reference/rexec.md §5).
        let text = "kill\ntaskset\nqemu-kvm\nrexec_shim\n/usr/bin/taskset\n/usr/bin/kill\n/usr/bin/qemu-kvm\n/usr/bin/rexec_shim"
        #expect(Whitelist.parse(Array(text.utf8), path: "w").programs.count == 8)
    }
}

@Suite struct WhitelistFile {
    func write(_ text: String, mode: mode_t) throws -> String {
        let path = "/tmp/dpuctl-whitelist-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = try FileDescriptor.openPath(path, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        try fd.writeFully(text.utf8)
        fd.closeQuietly()
        chmod(path, mode)
        return path
    }

    @Test func aMissingFileAllowsNothing() throws {
        let list = try Whitelist.load("/nonexistent/rexec/whitelist")
        #expect(!list.exists)
        #expect(list.programs.isEmpty)
        #expect(list.summary.contains("does not exist: no program is allowed"))
    }

    @Test func aFileOthersCanWriteIsRefused() throws {
        let path = try write("/bin/true\n", mode: 0o666)
        defer { unlink(path) }
        #expect { try Whitelist.load(path) } throws: { "\($0)".contains("has mode 666") && "\($0)".contains("chmod go-w") }
    }

    @Test func aReadableRootOwnedFileLoads() throws {
        let path = try write("/bin/true\n/bin/false\n", mode: 0o644)
        defer { unlink(path) }
        let list = try Whitelist.load(path)
        #expect(list.exists && list.programs.count == 2)
    }

    @Test func aDirectoryIsRefused() {
        #expect(throws: WhitelistError.self) { try Whitelist.load("/tmp") }
    }
}

@Suite struct ProgramResolution {
    let list = Whitelist.parse(Array("sh\n/bin/echo\n/nonexistent\nno-such-program-anywhere\n".utf8), path: "/etc/rexec/whitelist")

    @Test func aPathIsUsedAsGiven() throws {
        #expect(try Launcher.resolve(Array("/bin/echo".utf8), whitelist: list) == Array("/bin/echo".utf8))
    }

    @Test func aBareNameIsFoundInTheServersPath() throws {
        let path = try Launcher.resolve(Array("sh".utf8), whitelist: list)
        #expect(String(decoding: path, as: UTF8.self).hasSuffix("/sh"))
    }

    @Test func refusalsSayWhy() {
        #expect { try Launcher.resolve(Array("/bin/ls".utf8), whitelist: list) } throws: {
            ($0 as? RexecFailure)?.code == .notAllowed && ($0 as? RexecFailure)?.message.contains("/etc/rexec/whitelist") == true
        }
        #expect { try Launcher.resolve(Array("no-such-program-anywhere".utf8), whitelist: list) } throws: {
            ($0 as? RexecFailure)?.code == .notFound
        }
        let none = Whitelist(path: "/etc/rexec/whitelist", programs: [], exists: false)
        #expect { try Launcher.resolve(Array("/bin/echo".utf8), whitelist: none) } throws: {
            ($0 as? RexecFailure)?.message.contains("no whitelist") == true
        }
    }

    @Test func startFailuresMapToAShellsStatus() {
        let request = Launcher.Request(
            program: [], arguments: [], environment: [], workingDirectory: Array("/x".utf8), umask: nil, descriptors: [:],
            controllingTerminal: nil, gated: false)
        #expect(Launcher.failure(SystemError(.noSuchFileOrDirectory, "execve"), request).code == .notFound)
        #expect(Launcher.failure(SystemError(.permissionDenied, "execve"), request).code == .notExecutable)
        #expect(Launcher.failure(SystemError(Errno(rawValue: ENOEXEC), "execve"), request).code == .notExecutable)
        let chdir = Launcher.failure(SystemError(.noSuchFileOrDirectory, "chdir"), request)
        #expect(chdir.code == .badRequest && chdir.message.contains("/x") && chdir.message.contains("--cwd"))
    }
}

import DPUConfig
import DPUSystem
import Glibc
import SystemPackage
import Testing

@testable import Rexec

@Suite(.serialized) struct ServerSettingsFromConfiguration {
    func config(_ text: String) throws -> String {
        let path = "/tmp/dpuctl-settings-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).conf"
        let fd = try FileDescriptor.openPath(path, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        try fd.writeFully(text.utf8)
        fd.closeQuietly()
        return path
    }

    @Test func theSectionFillsWhatTheCommandLineLeftOpen() throws {
        unsetenv("CMD_NET_ADDR")
        let path = try config("""
            [rexec-server]
            listen = tcp://198.51.100.1:7777
            listen = unix:///run/rexec/rexec_uds.sock
            whitelist = /etc/rexec/other
            allow-uid = 0
            allow-uid = 107
            grace = 3
            stop-policy = terminate
            max-sessions = 10
            max-pending = 5
            runtime-dir = /run/x
            keepalive = 9
            """)
        defer { unlink(path) }
        var settings = RexecServerSettings()
        try settings.complete(configPath: path, whitelistGiven: false)
        #expect(settings.listen == [.tcp(host: "198.51.100.1", port: 7777), .unix(path: "/run/rexec/rexec_uds.sock")])
        #expect(settings.whitelistPath == "/etc/rexec/other")
        #expect(settings.allowedUIDs == [0, 107])
        #expect(settings.grace == .seconds(3) && settings.stopPolicy == .terminate)
        #expect(settings.maximumSessions == 10 && settings.maximumPending == 5 && settings.runtimeDirectory == "/run/x")
        #expect(settings.keepalive == 9)
    }

    @Test func theCommandLineAndCMD_NET_ADDRWin() throws {
        let path = try config("[rexec-server]\nlisten = tcp://198.51.100.1:7777\nwhitelist = /from/config\n")
        defer { unlink(path) }
        var given = RexecServerSettings()
        given.listen = [.unix(path: "/given")]
        given.whitelistPath = "/given/whitelist"
        try given.complete(configPath: path, whitelistGiven: true)
        #expect(given.listen == [.unix(path: "/given")] && given.whitelistPath == "/given/whitelist")
        setenv("CMD_NET_ADDR", "tcp://127.0.0.1:7777", 1)
        defer { unsetenv("CMD_NET_ADDR") }
        var fromEnvironment = RexecServerSettings()
        try fromEnvironment.complete(configPath: path, whitelistGiven: false)
        #expect(fromEnvironment.listen == [.tcp(host: "127.0.0.1", port: 7777)])
    }

    @Test func withNothingGivenTheOriginalsSocket() throws {
        unsetenv("CMD_NET_ADDR")
        var settings = RexecServerSettings()
        try settings.complete(configPath: "/nonexistent/dpuctl.conf", whitelistGiven: false)
        #expect(settings.listen == [.unix(path: "/var/run/rexec/rexec_uds.sock")])
        #expect(settings.whitelistPath == "/etc/rexec/whitelist" && settings.allowedUIDs == [0])
    }

    @Test func mistakesNameTheFileAndLine() throws {
        for (text, message) in [
            ("[rexec-server]\nlisen = x\n", ":2: unknown key `lisen`"),
            ("[rexec-server]\nstop-policy = kill\n", ":2: expected leave or terminate"),
            ("[rexec-server]\nallow-uid = root\n", ":2: expected a numeric uid"),
            ("[rexec-server]\n\nlisten = tcp://nowhere\n", ":3: invalid address"),
        ] {
            let path = try config(text)
            defer { unlink(path) }
            var settings = RexecServerSettings()
            #expect(throws: ConfigError.self) { try settings.complete(configPath: path, whitelistGiven: false) }
            do { try settings.complete(configPath: path, whitelistGiven: false) } catch {
                #expect(error.description.contains(path + message), "\(error)")
            }
        }
    }
}

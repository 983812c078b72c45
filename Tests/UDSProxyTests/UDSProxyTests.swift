import DPUConfig
import DPUSystem
import Glibc
import Testing

@testable import UDSProxy

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A scratch directory, removed afterwards.
private func withDirectory(_ body: (String) throws -> Void) throws {
    var template = Array("/tmp/udsproxy-test.XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    defer { _ = system("rm -rf '\(path)'") }
    try body(path)
}

@Suite struct Whitelists {
    @Test func anEntryAllowsItselfAndWhatIsBeneathOnComponentBoundaries() {
        let list = UDSProxyWhitelist(paths: ["/var/lib/libvirt", "/srv/x/"])
        #expect(list.allowsResolved(bytes("/var/lib/libvirt")))
        #expect(list.allowsResolved(bytes("/var/lib/libvirt/qemu/monitor.sock")))
        #expect(!list.allowsResolved(bytes("/var/lib/libvirtx/monitor.sock")))
        #expect(!list.allowsResolved(bytes("/var/lib")))
        #expect(list.allowsResolved(bytes("/srv/x/y.sock")))
    }

    @Test func requestsAreNormalizedBeforeTheyAreCompared() {
        let list = UDSProxyWhitelist(paths: ["/var/lib/libvirt"])
        #expect(list.allowsRequested(bytes("/var/lib/libvirt/./qemu//m.sock")))
        #expect(!list.allowsRequested(bytes("/var/lib/libvirt/../../../etc/shadow")))
    }

    @Test func entriesAreResolvedAsFarAsTheyExist() throws {
        try withDirectory { directory in
            mkdir(directory + "/real", 0o755)
            symlink(directory + "/real", directory + "/link")
            let list = UDSProxyWhitelist(paths: [directory + "/link/sub"])
            #expect(list.entries.first?.resolved == bytes(directory + "/real/sub"))
            // The peer's path is checked resolved: the entry as written would not match it.
            #expect(list.allowsResolved(bytes(directory + "/real/sub/a.sock")))
            // A local request may name it either way.
            #expect(list.allowsRequested(bytes(directory + "/link/sub/a.sock")))
            #expect(list.allowsRequested(bytes(directory + "/real/sub/a.sock")))
            #expect(!list.allowsRequested(bytes(directory + "/real/other.sock")))
        }
    }

    @Test func theOriginalFilesUdsconnectSectionIsRead() throws {
        let file = try ConfigFile(
            text: "[Open]\nPath=/var/lib\n[Udsconnect]\nPath=/var/lib/libvirt;/run/rexec ; \n", path: "whitelist")
        #expect(try UDSProxyWhitelist.originalEntries(file) == ["/var/lib/libvirt", "/run/rexec"])
        let relative = try ConfigFile(text: "[Udsconnect]\nPath=/ok;relative\n", path: "whitelist")
        #expect { try UDSProxyWhitelist.originalEntries(relative) } throws: {
            "\($0)" == "whitelist:2: `relative` in [Udsconnect] is not an absolute path"
        }
    }
}

@Suite struct Settings {
    func load(_ config: String, whitelist: String? = nil, _ options: (inout UDSProxyOptions) -> Void = { _ in }) throws -> UDSProxySettings {
        var result: UDSProxySettings?
        try withDirectory { directory in
            let configPath = directory + "/dpuctl.conf"
            try write(config, to: configPath)
            var whitelistPath = directory + "/none"
            if let whitelist {
                whitelistPath = directory + "/whitelist"
                try write(whitelist, to: whitelistPath)
            }
            var values = UDSProxyOptions(
                keyPath: directory + "/no-key", configPath: configPath, whitelistPath: whitelistPath, insecure: true)
            options(&values)
            if values.whitelistPath == directory + "/none" { try write("", to: whitelistPath) }
            result = try UDSProxySettings.load(values)
        }
        return result!
    }

    func write(_ text: String, to path: String) throws {
        let file = fopen(path, "w")!
        fputs(text, file)
        fclose(file)
    }

    @Test func theConfigurationFileGivesEverything() throws {
        let settings = try load(
            """
            [udsproxy]
            listen = tcp://198.51.100.1:7001
            listen = vsock://any:7002
            peer = tcp://198.51.100.2:7001
            control = /run/test/control.sock
            allow = /var/lib/libvirt
            allow = /run/rexec
            allow-users = root 0, 65534
            legacy-clients = no
            """)
        #expect(settings.listen == [.tcp(host: "198.51.100.1", port: 7001), .vsock(cid: UInt32.max, port: 7002)])
        #expect(settings.peer == .tcp(host: "198.51.100.2", port: 7001))
        #expect(settings.control == "/run/test/control.sock")
        #expect(settings.whitelist.entries.map(\.literal) == [bytes("/var/lib/libvirt"), bytes("/run/rexec")])
        #expect(settings.allowedUsers == [0, 65534])
        #expect(!settings.legacyClients)
    }

    @Test func theCommandLineWinsAndTheDefaultsFillIn() throws {
        let settings = try load("[udsproxy]\npeer = tcp://198.51.100.2:7001\n", whitelist: "[Udsconnect]\nPath=/srv/a\n") {
            $0.peer = .tcp(host: "127.0.0.1", port: 9)
        }
        #expect(settings.peer == .tcp(host: "127.0.0.1", port: 9))
        #expect(settings.control == UDSProxySettings.defaultControlPath)
        #expect(settings.whitelist.entries.map(\.literal) == [bytes("/srv/a")])
        #expect(settings.allowedUsers == [0])
        #expect(settings.legacyClients)
    }

    @Test func withoutAnyEntryTheWhitelistIsTheGuidesSockets() throws {
        let settings = try load("[udsproxy]\npeer = tcp://127.0.0.1:7001\n")
        #expect(settings.whitelist.entries.map(\.literal) == UDSProxyWhitelist.defaultPaths.map(bytes))
        #expect(settings.whitelistSource == "built-in default")
    }

    @Test(arguments: [
        ("[udsproxy]\npeer = tcp://127.0.0.1:1\nport = 3\n", ":3: unknown key `port` in [udsproxy]"),
        ("[udsproxy]\npeer = tcp://127.0.0.1:1\npeer = tcp://127.0.0.1:2\n", ":3: `peer` is given twice in [udsproxy]"),
        ("[udsproxy]\npeer = tcp://127.0.0.1:1\nallow = var/lib\n", ":3: expected an absolute path, got `var/lib`"),
        ("[udsproxy]\npeer = tcp://127.0.0.1:1\nallow-users = nosuchuser-x\n", ":3: no user named `nosuchuser-x`"),
        ("[udsproxy]\npeer = tcp://127.0.0.1:1\nlegacy-clients = maybe\n", ":3: expected yes or no, got `maybe`"),
        ("[udsproxy]\npeer = http://x\n", ":2: invalid address `http://x`"),
        ("[udsproxy]\nallow = /x\n", "no peer to talk to: give --peer URL and/or --listen URL"),
    ])
    func mistakesAreNamedWithFileAndLine(_ config: String, _ message: String) {
        #expect {
            try load(config)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func aRemotePeerWithoutAKeyNeedsInsecure() {
        #expect {
            try load("[udsproxy]\npeer = tcp://198.51.100.2:7001\n") { $0.insecure = false }
        } throws: { "\($0)".contains("is on another machine: create a key with `dpuctl key generate`") }
        #expect(throws: Never.self) { try load("[udsproxy]\npeer = tcp://127.0.0.1:7001\n") { $0.insecure = false } }
    }
}

@Suite struct Paths {
    @Test(arguments: [
        ("/a/b/../c", "/a/c"), ("/../a", "/a"), ("a/./b", "/base/a/b"), ("//a//b/", "/a/b"), ("/", "/"), ("..", "/"),
    ])
    func lexicalNormalization(_ input: String, _ expected: String) {
        #expect(lexicallyNormalized(bytes(input), base: bytes("/base")) == bytes(expected))
    }
}

/// The address a peer connects from: what the per-source handshake limit counts by.
@Suite struct PeerSources {
    @Test func theSourceIsTheAddressWithoutItsPort() {
        #expect(Proxy.source(of: "198.51.100.2:40000") == "198.51.100.2")
        #expect(Proxy.source(of: "[2001:db8::1]:40000") == "[2001:db8::1]")
        #expect(Proxy.source(of: "vsock://3:1024") == "vsock://3")
        #expect(Proxy.source(of: "unknown") == "unknown")
    }
}

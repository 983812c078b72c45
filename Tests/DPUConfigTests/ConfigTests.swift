import DPUSystem
import Glibc
import Testing

@testable import DPUConfig

@Suite struct ConfigFormat {
    @Test func sectionsKeysAndRepeatsAreRead() throws {
        let file = try ConfigFile(text: """
            # dpuctl
            [rexec]
            connect = tcp://198.51.100.1:7777
              listen=unix:///run/a.sock   ; not a comment: values are taken as written
            listen = tcp://127.0.0.1:7777

            [mount /another_rootfs/proc]
            type = qtfs
            """, path: "/etc/dpuctl/dpuctl.conf")
        #expect(file.sections.map(\.name) == ["rexec", "mount"])
        #expect(file.sections[1].argument == "/another_rootfs/proc")
        let rexec = file.sections[0]
        #expect(try rexec.endpoint("connect") == .tcp(host: "198.51.100.1", port: 7777))
        #expect(rexec.values("listen").map(\.line) == [4, 5])
    }

    @Test(arguments: [
        ("key = value", 1, "outside any [section]"),
        ("[rexec\nkey = 1", 1, "expected `]`"),
        ("[rexec]\njust words", 2, "expected `key = value`"),
        ("[]", 1, "section name"),
        ("[rexec]\n= value", 2, "key name"),
    ])
    func errorsNameTheFileAndLine(_ text: String, _ line: Int, _ fragment: String) {
        #expect { try ConfigFile(text: text, path: "/x.conf") } throws: { error in
            let config = error as? ConfigError
            return config?.line == line && config!.description.hasPrefix("/x.conf:\(line): ") && config!.message.contains(fragment)
        }
    }

    @Test func typedValuesAreCheckedWithTheirLine() throws {
        let section = try ConfigFile(text: "[s]\nport = 99999\nflag = maybe\nwhere = relative\nurl = tcp://h\nonce = 1\nonce = 2", path: "/c").sections[0]
        #expect { try section.integer("port", in: 1...65535) } throws: { ($0 as? ConfigError)?.line == 2 }
        #expect { try section.bool("flag") } throws: { ($0 as? ConfigError)?.line == 3 }
        #expect { try section.path("where") } throws: { ($0 as? ConfigError)?.line == 4 }
        #expect { try section.endpoint("url") } throws: { ($0 as? ConfigError)?.description.contains("missing `:PORT`") == true }
        #expect { try section.value("once") } throws: { ($0 as? ConfigError)?.line == 7 }
        #expect { try section.rejectUnknownKeys(["port"]) } throws: { ($0 as? ConfigError)?.line == 3 }
    }

    @Test func aMissingOptionalFileMeansDefaults() throws {
        #expect(try ConfigFile.load("/nonexistent/dpuctl.conf", optional: true) == nil)
        #expect(throws: ConfigError.self) { try ConfigFile.load("/nonexistent/dpuctl.conf", optional: false) }
    }
}

/// Each test gets a scratch directory of its own, removed after it.
@Suite(.serialized) final class KeyFiles {
    let directory: String = {
        var template = Array("/tmp/dpuconfig-test-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }()

    deinit {
        if let dir = opendir(directory) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(directory + "/" + name) }
            }
            closedir(dir)
        }
        rmdir(directory)
    }

    @Test func aGeneratedKeyLoadsAndIsRootOnly() throws {
        let path = directory + "/key"
        try KeyFile.generate(path, force: false)
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        _ = try KeyFile.load(path)
        #expect { try KeyFile.generate(path, force: false) } throws: { ($0 as? KeyFileError)?.reason.contains("already exists") == true }
        try KeyFile.generate(path, force: true)
    }

    @Test func aKeyOthersCanReadIsRefusedWithTheFix() throws {
        let path = directory + "/open-key"
        try KeyFile.generate(path, force: false)
        chmod(path, 0o644)
        #expect { try KeyFile.load(path) } throws: { error in
            let reason = (error as? KeyFileError)?.reason ?? ""
            return reason.contains("mode 644") && reason.contains("chmod 600")
        }
    }

    @Test func aSymlinkedKeyIsRefused() throws {
        let target = directory + "/real-key"
        let link = directory + "/link-key"
        try KeyFile.generate(target, force: false)
        symlink(target, link)
        #expect { try KeyFile.load(link) } throws: { ($0 as? KeyFileError)?.reason.contains("symbolic link") == true }
    }

    @Test func aMissingKeySaysHowToMakeOne() {
        #expect { try KeyFile.load(directory + "/absent") } throws: {
            ($0 as? KeyFileError)?.description.contains("dpuctl key generate") == true
        }
    }

    @Test func networkListenersNeedAKeyUnlessInsecureOrLoopback() throws {
        let absent = directory + "/none"
        let remote = Endpoint.tcp(host: "198.51.100.1", port: 7777)
        let loopback = Endpoint.tcp(host: "127.0.0.1", port: 7777)
        #expect(throws: KeyFileError.self) { try PeerAuthentication.listenerKey(for: [remote], keyPath: absent, insecure: false) }
        #expect(try PeerAuthentication.listenerKey(for: [remote], keyPath: absent, insecure: true) == nil)
        #expect(try PeerAuthentication.listenerKey(for: [loopback], keyPath: absent, insecure: false) == nil)
        #expect(try PeerAuthentication.listenerKey(for: [.unix(path: "/x")], keyPath: absent, insecure: false) == nil)
        let present = directory + "/present"
        try KeyFile.generate(present, force: false)
        #expect(try PeerAuthentication.listenerKey(for: [loopback], keyPath: present, insecure: false) != nil)
        #expect(try PeerAuthentication.clientKey(for: .unix(path: "/x"), keyPath: present) == nil)
        #expect(try PeerAuthentication.clientKey(for: remote, keyPath: present) != nil)
        // A client without a key file presents none (the server says so if it wants one).
        #expect(try PeerAuthentication.clientKey(for: remote, keyPath: absent) == nil)
        // One that is there but wrong is an error, never silently no key.
        symlink(present, present + "-link")
        #expect { try PeerAuthentication.clientKey(for: remote, keyPath: present + "-link") } throws: {
            ($0 as? KeyFileError)?.reason.contains("symbolic link") == true
        }
    }

    @Test func aFIFOAtTheKeyPathIsRefusedWithoutWaiting() {
        let path = directory + "/fifo-key"
        #expect(mkfifo(path, 0o600) == 0)
        #expect { try PeerAuthentication.clientKey(for: .tcp(host: "127.0.0.1", port: 7777), keyPath: path) } throws: {
            ($0 as? KeyFileError)?.reason.contains("not a regular file") == true
        }
    }
}

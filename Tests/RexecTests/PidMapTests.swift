import DPUSystem
import Glibc
import SystemPackage
import Testing

@testable import Rexec

/// The pid map as a reader on the client's machine sees it: a live client's file gives its remote pid;
/// a file nobody locks (its client died), an empty one (a client starting) or a damaged one gives none.
@Suite struct PidMapReading {
    let directory: String

    init() {
        var template = Array("/tmp/dpuctl-pidmap-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    func write(_ name: String, _ text: String) throws -> FileDescriptor {
        let fd = try FileDescriptor.openPath("\(directory)/\(name)", flags: O_CREAT | O_WRONLY | O_TRUNC, mode: 0o600)
        try fd.writeFully(text.utf8)
        return fd
    }

    func cleanUp() {
        if let dir = opendir(directory) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink("\(directory)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(directory)
    }

    @Test func aLiveClientsFileGivesTheRemotePid() throws {
        defer { cleanUp() }
        let file = try #require(try PidFile.create(directory: directory, remotePID: 4242))
        #expect(RexecPidMap.remotePID(of: getpid(), directory: directory) == 4242)
        file.remove()
        #expect(RexecPidMap.remotePID(of: getpid(), directory: directory) == nil)
    }

    @Test func aFileNobodyLocksIsStale() throws {
        defer { cleanUp() }
        let fd = try write("12345", "777")
        #expect(RexecPidMap.remotePID(of: 12345, directory: directory) == nil)
        #expect(try fd.lock(nonBlocking: true))
        #expect(RexecPidMap.remotePID(of: 12345, directory: directory) == 777)
        fd.closeQuietly()
        #expect(RexecPidMap.remotePID(of: 12345, directory: directory) == nil)
    }

    @Test func emptyOrDamagedFilesGiveNothing() throws {
        defer { cleanUp() }
        for (name, text) in [("101", ""), ("102", "12a"), ("103", "-5"), ("104", "0"), ("105", "99999999999"), ("106", " 7")] {
            let fd = try write(name, text)
            defer { fd.closeQuietly() }
            #expect(try fd.lock(nonBlocking: true))
            #expect(RexecPidMap.remotePID(of: pid_t(name)!, directory: directory) == nil, "\(text)")
        }
        let fd = try write("107", "42\n")
        defer { fd.closeQuietly() }
        _ = try fd.lock(nonBlocking: true)
        #expect(RexecPidMap.remotePID(of: 107, directory: directory) == 42)
        #expect(RexecPidMap.remotePID(of: 108, directory: directory) == nil)
        #expect(RexecPidMap.remotePID(of: 107, directory: directory + "/missing") == nil)
    }
}

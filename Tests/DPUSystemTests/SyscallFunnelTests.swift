import Glibc
import SystemPackage
import Testing

@testable import DPUSystem

/// One row per wrapper: the funnel's operation name and a call that exercises it harmlessly.
struct WrapperRow: Sendable, CustomStringConvertible {
    let operation: String
    let call: @Sendable () throws -> Void
    var description: String { operation }
}

let wrapperRows: [WrapperRow] = [
    WrapperRow(operation: "socket") { try FileDescriptor.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue)).closeQuietly() },
    WrapperRow(operation: "socketpair") {
        let (a, b) = try FileDescriptor.socketPair()
        a.closeQuietly(); b.closeQuietly()
    },
    WrapperRow(operation: "pipe2") {
        let (r, w) = try FileDescriptor.makePipe()
        r.closeQuietly(); w.closeQuietly()
    },
    WrapperRow(operation: "open") { try FileDescriptor.openPath("/dev/null", flags: O_RDONLY).closeQuietly() },
    WrapperRow(operation: "getsockopt(SO_PEERCRED)") {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.closeQuietly(); b.closeQuietly() }
        _ = try a.peerCredentials()
    },
    WrapperRow(operation: "fcntl(F_GETFL)") {
        let fd = try FileDescriptor.openPath("/dev/null", flags: O_RDONLY)
        defer { fd.closeQuietly() }
        _ = try fd.statusFlags()
    },
    WrapperRow(operation: "read") {
        let fd = try FileDescriptor.openPath("/dev/zero", flags: O_RDONLY)
        defer { fd.closeQuietly() }
        var byte: UInt8 = 1
        _ = try withUnsafeMutableBytes(of: &byte) { try fd.readSome(into: $0) }
    },
    WrapperRow(operation: "sendmsg") {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.closeQuietly(); b.closeQuietly() }
        _ = try [UInt8(1)].withUnsafeBytes { try a.send($0) }
    },
]

@Suite(.serialized) struct SyscallFunnel {
    @Test(arguments: wrapperRows)
    func anInterruptedCallIsRetried(_ row: WrapperRow) throws {
        let mock = SyscallMock()
        mock.force(.interrupted, on: row.operation)
        try SyscallMock.$current.withValue(mock) { try row.call() }
        #expect(mock.trace.filter { $0 == row.operation }.count >= 2, "EINTR must be retried: \(mock.trace)")
    }

    @Test(arguments: wrapperRows)
    func aFailureCarriesTheErrnoAndTheOperation(_ row: WrapperRow) {
        let mock = SyscallMock()
        mock.force(.permissionDenied, on: row.operation)
        #expect {
            try SyscallMock.$current.withValue(mock) { try row.call() }
        } throws: { error in
            let system = error as? SystemError
            return system?.errno == .permissionDenied && system?.operation == row.operation
        }
    }

    @Test func connectIsNotRetriedOnEINTRButWaitedFor() throws {
        // EINTR on connect(2) leaves the attempt running; a second connect would give EALREADY.
        let path = "/tmp/dpusystem-test-\(getpid()).sock"
        let listener = try Socket.listen(on: .unix(path: path))
        defer { listener.closeQuietly(); unlink(path) }
        let mock = SyscallMock()
        mock.force(.interrupted, on: "connect")
        let fd = try SyscallMock.$current.withValue(mock) { try Socket.connect(to: .unix(path: path)) }
        fd.closeQuietly()
        #expect(mock.trace.filter { $0 == "connect" }.count == 1)
    }

    @Test func theErrorNamesWhatFailedAndOnWhat() {
        #expect { try FileDescriptor.openPath("/nonexistent/dpuctl", flags: O_RDONLY) } throws: { error in
            (error as? SystemError)?.description == "open `/nonexistent/dpuctl`: No such file or directory"
        }
    }
}

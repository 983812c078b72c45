import Glibc
import SystemPackage
import Testing

@testable import DPUSystem

@Suite struct Terminals {
    @Test func ptySlaveNumbersAreRecognized() {
        func device(_ major: UInt64, _ minor: UInt64) -> UInt64 {
            (major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12
        }
        #expect(PseudoTerminal.isTerminalDevice(device(136, 0)))
        #expect(PseudoTerminal.isTerminalDevice(device(143, 1_048_575)))
        #expect(!PseudoTerminal.isTerminalDevice(device(5, 2)))  // ptmx
        #expect(!PseudoTerminal.isTerminalDevice(device(1, 3)))  // null
        #expect(!PseudoTerminal.isTerminalDevice(device(144, 0)))
        #expect(!PseudoTerminal.isTerminalDevice(device(136 + 4096, 0)))
    }

    /// A controller opened in a devpts directory names its terminal side, which opens by that name; the
    /// opening shows in inotify, and the controller reports POLLHUP exactly while nobody has it open.
    @Test func aControllerInADevptsDirectory() throws {
        let devpts = try FileDescriptor.openPath("/dev/pts", flags: O_PATH | O_DIRECTORY)
        defer { devpts.closeQuietly() }
        let (controller, index) = try PseudoTerminal.openController(in: devpts, flags: O_NONBLOCK)
        defer { controller.closeQuietly() }
        let name = Array("\(index)".utf8)
        #expect(PseudoTerminal.isTerminalDevice(UInt64(try devpts.status(of: name).st_rdev)))
        func hungUp() throws -> Bool {
            var set = [pollfd(fd: controller.rawValue, events: 0, revents: 0)]
            _ = try DPUSystem.poll(&set, timeoutMilliseconds: 0)
            return set[0].revents & Int16(POLLHUP) != 0
        }
        try Terminal.openPeer(of: controller, flags: O_RDWR).closeQuietly()
        #expect(try hungUp())
        let inotify = try Inotify()
        defer { inotify.close() }
        let watch = try inotify.addWatch(devpts.procfsPath, mask: UInt32(IN_OPEN))
        let terminal = try devpts.open(at: name, flags: O_RDWR | O_NOCTTY)
        #expect(try !hungUp())
        let events = try inotify.read()
        #expect(events.contains { $0.watch == watch && $0.mask & UInt32(IN_OPEN) != 0 && $0.name == name })
        // Raw through the controller: the terminal side's modes change.
        try Terminal.makeRaw(controller)
        #expect(try Terminal.attributes(terminal).c_lflag & tcflag_t(ICANON | ECHO) == 0)
        terminal.closeQuietly()
        #expect(try hungUp())
    }

    @Test func inotifyRecordsSplitAndStopAtATruncatedOne() {
        func record(_ watch: Int32, _ mask: UInt32, _ name: String, padded: Int) -> [UInt8] {
            var bytes: [UInt8] = []
            for value in [UInt32(bitPattern: watch), mask, 0, UInt32(padded)] { withUnsafeBytes(of: value) { bytes += $0 } }
            return bytes + Array(name.utf8) + [UInt8](repeating: 0, count: padded - name.utf8.count)
        }
        let two = record(1, UInt32(IN_OPEN), "17", padded: 16) + record(2, UInt32(IN_Q_OVERFLOW), "", padded: 0)
        #expect(Inotify.parse(two[...]) == [
            Inotify.Event(watch: 1, mask: UInt32(IN_OPEN), name: Array("17".utf8)),
            Inotify.Event(watch: 2, mask: UInt32(IN_Q_OVERFLOW), name: []),
        ])
        #expect(Inotify.parse(two.dropLast(20)) == [])
        #expect(Inotify.parse(record(3, 1, "x", padded: 8)[...].dropLast(1)) == [])
    }
}

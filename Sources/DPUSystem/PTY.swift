import CDPUSystem
import Glibc
import SystemPackage

/// A terminal's window size (`struct winsize`).
public struct WindowSize: Equatable, Sendable {
    public var rows: UInt16
    public var columns: UInt16
    public var width: UInt16
    public var height: UInt16

    public init(rows: UInt16, columns: UInt16, width: UInt16 = 0, height: UInt16 = 0) {
        self.rows = rows
        self.columns = columns
        self.width = width
        self.height = height
    }
}

/// Terminal modes in a form that travels between machines: the four flag words and the control
/// characters of `struct termios` (speeds are left alone: a pseudo-terminal has none that matter).
public struct TerminalModes: Equatable, Sendable {
    public static let controlCharacterCount = 32  // NCCS on Linux
    public var inputFlags: UInt32
    public var outputFlags: UInt32
    public var controlFlags: UInt32
    public var localFlags: UInt32
    public var controlCharacters: [UInt8]

    public init(inputFlags: UInt32, outputFlags: UInt32, controlFlags: UInt32, localFlags: UInt32, controlCharacters: [UInt8]) {
        self.inputFlags = inputFlags
        self.outputFlags = outputFlags
        self.controlFlags = controlFlags
        self.localFlags = localFlags
        self.controlCharacters = Array(controlCharacters.prefix(Self.controlCharacterCount))
            + [UInt8](repeating: 0, count: max(0, Self.controlCharacterCount - controlCharacters.count))
    }

    init(_ raw: termios) {
        var copy = raw
        let characters = withUnsafeBytes(of: &copy.c_cc) { Array($0.prefix(Self.controlCharacterCount)) }
        self.init(
            inputFlags: raw.c_iflag, outputFlags: raw.c_oflag, controlFlags: raw.c_cflag, localFlags: raw.c_lflag,
            controlCharacters: characters)
    }

    func apply(to raw: inout termios) {
        raw.c_iflag = inputFlags
        raw.c_oflag = outputFlags
        raw.c_cflag = controlFlags
        raw.c_lflag = localFlags
        withUnsafeMutableBytes(of: &raw.c_cc) { target in
            for index in 0..<min(target.count, controlCharacters.count) { target[index] = controlCharacters[index] }
        }
    }
}

/// Terminal operations on an fd (termios(3), tty_ioctl(4)).
public enum Terminal {
    /// `tcgetattr(3)`, kept whole so that it can be restored exactly.
    public static func attributes(_ fd: FileDescriptor) throws(SystemError) -> termios {
        var raw = termios()
        _ = try syscall("tcgetattr", String(fd.rawValue)) { tcgetattr(fd.rawValue, &raw) }
        return raw
    }

    /// `tcsetattr(3)` with TCSADRAIN (output already written is not garbled by the mode change).
    public static func setAttributes(_ fd: FileDescriptor, _ raw: termios) throws(SystemError) {
        var raw = raw
        _ = try syscall("tcsetattr", String(fd.rawValue)) { tcsetattr(fd.rawValue, TCSADRAIN, &raw) }
    }

    /// The modes of `fd`, for sending to the peer.
    public static func modes(_ fd: FileDescriptor) throws(SystemError) -> TerminalModes {
        TerminalModes(try attributes(fd))
    }

    /// Applies modes received from the peer (on a pseudo-terminal we created).
    public static func setModes(_ fd: FileDescriptor, _ modes: TerminalModes) throws(SystemError) {
        var raw = try attributes(fd)
        modes.apply(to: &raw)
        try setAttributes(fd, raw)
    }

    /// Puts the terminal in raw mode (`cfmakeraw(3)`): every byte passes through unchanged, so the
    /// remote terminal does the line editing and signal keys. Returns the previous attributes.
    @discardableResult
    public static func makeRaw(_ fd: FileDescriptor) throws(SystemError) -> termios {
        let old = try attributes(fd)
        var raw = old
        cfmakeraw(&raw)
        try setAttributes(fd, raw)
        return old
    }

    /// `ioctl(TIOCGWINSZ)`.
    public static func windowSize(_ fd: FileDescriptor) throws(SystemError) -> WindowSize {
        var size = winsize()
        _ = try syscall("ioctl(TIOCGWINSZ)", String(fd.rawValue)) { cdpu_ioctl_ptr(fd.rawValue, UInt(TIOCGWINSZ), &size) }
        return WindowSize(rows: size.ws_row, columns: size.ws_col, width: size.ws_xpixel, height: size.ws_ypixel)
    }

    /// `ioctl(TIOCSWINSZ)`: the kernel sends SIGWINCH to the terminal's foreground process group.
    public static func setWindowSize(_ fd: FileDescriptor, _ size: WindowSize) throws(SystemError) {
        var raw = winsize(ws_row: size.rows, ws_col: size.columns, ws_xpixel: size.width, ws_ypixel: size.height)
        _ = try syscall("ioctl(TIOCSWINSZ)", String(fd.rawValue)) { cdpu_ioctl_ptr(fd.rawValue, UInt(TIOCSWINSZ), &raw) }
    }
}

/// A pseudo-terminal pair (pty(7)): the controller side stays with us, the terminal side goes to the child.
public struct PseudoTerminal: Sendable {
    /// The controlling side ("master"): what we read the program's output from and write its input to.
    public let controller: FileDescriptor
    /// The terminal the program sees ("slave").
    public let terminal: FileDescriptor

    /// `posix_openpt(O_RDWR|O_NOCTTY|O_CLOEXEC)`, `unlockpt`, then the peer opened through
    /// `ioctl(TIOCGPTPEER)` (no path lookup, so no race with another opener). Both ends close-on-exec.
    public static func open() throws(SystemError) -> PseudoTerminal {
        let controller = FileDescriptor(rawValue: try syscall("posix_openpt") {
            cdpu_posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)
        })
        do throws(SystemError) {
            _ = try syscall("unlockpt") { cdpu_unlockpt(controller.rawValue) }
            let terminal = FileDescriptor(rawValue: try syscall("ioctl(TIOCGPTPEER)") {
                cdpu_ioctl_int(controller.rawValue, UInt(CDPU_TIOCGPTPEER), O_RDWR | O_NOCTTY | O_CLOEXEC)
            })
            return PseudoTerminal(controller: controller, terminal: terminal)
        } catch {
            controller.closeQuietly()
            throw error
        }
    }
}

extension PseudoTerminal {
    /// Whether `device` (an st_rdev) is the terminal side of a pseudo-terminal: the UNIX98 majors 136 to
    /// 143 that devpts gives its numbered entries.
    public static func isTerminalDevice(_ device: UInt64) -> Bool {
        // gnu_dev_major: bits 8-19 and 32-43.
        let major = (device >> 8) & 0xfff | (device >> 32) & ~UInt64(0xfff)
        return (136...143).contains(major)
    }

    /// A new pseudo-terminal of the devpts instance whose root directory is `devpts`: its `ptmx` opened
    /// (O_RDWR | O_NOCTTY | O_CLOEXEC and `flags`) and unlocked. Only the controlling side is opened; the
    /// terminal side is `<devpts>/<index>` (`ioctl(TIOCGPTN)`).
    public static func openController(in devpts: FileDescriptor, flags: Int32 = 0) throws(SystemError)
        -> (controller: FileDescriptor, index: Int)
    {
        let controller = try devpts.open(at: Array("ptmx".utf8), flags: O_RDWR | O_NOCTTY | flags)
        do throws(SystemError) {
            _ = try syscall("unlockpt") { cdpu_unlockpt(controller.rawValue) }
            var index: UInt32 = 0
            _ = try syscall("ioctl(TIOCGPTN)") { cdpu_ioctl_ptr(controller.rawValue, UInt(CDPU_TIOCGPTN), &index) }
            return (controller, Int(index))
        } catch {
            controller.closeQuietly()
            throw error
        }
    }
}

extension Terminal {
    /// Opens the terminal side of the pseudo-terminal whose controlling side is `controller`
    /// (`ioctl(TIOCGPTPEER)`, always O_NOCTTY | O_CLOEXEC): no path is looked up.
    public static func openPeer(of controller: FileDescriptor, flags: Int32) throws(SystemError) -> FileDescriptor {
        FileDescriptor(rawValue: try syscall("ioctl(TIOCGPTPEER)") {
            cdpu_ioctl_int(controller.rawValue, UInt(CDPU_TIOCGPTPEER), flags | O_NOCTTY | O_CLOEXEC)
        })
    }
}

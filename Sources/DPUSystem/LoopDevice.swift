import CDPUSystem
import Glibc
import SystemPackage

/// A loop device (loop(4)): a block device backed by a file, here always read-only and auto-clearing, so
/// that it detaches by itself when its last user (our descriptor, then the file system mounted from it)
/// goes away, on every exit path including a crash.
public struct LoopDevice: Sendable {
    /// `/dev/loopN`.
    public let path: String
    /// Open on the device; close it once the device is in use (mounted), or to detach it.
    public let fd: FileDescriptor

    /// Whether this kernel has loop devices (`/dev/loop-control`, or the module loaded).
    public static var isAvailable: Bool {
        access("/dev/loop-control", F_OK) == 0 || access("/sys/module/loop", F_OK) == 0
    }

    /// Attaches `backing` (an open file or block device) from byte `offset` for `size` bytes (0: to its
    /// end): LOOP_CTL_GET_FREE, then LOOP_CONFIGURE with LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR. A device
    /// taken by someone else between the two steps (EBUSY) is retried with the next free one.
    public static func attach(_ backing: FileDescriptor, offset: UInt64, size: UInt64) throws(SystemError) -> LoopDevice {
        let control = try FileDescriptor.openPath("/dev/loop-control", flags: O_RDWR)
        defer { control.closeQuietly() }
        var attempts = 0
        while true {
            let number = try syscall("ioctl(LOOP_CTL_GET_FREE)", "/dev/loop-control") {
                cdpu_ioctl_int(control.rawValue, 0x4C82, 0)
            }
            let path = "/dev/loop\(number)"
            let device = try FileDescriptor.openPath(path, flags: O_RDONLY)
            do throws(SystemError) {
                let readOnly: UInt32 = 1, autoclear: UInt32 = 4
                _ = try syscall("ioctl(LOOP_CONFIGURE)", path) {
                    cdpu_loop_configure(device.rawValue, backing.rawValue, offset, size, readOnly | autoclear)
                }
                return LoopDevice(path: path, fd: device)
            } catch where error.errno == .resourceBusy && attempts < 8 {
                device.closeQuietly()
                attempts += 1
            } catch {
                device.closeQuietly()
                throw error
            }
        }
    }
}

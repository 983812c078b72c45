import CFuse3
import Glibc
import DPUWire
import NIOCore
import QTFS
import SystemPackage

// The libfuse low-level operation table. Each entry is a C function pointer (a closure that captures
// nothing); the file system is reached through the request's user data.

private func filesystem(_ req: fuse_req_t?) -> QTFSFilesystem {
    Unmanaged<QTFSFilesystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

private func bytes(_ name: UnsafePointer<CChar>?) -> [UInt8] {
    guard let name else { return [] }
    return Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
}

extension QTFSFilesystem {
    /// The operations, and the capabilities asked for at INIT.
    static func operations(extendedAttributes: Bool) -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let userdata, let conn else { return }
            let filesystem = Unmanaged<QTFSFilesystem>.fromOpaque(userdata).takeUnretainedValue()
            // Large requests: the kernel sends up to 1 MiB per read and write (max_pages follows max_write).
            conn.pointee.max_write = UInt32(QTFSLimits.maximumIO)
            conn.pointee.max_background = 64
            conn.pointee.congestion_threshold = 48
            conn.pointee.time_gran = 1
            var want = conn.pointee.want | UInt32(FUSE_CAP_ATOMIC_O_TRUNC) | UInt32(FUSE_CAP_PARALLEL_DIROPS)
            // Symlinks in proc mode differ per caller; writeback caching would hide writes from the host
            // for a while; locks stay local, as in the original.
            want &= ~UInt32(FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_HANDLE_KILLPRIV)
            if filesystem.options.proc {
                want &= ~UInt32(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_AUTO_INVAL_DATA)
            } else {
                want |= UInt32(FUSE_CAP_AUTO_INVAL_DATA)
            }
            conn.pointee.want = want & conn.pointee.capable
            // The kernel caps readahead at what it offered in INIT (128 KiB); the device's own setting can
            // be raised once the INIT reply is in.
            filesystem.raiseReadAhead()
        }
        ops.lookup = { req, parent, name in filesystem(req).lookup(req!, parent, bytes(name)) }
        ops.forget = { req, node, count in
            filesystem(req).forget(node, count)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, list in
            let filesystem = filesystem(req)
            for index in 0..<count {
                let item = list![index]
                filesystem.forget(item.ino, item.nlookup)
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, node, fi in filesystem(req).getattr(req!, node, QTFSFilesystem.file(fi)) }
        ops.setattr = { req, node, attr, set, fi in
            filesystem(req).setattr(req!, node, attr!.pointee, set, QTFSFilesystem.file(fi))
        }
        ops.readlink = { req, node in filesystem(req).readlink(req!, node) }
        ops.mknod = { req, parent, name, mode, device in filesystem(req).mknod(req!, parent, bytes(name), mode, device) }
        ops.mkdir = { req, parent, name, mode in filesystem(req).mkdir(req!, parent, bytes(name), mode) }
        ops.unlink = { req, parent, name in filesystem(req).remove(req!, parent, bytes(name), directory: false) }
        ops.rmdir = { req, parent, name in filesystem(req).remove(req!, parent, bytes(name), directory: true) }
        ops.symlink = { req, target, parent, name in filesystem(req).symlink(req!, bytes(target), parent, bytes(name)) }
        ops.rename = { req, parent, name, newParent, newName, flags in
            filesystem(req).rename(req!, parent, bytes(name), newParent, bytes(newName), UInt32(flags))
        }
        ops.link = { req, node, parent, name in filesystem(req).link(req!, node, parent, bytes(name)) }
        ops.open = { req, node, fi in filesystem(req).open(req!, node, fi!) }
        ops.create = { req, parent, name, mode, fi in filesystem(req).create(req!, parent, bytes(name), mode, fi!) }
        ops.read = { req, _, size, offset, fi in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            filesystem(req).read(req!, file, size, offset, fi!.pointee.flags)
        }
        ops.write = { req, _, buffer, size, offset, fi in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            // The kernel's buffer is only valid during this call.
            let data = ByteBuffer(bytes: UnsafeRawBufferPointer(start: buffer, count: size))
            filesystem(req).write(req!, file, data, offset, fi!.pointee.flags)
        }
        // Every write already reached the host when it returned: close has nothing left to send.
        ops.flush = { req, _, _ in _ = fuse_reply_err(req, 0) }
        // Answered before the engine is told: the caller's close(2) need not wait for a socket write.
        ops.release = { req, _, fi in
            let filesystem = filesystem(req)
            let pointer = fi.flatMap { UnsafeRawPointer(bitPattern: UInt($0.pointee.fh)) }
            fuse_reply_err(req, 0)
            if let pointer { filesystem.release(Unmanaged<OpenFile>.fromOpaque(pointer).takeRetainedValue()) }
        }
        ops.fsync = { req, _, dataOnly, fi in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            filesystem(req).fsync(req!, file, dataOnly: dataOnly != 0)
        }
        ops.opendir = { req, node, fi in filesystem(req).opendir(req!, node, fi!) }
        ops.readdir = { req, node, size, offset, fi in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            filesystem(req).readdir(req!, node, file, size, offset, plus: false)
        }
        ops.readdirplus = { req, node, size, offset, fi in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            filesystem(req).readdir(req!, node, file, size, offset, plus: true)
        }
        ops.releasedir = ops.release
        ops.fsyncdir = { req, _, _, _ in _ = fuse_reply_err(req, 0) }
        ops.statfs = { req, node in filesystem(req).statfs(req!, node) }
        ops.poll = { req, _, fi, handle in
            guard let file = QTFSFilesystem.file(fi) else { return _ = fuse_reply_err(req, EBADF) }
            filesystem(req).poll(req!, file, handle, fi!.pointee.poll_events)
        }
        // Without these libfuse answers ENOSYS, and the kernel stops asking (`-o noxattr`).
        guard extendedAttributes else { return ops }
        ops.setxattr = { req, node, name, value, size, flags in
            let bytesValue = Array(UnsafeRawBufferPointer(start: value, count: size))
            filesystem(req).setxattr(req!, node, bytes(name), bytesValue, flags)
        }
        ops.getxattr = { req, node, name, size in filesystem(req).getxattr(req!, node, bytes(name), size, list: false) }
        ops.listxattr = { req, node, size in filesystem(req).getxattr(req!, node, [], size, list: true) }
        ops.removexattr = { req, node, name in filesystem(req).setxattr(req!, node, bytes(name), nil, 0) }
        return ops
    }
}

import DPUSystem
import SystemPackage

// NIOCore has a `FileDescriptor` protocol too; in this module the name means swift-system's fd.
typealias FileDescriptor = SystemPackage.FileDescriptor
typealias SocketAddress = DPUSystem.SocketAddress

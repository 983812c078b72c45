// swift-tools-version:6.1
//
// dpuctl: one busybox-style binary that offloads libvirt's management plane to a DPU.
// Module map and the rules each module follows: DESIGN.md (shared) and the README of each module.

import PackageDescription

let swift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]
let readme = ["README.md"]

/// What every networked component may use (DESIGN.md, Modules).
let componentDeps: [Target.Dependency] = [
    "DPUWire", "DPUSystem", "DPUSystemd", "DPUConfig",
    .product(name: "SystemPackage", package: "swift-system"),
    .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "Logging", package: "swift-log"),
]

let cliDeps: [Target.Dependency] = [
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
    "DPUSystem", "DPUSystemd", "DPUWire", "DPUConfig",
    "Rexec", "UDSProxy", "QTFS", "QTFSFuse", "Rootfs", "MountPlan",
]

let package = Package(
    name: "dpuctl",
    platforms: [.macOS(.v15)],  // Linux is the target; this only satisfies the dependencies' manifests.
    products: [
        .executable(name: "dpuctl", targets: ["dpuctl"]),
        // LD_PRELOAD library for unmodified clients: `libudsproxy.so`.
        .library(name: "udsproxy", type: .dynamic, targets: ["CUDSPreload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // The executable: main.swift hands argv to the CLI and nothing else.
        .executableTarget(
            name: "dpuctl", dependencies: ["DPUCtlCLI"], swiftSettings: swift6,
            // Start-up is on every remote exec's path (the rexec client is this binary): a non-PIE
            // executable has no relative relocations to apply, which saves half a millisecond.
            linkerSettings: [.unsafeFlags(["-Xclang-linker", "-no-pie"])]),

        // Applet table, argument parsing, error -> exit status. The only module that imports ArgumentParser.
        .target(name: "DPUCtlCLI", dependencies: cliDeps, exclude: readme, swiftSettings: swift6),

        // Components.
        .target(name: "Rexec", dependencies: componentDeps, exclude: readme, swiftSettings: swift6),
        .target(name: "UDSProxy", dependencies: componentDeps, exclude: readme, swiftSettings: swift6),
        .target(name: "QTFS", dependencies: componentDeps, exclude: readme, swiftSettings: swift6),
        .target(
            name: "QTFSFuse", dependencies: ["QTFS", "UDSProxy", "Rexec", "CFuse3"] + componentDeps, exclude: readme,
            swiftSettings: swift6),
        .target(name: "Rootfs", dependencies: ["DPUSystem", "DPUConfig"], exclude: readme, swiftSettings: swift6),
        .target(name: "MountPlan", dependencies: ["DPUSystem", "DPUConfig"], exclude: readme, swiftSettings: swift6),

        // Foundations.
        .target(
            name: "DPUWire",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            exclude: readme, swiftSettings: swift6),
        .target(
            name: "DPUSystem",
            dependencies: ["CDPUSystem", .product(name: "SystemPackage", package: "swift-system")],
            exclude: readme,
            // Debug builds let tests force errors (EINTR, EPERM) into the syscall funnel.
            swiftSettings: swift6 + [.define("ENABLE_MOCKING", .when(configuration: .debug))]),
        .target(
            name: "DPUSystemd",
            dependencies: [
                "CSystemd", "DPUSystem",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: readme, swiftSettings: swift6),
        .target(name: "DPUConfig", dependencies: ["DPUSystem", "DPUWire"], exclude: readme, swiftSettings: swift6),

        // C: the pieces of libc that Swift cannot call (CMSG_* macros, a vfork-safe spawn), and the
        // system libraries.
        .target(name: "CDPUSystem"),
        // Headers only: libsystemd is loaded at run time (see Sources/CSystemd/shim.h), so no pkg-config
        // link flags.
        .systemLibrary(name: "CSystemd", providers: [.apt(["libsystemd-dev"])]),
        // libfuse3's headers (libfuse3-dev); the library is loaded at run time by fuse3.c (see its shim.h).
        .target(name: "CFuse3"),
        // libudsproxy.so is loaded into arbitrary processes: it exports connect() and nothing else. The
        // Swift driver links every product against the Swift runtime (with the toolchain's rpath), which a
        // preload library must not pull into its hosts: `make build` links the installed copy with the C
        // compiler instead (see the Makefile); this product is the development build.
        .target(name: "CUDSPreload", cSettings: [.unsafeFlags(["-fvisibility=hidden"])]),

        // Tests.
        .testTarget(
            name: "DPUWireTests", dependencies: ["DPUWire", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swift6),
        .testTarget(name: "DPUSystemTests", dependencies: ["DPUSystem"], swiftSettings: swift6),
        .testTarget(
            name: "DPUSystemdTests",
            dependencies: ["DPUSystemd", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: swift6),
        .testTarget(name: "DPUConfigTests", dependencies: ["DPUConfig"], swiftSettings: swift6),
        .testTarget(name: "DPUCtlCLITests", dependencies: ["DPUCtlCLI"], swiftSettings: swift6),
        .testTarget(name: "MountPlanTests", dependencies: ["MountPlan", "DPUSystem", "DPUConfig"], swiftSettings: swift6),
        .testTarget(name: "RootfsTests", dependencies: ["Rootfs", "DPUSystem"], swiftSettings: swift6),
        .testTarget(
            name: "QTFSTests",
            dependencies: ["QTFS", "DPUSystem", "DPUWire", "DPUConfig", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swift6),
        .testTarget(name: "UDSProxyTests", dependencies: ["UDSProxy"], swiftSettings: swift6),
        .testTarget(name: "RexecTests", dependencies: ["Rexec", "DPUWire", "DPUSystem", "DPUConfig"], swiftSettings: swift6),
        .testTarget(name: "QTFSFuseTests", dependencies: ["QTFSFuse", "QTFS", "DPUSystem", "DPUWire"], swiftSettings: swift6),
    ]
)

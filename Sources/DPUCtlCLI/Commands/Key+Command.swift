import ArgumentParser
import DPUConfig
import Glibc

/// `dpuctl key`: the pre-shared key both machines hold.
struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Manage the pre-shared key that authenticates the peers.",
        subcommands: [KeyGenerateCommand.self])
}

struct KeyGenerateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a fresh random key with mode 0600.",
        discussion: "Copy the same file to the peer machine (same path, owner root, mode 0600).")

    @Argument(help: ArgumentHelp("Where to write the key.", valueName: "file"))
    var file: String = KeyFile.defaultPath

    @Flag(help: "Replace an existing key file.")
    var force = false

    func run() async throws {
        try await reportingErrors("dpuctl key generate") {
            let directory = file.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            if !directory.isEmpty, access(directory, F_OK) != 0 {
                // Only the last level is created: a typo in a deep path should fail, not build a tree.
                guard mkdir(directory, 0o755) == 0 else {
                    throw KeyFileError(path: file, "cannot be created: its directory \(directory) is missing")
                }
            }
            try KeyFile.generate(file, force: force)
            print("wrote a new key to \(file); copy it to the peer machine")
        }
    }
}

import ArgumentParser

/// An error that knows the exit status it should produce (rexec: 127 for "program not found").
protocol ExitStatusError: Error {
    var exitStatus: Int32 { get }
}

/// Runs a command's body and turns any error into the one-line message `PREFIX: description` and an exit
/// status (1 unless the error says otherwise). Argument-parser's own exits pass through untouched.
func reportingErrors(_ prefix: String, _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch let error as CleanExit {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        fail("\(prefix): \(error)", status: (error as? ExitStatusError)?.exitStatus ?? 1)
    }
}

/// The applet exists (help, options) but its component has not landed: say so and fail, never pretend.
func notAvailableYet(_ applet: String) -> Never {
    fail("dpuctl: \(applet) is not available yet", status: 1)
}

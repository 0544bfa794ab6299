import Foundation

/// Runs a real program (psql, pgbench, php, initdb …) and collects its output, with a deadline.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum ProcessRunner {
    /// posix_spawn and waitpid directly: Foundation's Process relies on a run loop to notice exits, which
    /// async tests do not spin, and servers started by a child (pg_ctl) must not hold anything we wait on.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], input: String? = nil,
                    timeout: TimeInterval = 120) throws -> ProcessResult {
        let path = executable.hasPrefix("/") ? executable : try which(executable)
        let scratch = "/tmp/shoal-proc-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let outPath = scratch + ".out", errPath = scratch + ".err", inPath = scratch + ".in"
        try (input ?? "").write(toFile: inPath, atomically: false, encoding: .utf8)
        defer { for file in [outPath, errPath, inPath] { unlink(file) } }
        let pid = try spawn(path, arguments, environment: environment, stdin: inPath, stdout: outPath, stderr: errPath)
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                throw TestFailure("\(executable) \(arguments.joined(separator: " ")) timed out after \(timeout)s")
            }
            usleep(10_000)
        }
        let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ProcessResult(
            status: exitCode,
            stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        )
    }

    /// Starts a program in the background with default signal handling; its output goes to the files given.
    static func spawn(_ path: String, _ arguments: [String], environment: [String: String] = [:], stdin: String = "/dev/null",
                      stdout: String, stderr: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        // The test process's threads block signals; a child would inherit that mask (pgbench -T relies on SIGALRM).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        guard spawned == 0 else { throw TestFailure("could not start \(path): errno \(spawned)") }
        return pid
    }

    /// The exit code of `pid` once it ends within `timeout` (-1 if it was reaped before), or nil if it is still running.
    static func exitCode(of pid: pid_t, within timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while Date() < deadline {
            let waited = waitpid(pid, &status, WNOHANG)
            if waited == pid {
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
            if waited == -1 { return -1 } // not our child, or already reaped
            usleep(20_000)
        }
        return nil
    }

    static func which(_ name: String) throws -> String {
        for directory in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"] {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw TestFailure("\(name) not found; run scripts/install-deps.sh")
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

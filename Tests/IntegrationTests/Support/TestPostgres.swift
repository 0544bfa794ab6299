import Foundation

/// A throwaway PostgreSQL 15 on loopback for the whole test run: initdb into a temp dir as an unprivileged
/// user (the `postgres` account when tests run as root), SCRAM-SHA-256 for TCP, stopped at exit.
final class TestPostgres: @unchecked Sendable {
    static let password = "secretpw"
    static let shared: TestPostgres = {
        do {
            return try TestPostgres(name: "main")
        } catch {
            fatalError("could not start the test PostgreSQL: \(error)")
        }
    }()

    let directory: String
    let port: Int
    /// The loopback address it listens on (replicated clusters put each node on its own 127.0.0.x).
    let address: String
    private let runAsOther: Bool

    /// Every cluster started by this process, stopped at exit whatever happened.
    private static let started = NSLock()
    nonisolated(unsafe) private static var directories: [String] = []

    /// `settings` are extra `-c` options; `hba`, when given, replaces pg_hba.conf (for a TLS-only server).
    /// `baseBackupFrom`, when given, makes this node a streaming replica of that one (pg_basebackup -R) instead
    /// of running initdb; `applicationName` is how the primary sees it (pg_stat_replication, synchronous_standby_names).
    init(name: String = "main", address: String = "127.0.0.1", port: Int? = nil, settings: [String] = [], hba: String? = nil,
         baseBackupFrom primary: TestPostgres? = nil, applicationName: String? = nil,
         prepare: (String) throws -> Void = { _ in }) throws {
        directory = "/tmp/shoal-test-pg-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.port = port ?? freePort()
        self.address = address
        runAsOther = getuid() == 0
        options = (["-p \(self.port) -k \(directory) -c listen_addresses=\(address) -c max_connections=200 -c fsync=off"]
            + settings.map { "-c \($0)" }).joined(separator: " ")
        try "\(Self.password)\n".write(toFile: "\(directory)/pwfile", atomically: true, encoding: .utf8)
        try prepare(directory)
        if runAsOther {
            try ProcessRunner.run("chown", ["-R", "postgres", directory])
        }
        if let primary {
            let source = "host=\(primary.address) port=\(primary.port) user=postgres password=\(Self.password)"
            try asPostgres(["pg_basebackup", "-d", source, "-D", "\(directory)/data", "-R", "-X", "stream", "-c", "fast"])
            // Named so the primary can list it and require it (synchronous_standby_names); the last value wins.
            try asPostgres(["sh", "-c", "echo \"primary_conninfo = '\(source) application_name=\(applicationName ?? name)'\" >> \(directory)/data/postgresql.auto.conf"])
        } else {
            try asPostgres(["initdb", "-D", "\(directory)/data", "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                            "--pwfile=\(directory)/pwfile", "-E", "UTF8", "--locale=C"])
        }
        if let hba {
            try hba.write(toFile: "\(directory)/data/pg_hba.conf", atomically: true, encoding: .utf8)
            if runAsOther { try ProcessRunner.run("chown", ["postgres", "\(directory)/data/pg_hba.conf"]) }
        }
        Self.started.lock()
        let first = Self.directories.isEmpty
        Self.directories.append(directory)
        Self.started.unlock()
        if first {
            atexit {
                TestPostgres.started.lock()
                let all = TestPostgres.directories
                TestPostgres.started.unlock()
                for directory in all {
                    let command = ["pg_ctl", "-D", "\(directory)/data", "-m", "immediate", "stop"]
                    if getuid() == 0, let pgctl = try? ProcessRunner.which("pg_ctl") {
                        _ = try? ProcessRunner.run("runuser", ["-u", "postgres", "--", pgctl] + command.dropFirst())
                    } else {
                        _ = try? ProcessRunner.run(command[0], Array(command.dropFirst()))
                    }
                    try? FileManager.default.removeItem(atPath: directory)
                }
            }
        }
        try start()
    }

    private let options: String

    func start() throws {
        try asPostgres(["pg_ctl", "-D", "\(directory)/data", "-l", "\(directory)/log", "-w", "-o", options, "start"])
    }

    /// `mode`: fast (clients disconnected, clean shutdown) or immediate (a crash, as far as clients can tell).
    func stop(mode: String = "fast") throws {
        try asPostgres(["pg_ctl", "-D", "\(directory)/data", "-m", mode, "-w", "stop"])
    }

    func promote() throws {
        try asPostgres(["pg_ctl", "-D", "\(directory)/data", "-w", "promote"])
    }

    @discardableResult
    func asPostgres(_ command: [String]) throws -> ProcessResult {
        let executable = try ProcessRunner.which(command[0])
        let result = runAsOther
            ? try ProcessRunner.run("runuser", ["-u", "postgres", "--", executable] + command.dropFirst())
            : try ProcessRunner.run(executable, Array(command.dropFirst()))
        guard result.status == 0 else {
            throw TestFailure("\(command.joined(separator: " ")) failed: \(result.stderr)\(result.stdout)")
        }
        return result
    }

    /// Runs SQL directly against PostgreSQL (not through Shoal) and returns unaligned output.
    @discardableResult
    func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try ProcessRunner.run("psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", address, "-p", "\(port)", "-U", "postgres", "-d", database, "-c", sql],
                                           environment: ["PGPASSWORD": Self.password])
        guard result.status == 0 else { throw TestFailure("psql failed: \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A TCP port nobody listens on right now.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

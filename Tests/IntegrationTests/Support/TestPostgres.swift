import Foundation

/// A throwaway PostgreSQL 15 on loopback for the whole test run: initdb into a temp dir as an unprivileged
/// user (the `postgres` account when tests run as root), SCRAM-SHA-256 for TCP, stopped at exit.
final class TestPostgres: @unchecked Sendable {
    static let password = "secretpw"
    static let shared: TestPostgres = {
        do {
            return try TestPostgres()
        } catch {
            fatalError("could not start the test PostgreSQL: \(error)")
        }
    }()

    let directory: String
    let port: Int
    private let runAsOther: Bool

    private init() throws {
        directory = "/tmp/shoal-test-pg-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = freePort()
        runAsOther = getuid() == 0
        if runAsOther {
            try ProcessRunner.run("chown", ["-R", "postgres", directory])
        }
        try "\(Self.password)\n".write(toFile: "\(directory)/pwfile", atomically: true, encoding: .utf8)
        try asPostgres(["initdb", "-D", "\(directory)/data", "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                        "--pwfile=\(directory)/pwfile", "-E", "UTF8", "--locale=C"])
        try asPostgres(["pg_ctl", "-D", "\(directory)/data", "-l", "\(directory)/log", "-w", "-o",
                        "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", "start"])
        atexit {
            // Stop the server when the test process ends, whatever happened.
            let shared = TestPostgres.shared
            _ = try? shared.asPostgres(["pg_ctl", "-D", "\(shared.directory)/data", "-m", "immediate", "stop"])
            try? FileManager.default.removeItem(atPath: shared.directory)
        }
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
        let result = try ProcessRunner.run("psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", database, "-c", sql],
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

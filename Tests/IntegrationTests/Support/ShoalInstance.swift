import Configuration
import Foundation
import Logging
import ProxyServer

/// Shoal running in the test process in front of the shared test PostgreSQL.
final class ShoalInstance {
    let server: ShoalServer
    let port: Int
    let directory: String
    let logPath: String

    /// `configure` adjusts a transaction-mode config with one `postgres` database entry before start.
    init(threads: Int = 2, _ configure: (inout ShoalConfig) -> Void = { _ in }) async throws {
        let postgres = TestPostgres.shared
        let chosenPort = freePort()
        directory = "/tmp/shoal-test-\(getpid())-\(chosenPort)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        logPath = "\(directory)/shoal.log"
        var config = ShoalConfig()
        config.listenAddr = ["127.0.0.1"]
        config.listenPort = chosenPort
        config.unixSocketDir = directory
        config.authType = .scramSHA256
        config.poolMode = .transaction
        config.defaultPoolSize = 10
        config.maxClientConn = 3000
        var database = DatabaseEntry(name: "postgres")
        database.hosts = ["127.0.0.1"]
        database.ports = [postgres.port]
        database.dbname = "postgres"
        config.databases["postgres"] = database
        config.databases["*"] = { var d = database; d.name = "*"; d.dbname = nil; return d }()
        configure(&config)
        port = config.listenPort // a test may pick its own
        let userList = UserList(secrets: ["postgres": TestPostgres.password])
        let sink = LogSink(quiet: true, logfile: logPath)
        let level = ProcessInfo.processInfo.environment["SHOAL_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        var logger = Logger(label: "shoal-test") { PgBouncerLogHandler(label: $0, sink: sink, level: level) }
        logger.logLevel = level
        server = ShoalServer(config: config, userList: userList, threads: threads, logger: logger, logSink: sink)
        try await server.start()
    }

    var conninfo: String {
        "host=127.0.0.1 port=\(port) user=postgres dbname=postgres password=\(TestPostgres.password) connect_timeout=10"
    }

    /// The admin console over TCP, as `user` (SCRAM with the test password).
    func consoleConninfo(user: String = "postgres", database: String = "pgbouncer") -> String {
        "host=127.0.0.1 port=\(port) user=\(user) dbname=\(database) password=\(TestPostgres.password) connect_timeout=10"
    }

    /// psql against the console; `-A` output with a header line, fields split by `|`.
    func console(_ sql: String, conninfo: String? = nil) throws -> ProcessResult {
        try ProcessRunner.run("psql", ["-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", conninfo ?? consoleConninfo(), "-c", sql])
    }

    /// `workers` PHP processes at once running `fixture` (in Fixtures/) against this Shoal, as an FPM pool would;
    /// each gets SHOAL_HOST/PORT/PASSWORD, its WORKER number and `environment`.
    func runPHPWorkers(_ fixture: String, workers: Int, environment: [String: String] = [:]) async throws -> [ProcessResult] {
        let php = try ProcessRunner.which("php")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/\(fixture)").path
        let base = environment.merging(["SHOAL_HOST": "127.0.0.1", "SHOAL_PORT": "\(port)", "SHOAL_PASSWORD": TestPostgres.password]) { $1 }
        return try await withThrowingTaskGroup(of: ProcessResult.self) { group in
            for worker in 0..<workers {
                let workerEnvironment = base.merging(["WORKER": "\(worker)"]) { $1 }
                group.addTask { try ProcessRunner.run(php, [script], environment: workerEnvironment, timeout: 120) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func stop() async {
        await server.shutdown()
        // Keep the log of the last run of each port for post-mortems.
        try? FileManager.default.removeItem(atPath: "/tmp/shoal-test-last.log")
        try? FileManager.default.copyItem(atPath: logPath, toPath: "/tmp/shoal-test-last.log")
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// psql through Shoal; returns unaligned output.
    func psql(_ arguments: [String], conninfo: String? = nil) throws -> ProcessResult {
        try ProcessRunner.run("psql", ["-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo ?? self.conninfo] + arguments)
    }

    /// pgbench running `script` (written to a file in this instance's directory) with `arguments`.
    func pgbench(script: String, _ arguments: [String], timeout: TimeInterval = 60) throws -> ProcessResult {
        let path = "\(directory)/script-\(UInt32.random(in: 0...UInt32.max)).sql"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        return try pgbench(["-f", path] + arguments, timeout: timeout)
    }

    func pgbench(_ arguments: [String], timeout: TimeInterval = 60) throws -> ProcessResult {
        try ProcessRunner.run("pgbench", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres"] + arguments + ["postgres"],
                              environment: ["PGPASSWORD": TestPostgres.password], timeout: timeout)
    }
}

extension ShoalConfig {
    /// Another `[databases]` entry for the test PostgreSQL's `postgres` database, named `name`, as the default
    /// `postgres` entry is, then adjusted (a forced user and password, a connect_query, hosts…).
    mutating func addEntry(_ name: String, _ adjust: (inout DatabaseEntry) -> Void = { _ in }) {
        var entry = databases["postgres"]!
        entry.name = name
        adjust(&entry)
        databases[name] = entry
    }
}

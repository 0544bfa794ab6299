import Foundation
import Testing

/// The admin console through real clients (psql, psycopg) against a real PostgreSQL behind Shoal.
@Suite(.serialized) struct AdminConsoleIntegrationTests {
    /// PgBouncer 1.25's column lists for the views that exporters and dashboards read.
    static let expectedColumns: [String: String] = [
        "POOLS": "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts",
        "STATS": "database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|total_client_parse_count|total_server_parse_count|total_bind_count|total_client_login_count|avg_server_assignment_count|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|avg_query_time|avg_wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count|avg_client_login_count",
        "STATS_TOTALS": "database|server_assignment_count|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time|client_parse_count|server_parse_count|bind_count|client_login_count",
        "STATS_AVERAGES": "database|server_assignment_count|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count|avg_client_login_count",
        "TOTALS": "name|value",
        "CLIENTS": "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id|pinned",
        "SERVERS": "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id|pinned",
        "DATABASES": "name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool_size|server_lifetime|pool_mode|load_balance_hosts|max_connections|current_connections|max_client_connections|current_client_connections|paused|disabled",
        "USERS": "name|pool_size|reserve_pool_size|pool_mode|max_user_connections|current_connections|max_user_client_connections|current_client_connections",
        "LISTS": "list|items",
        "CONFIG": "key|value|default|changeable",
        "STATE": "key|value",
        "MEM": "name|size|used|free|memtotal",
        "VERSION": "version",
        "FDS": "fd|task|user|database|addr|port|cancel|link|client_encoding|std_strings|datestyle|timezone|password|scram_client_key|scram_server_key",
        "SOCKETS": "type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id|pinned|recv_pos|pkt_pos|pkt_remain|send_pos|send_remain|pkt_avail|send_avail",
    ]

    @Test func everyShowParsesWithPsqlAndPsycopgWithPgBouncersColumns() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        // Some traffic, and a client that stays connected, so the views have rows.
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 41 + 1") == "42")
        for (command, columns) in Self.expectedColumns {
            let result = try shoal.console("SHOW \(command);")
            #expect(result.status == 0, "SHOW \(command): \(result.stderr)")
            #expect(result.stdout.split(separator: "\n").first.map(String.init) == columns, "SHOW \(command)")
        }
        // Live figures: our client and its pool.
        let pools = try shoal.console("SHOW POOLS").stdout
        let postgresPool = pools.split(separator: "\n").first { $0.hasPrefix("postgres|postgres|") }
        #expect(postgresPool != nil, "\(pools)")
        #expect(postgresPool?.split(separator: "|", omittingEmptySubsequences: false)[2] == "1", "cl_active: \(pools)") // our idle client
        #expect(postgresPool?.split(separator: "|", omittingEmptySubsequences: false)[9] == "1", "sv_idle: \(pools)")
        let clients = try shoal.console("SHOW CLIENTS").stdout
        #expect(clients.contains("C|postgres|postgres|none|idle|127.0.0.1|"), "\(clients)")
        let totals = try shoal.console("SHOW STATS_TOTALS").stdout
        let postgresTotals = totals.split(separator: "\n").first { $0.hasPrefix("postgres|") }?.split(separator: "|").map(String.init)
        #expect(postgresTotals?[2] == "1" && postgresTotals?[3] == "1", "one transaction, one query: \(totals)")
        #expect(try shoal.console("SHOW VERSION").stdout.contains("PgBouncer 1.25.2"))
        #expect(try shoal.console("SHOW HELP").stderr.contains("SHOW HELP|CONFIG|DATABASES"))
        #expect(try shoal.console("SHOW CONFIG").stdout.contains("default_pool_size|10|20|yes"))

        // psycopg 3: the default cursor (extended protocol) and a client-side cursor (simple protocol).
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/console_psycopg.py").path
        let statements = Self.expectedColumns.keys.sorted().map { "SHOW \($0)" } + ["PAUSE postgres", "RESUME postgres"]
        let run = try ProcessRunner.run("python3", [script, shoal.consoleConninfo()] + statements)
        #expect(run.status == 0, "\(run.stderr)")
        let parsed = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: [String: [String: Any]]] ?? [:]
        for (command, columns) in Self.expectedColumns {
            for style in ["extended", "simple"] {
                let entry = parsed["SHOW \(command)"]?[style]
                #expect((entry?["columns"] as? [String])?.joined(separator: "|") == columns, "psycopg \(style) SHOW \(command): \(String(describing: entry))")
            }
        }
        #expect(parsed["PAUSE postgres"]?["extended"]?["error"] == nil, "\(String(describing: parsed["PAUSE postgres"]))")
        #expect((parsed["RESUME postgres"]?["simple"]?["error"] as? String)?.contains("is not paused") == true,
                "the extended run resumed it already: \(String(describing: parsed["RESUME postgres"]))")
        #expect(try client.scalar("select 'still served'") == "still served")
    }

    @Test func accessRulesAndBadCommandsKeepTheConsoleUp() async throws {
        let shoal = try await ShoalInstance {
            $0.adminUsers = ["postgres"]
            $0.statsUsers = ["watcher"]
        }
        defer { Task { await shoal.stop() } }
        // A wrong command, a bad argument, then a good one, all in one session.
        let session = try ProcessRunner.run("psql", ["-X", "-A", shoal.consoleConninfo()],
                                            input: "SHOW NOSUCH;\nPAUSE nosuchdb;\nKILL_CLIENT abc;\nDISABLE;\nSHOW STATE;\n")
        #expect(session.stderr.contains("invalid command 'SHOW nosuch', use SHOW HELP;"), "\(session.stderr)")
        #expect(session.stderr.contains("no such database: nosuchdb"), "\(session.stderr)")
        #expect(session.stderr.contains("invalid client pointer supplied"), "\(session.stderr)")
        #expect(session.stderr.contains("a database is required"), "\(session.stderr)")
        #expect(session.stdout.contains("paused|no"), "the console answered after the errors: \(session.stdout)")
        // The same-uid peer on the Unix socket is admin as `pgbouncer`, without a password.
        let unix = try ProcessRunner.run("psql", ["-X", "-At", "-h", shoal.directory, "-p", "\(shoal.port)", "-U", "pgbouncer",
                                                  "-d", "pgbouncer", "-c", "SHOW STATE"], environment: ["PGPASSWORD": ""])
        #expect(unix.status == 0 && unix.stdout.contains("active|yes"), "\(unix.stderr)")
        #expect(shoal.log.contains("pgbouncer access from unix socket"))
        // Not in either list: PgBouncer's `not allowed` once logged in (trust lets `nobody` log in).
        try shoal.console("SET auth_type = trust")
        let refused = try shoal.console("SHOW POOLS", conninfo: shoal.consoleConninfo().replacingOccurrences(of: "user=postgres", with: "user=nobody"))
        #expect(refused.status != 0 && refused.stderr.contains("not allowed"), "\(refused.stderr)")
        // A stats user may look, not act.
        let watcher = try shoal.console("PAUSE", conninfo: shoal.consoleConninfo().replacingOccurrences(of: "user=postgres", with: "user=watcher"))
        #expect(watcher.stderr.contains("admin access needed"), "\(watcher.stderr)")
        #expect(try shoal.console("SHOW POOLS", conninfo: shoal.consoleConninfo().replacingOccurrences(of: "user=postgres", with: "user=watcher")).status == 0)
        // And `shoal` is the console too.
        #expect(try shoal.console("SHOW VERSION", conninfo: shoal.consoleConninfo(database: "shoal")).stdout.contains("Shoal"))
    }

    @Test func pauseWaitsForTransactionsAndHeldQueriesRunAfterResume() async throws {
        let shoal = try await ShoalInstance {
            $0.adminUsers = ["postgres"]
            $0.defaultPoolSize = 2
        }
        defer { Task { await shoal.stop() } }
        let inTransaction = try PQConnection(shoal.conninfo)
        try inTransaction.query("begin")
        try inTransaction.query("select 1")
        // PAUSE answers only once that transaction has ended.
        let console = try PQConnection(shoal.consoleConninfo())
        let pause = background { try console.query("PAUSE") }
        try await Task.sleep(nanoseconds: 700_000_000)
        #expect(!pause.isDone, "PAUSE returned while a transaction was open")
        try inTransaction.query("commit")
        _ = try await pause.value()
        // Paused: a new query waits (it does not fail) …
        let waiting = try PQConnection(shoal.conninfo)
        let held = background { try waiting.scalar("select 'ran after resume'") }
        try await Task.sleep(nanoseconds: 700_000_000)
        #expect(!held.isDone, "a query ran during PAUSE")
        let pools = try PQConnection(shoal.consoleConninfo()).query("SHOW POOLS")
        #expect(pools.contains { $0[0] == "postgres" && $0[3] == "1" }, "cl_waiting: \(pools)")
        // … and completes after RESUME.
        try PQConnection(shoal.consoleConninfo()).query("RESUME")
        #expect(try await held.value() == "ran after resume")
        #expect(shoal.log.contains("PAUSE command issued") && shoal.log.contains("RESUME command issued"))
    }

    @Test func aConsoleThatLeavesWhilePauseWaitsIsNoProblem() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        let inTransaction = try PQConnection(shoal.conninfo)
        try inTransaction.query("begin")
        do {
            let impatient = try PQConnection(shoal.consoleConninfo())
            _ = PQsendQueryShim(impatient, "PAUSE")
            try await Task.sleep(nanoseconds: 200_000_000)
        } // the console connection closes here, its PAUSE still waiting
        try inTransaction.query("commit") // PAUSE completes with nobody to answer
        try await Task.sleep(nanoseconds: 300_000_000)
        let console = try PQConnection(shoal.consoleConninfo())
        #expect(try console.query("SHOW STATE").first { $0[0] == "paused" }?[1] == "yes")
        try console.query("RESUME")
        #expect(try inTransaction.scalar("select 'alive'") == "alive")
    }

    @Test func disableKillAndKillClient() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        let console = try PQConnection(shoal.consoleConninfo())
        try console.query("DISABLE postgres")
        #expect(refusal(shoal.conninfo).contains("database \"postgres\" is disabled"))
        try console.query("ENABLE postgres")
        let victim = try PQConnection(shoal.conninfo)
        #expect(try victim.scalar("select 1") == "1")
        let rows = try console.query("SHOW CLIENTS")
        let id = try #require(rows.first { $0[2] == "postgres" }?[20]) // the id column
        try console.query("KILL_CLIENT \(id)")
        #expect(throws: PQError.self) { try victim.query("select 1") }
        #expect(shoal.log.contains("admin forced disconnect"))
        let other = try PQConnection(shoal.conninfo)
        #expect(try other.scalar("select 2") == "2")
        try console.query("KILL postgres")
        #expect(throws: PQError.self) { try other.query("select 1") }
        try console.query("RESUME postgres")
        #expect(try PQConnection(shoal.conninfo).scalar("select 3") == "3")
    }

    @Test func reloadAndSetChangePoolSizeInViewAndBehaviour() async throws {
        var configPath = ""
        let shoal = try await ShoalInstance {
            $0.adminUsers = ["postgres"]
            $0.defaultPoolSize = 1
            configPath = "\($0.unixSocketDir)/shoal.ini"
            $0.configFile = configPath
        }
        defer { Task { await shoal.stop() } }
        func writeConfig(poolSize: Int) throws {
            let ini = """
                [databases]
                postgres = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = \(shoal.port)
                unix_socket_dir = \(shoal.directory)
                auth_type = scram-sha-256
                auth_file = \(shoal.directory)/userlist.txt
                admin_users = postgres
                logfile = \(shoal.logPath)
                pool_mode = transaction
                default_pool_size = \(poolSize)
                """
            try ini.write(toFile: configPath, atomically: true, encoding: .utf8)
            try "\"postgres\" \"\(TestPostgres.password)\"\n".write(toFile: "\(shoal.directory)/userlist.txt", atomically: true, encoding: .utf8)
        }
        func concurrentSleepers(expecting: Int) async throws -> Int {
            // Three clients sleep at once; count the server connections Shoal opened for them.
            let clients = try (0..<3).map { _ in try PQConnection(shoal.conninfo) }
            let tasks = clients.map { client in background { try client.query("select pg_sleep(3)") } }
            // Watch while they sleep: the most servers seen active at once (logins take a moment in debug builds).
            let console = try PQConnection(shoal.consoleConninfo())
            var most = 0, mostInServers = 0
            for _ in 0..<25 where most < expecting {
                try await Task.sleep(nanoseconds: 100_000_000)
                // SHOW POOLS first: while the sleepers run the count only grows, so SHOW SERVERS right after agrees.
                most = max(most, Int(try console.query("SHOW POOLS").first { $0[0] == "postgres" }?[6] ?? "") ?? 0) // sv_active
                mostInServers = max(mostInServers, try console.query("SHOW SERVERS").filter { $0[4] == "active" }.count)
            }
            for task in tasks { _ = try await task.value() }
            #expect(most == mostInServers, "SHOW POOLS and SHOW SERVERS agree")
            return most
        }
        let console = try PQConnection(shoal.consoleConninfo())
        #expect(try await concurrentSleepers(expecting: 1) == 1)
        try writeConfig(poolSize: 3)
        try console.query("RELOAD")
        #expect(try console.query("SHOW DATABASES").first { $0[0] == "postgres" }?[5] == "3")
        #expect(try await concurrentSleepers(expecting: 3) == 3)
        // SET changes it live too; SHOW CONFIG shows it.
        try console.query("SET default_pool_size = 5")
        #expect(try console.query("SHOW CONFIG").first { $0[0] == "default_pool_size" }?[1] == "5")
        // A broken config keeps the running one and says why.
        try "[pgbouncer]\ndefault_pool_size = lots\n".write(toFile: configPath, atomically: true, encoding: .utf8)
        #expect(throws: PQError.self) { try console.query("RELOAD") }
        #expect(shoal.log.contains("invalid value \"lots\" for parameter default_pool_size"), "\(shoal.log.suffix(800))")
        #expect(try PQConnection(shoal.conninfo).scalar("select 'kept'") == "kept")
    }
}

/// A blocking libpq call run off the test's task, awaited later. Each call gets its own thread: Dispatch's
/// global queue runs about one blocking item per core on Linux and adds threads for blocked ones only after a
/// delay, so on two cores a third concurrent call could start seconds late (a flaky "3 at once" in CI).
final class BackgroundCall<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<T, Error>?
    private var continuation: CheckedContinuation<T, Error>?

    init(_ body: @escaping () throws -> T) {
        let thread = Thread {
            let outcome = Result { try body() }
            self.lock.lock()
            self.result = outcome
            let waiting = self.continuation
            self.lock.unlock()
            waiting?.resume(with: outcome)
        }
        thread.start()
    }

    var isDone: Bool { lock.lock(); defer { lock.unlock() }; return result != nil }

    func value() async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            lock.lock()
            if let result {
                lock.unlock()
                continuation.resume(with: result)
            } else {
                self.continuation = continuation
                lock.unlock()
            }
        }
    }
}

func background<T>(_ body: @escaping () throws -> T) -> BackgroundCall<T> { BackgroundCall(body) }

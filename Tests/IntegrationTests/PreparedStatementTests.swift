import Foundation
import Testing

/// Named protocol-level prepared statements in transaction mode, with more clients than server connections.
@Suite(.serialized) struct PreparedStatementTests {
    @Test func pgbenchPreparedWithMoreClientsThanServers() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 3 }
        defer { Task { await shoal.stop() } }
        let run = try shoal.pgbench(script: "\\set n random(1, 100000)\nSELECT :n::int + 1;\nSELECT :n::text || 'x';\n",
                                    ["-n", "-M", "prepared", "-c", "12", "-j", "2", "-t", "150"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("number of transactions actually processed: 1800"), "\(run.stdout)")
        #expect(run.stdout.contains("number of failed transactions: 0"), "\(run.stdout)")
    }

    @Test func withoutTrackingPreparedStatementsBreakAsInOldPgBouncer() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 3
            $0.maxPreparedStatements = 0
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let run = try shoal.pgbench(script: "\\set n random(1, 100000)\nSELECT :n::int + 1;\n",
                                    ["-n", "-M", "prepared", "-c", "12", "-j", "2", "-t", "50"])
        // Twelve clients each prepare P0_0 once on three servers, so at least nine Parses meet a server that has the
        // name already. pgbench only logs that error and goes on (the statement there has the same text), so whether
        // a later Execute also fails with "does not exist" depends on timing; the duplicate never does.
        let broke = run.stderr.contains("already exists") || run.stderr.contains("does not exist")
        #expect(broke, "stdout:\n\(run.stdout)\nstderr:\n\(run.stderr)")
        // As in PgBouncer, parses and binds are counted only while statements are tracked (issue 16).
        let totals = try shoal.console("SHOW STATS_TOTALS").stdout
        let row = try #require(totals.split(separator: "\n").first { $0.hasPrefix("postgres|") }, "\(totals)").split(separator: "|")
        #expect(row[9] == "0" && row[10] == "0" && row[11] == "0", "\(totals)")
    }

    @Test func psycopgWithPrepareThresholdZero() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/prepared_psycopg.py").path
        let run = try ProcessRunner.run("python3", [script, shoal.conninfo, "8", "40"])
        #expect(run.status == 0 && run.stdout.contains("OK 8"), "\(run.stdout)\(run.stderr)")
    }

    @Test func asyncpgWithItsStatementCache() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/prepared_asyncpg.py").path
        let dsn = "postgresql://postgres:\(TestPostgres.password)@127.0.0.1:\(shoal.port)/postgres"
        let run = try ProcessRunner.run("python3", [script, dsn, "8", "30"])
        #expect(run.status == 0 && run.stdout.contains("OK 8"), "\(run.stdout)\(run.stderr)")
    }

    @Test func pipelinesWithErrorsMidBatchAnswerAsPostgresDoes() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/prepared_pipeline.py").path
        let direct = try ProcessRunner.run("python3", [script, "host=127.0.0.1 port=\(TestPostgres.shared.port) user=postgres dbname=postgres password=\(TestPostgres.password)"])
        #expect(direct.status == 0, "\(direct.stderr)")
        // Through Shoal, with another client busy so statements meet servers that lack them.
        let busy = try PQConnection(shoal.conninfo)
        let noise = background { for _ in 0..<200 { _ = try busy.scalar("select 1") } }
        let pooled = try ProcessRunner.run("python3", [script, shoal.conninfo])
        _ = try await noise.value()
        #expect(pooled.status == 0, "\(pooled.stderr)")
        #expect(pooled.stdout == direct.stdout, "through Shoal:\n\(pooled.stdout)\ndirect:\n\(direct.stdout)")
        #expect(direct.stdout.contains("0 division: DivisionByZero") && direct.stdout.contains("5 after: 6"))
    }

    @Test func phpPrepareAndExecute() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let results = try await shoal.runPHPWorkers("prepared_php.php", workers: 4)
        for result in results { #expect(result.status == 0 && result.stdout == "OK\n", "\(result.stderr)") }
    }

    @Test func aNameDefinedTwiceGetsPostgresOwnErrorAndUnknownNamesToo() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        try client.prepare("q", "SELECT $1::int + 1")
        do {
            try client.prepare("q", "SELECT 2")
            Issue.record("a second Parse of the same name succeeded")
        } catch let error as PQError {
            #expect(error.sqlState == "42P05" && error.message.contains("already exists"), "\(error)")
        }
        #expect(try client.executePrepared("q", ["41"]) == "42", "the first definition still stands")
        #expect(shoal.log.contains("prepared statement 'q' was already prepared"), "PgBouncer's line: \(shoal.log.suffix(400))")
        do {
            _ = try client.executePrepared("never_prepared", [])
            Issue.record("an unknown statement executed")
        } catch let error as PQError {
            #expect(error.sqlState == "26000", "\(error)")
        }
        // DEALLOCATE ALL forgets them all.
        try client.query("DEALLOCATE ALL")
        #expect(throws: PQError.self) { _ = try client.executePrepared("q", ["1"]) }
        try client.prepare("q", "SELECT $1::int * 10")
        #expect(try client.executePrepared("q", ["4"]) == "40")
    }

    @Test func serverSideStatementsStayBoundedWhateverTheClientPrepares() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.maxPreparedStatements = 50
        }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        for index in 0..<3_000 {
            try client.prepare("s\(index)", "SELECT \(index)")
        }
        // Every statement still works (re-prepared on demand), and the server never holds more than 50.
        #expect(try client.executePrepared("s7", []) == "7")
        #expect(try client.executePrepared("s2999", []) == "2999")
        let onServer = Int(try client.scalar("select count(*) from pg_prepared_statements") ?? "") ?? -1
        #expect(onServer > 0 && onServer <= 50, "\(onServer) statements on the server")
    }

    /// issue 15: what one client keeps is bounded (max_client_prepared_statements, least recently used out). A
    /// forgotten name fails as PostgreSQL fails an unknown one, the session goes on, and the log says it once.
    @Test func aClientsOwnStatementsAreBoundedAndAForgottenOneFailsCleanly() async throws {
        let shoal = try await ShoalInstance { $0.maxClientPreparedStatements = 5 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        for index in 0..<8 { try client.prepare("s\(index)", "SELECT \(index)") }
        #expect(try client.executePrepared("s7", []) == "7")
        #expect(try client.executePrepared("s3", []) == "3")
        do {
            _ = try client.executePrepared("s0", [])
            Issue.record("s0 should have been forgotten")
        } catch {
            #expect("\(error)".contains("prepared statement \"s0\" does not exist"), "\(error)")
        }
        #expect(try client.scalar("select 'still here'") == "still here")
        #expect(shoal.log.components(separatedBy: "more prepared statements than max_client_prepared_statements (5)").count == 2, "\(shoal.log)")
    }

    /// issue 16: `SET max_prepared_statements` (and RELOAD) reach clients already connected, at their next
    /// transaction, as PgBouncer applies the key at once; while tracking is off the parse counters stay still.
    @Test func setMaxPreparedStatementsReachesConnectedClients() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let console = try PQConnection(shoal.consoleConninfo())
        func clientParses() throws -> String? {
            try console.query("SHOW STATS_TOTALS").first { $0[0] == "postgres" }?[9]
        }
        let client = try PQConnection(shoal.conninfo)
        try client.prepare("tracked", "SELECT 1")
        func onServer(_ name: String) throws -> String? {
            try client.scalar("select count(*) from pg_prepared_statements where name = $1", [name])
        }
        #expect(try onServer("tracked") == "0", "tracked: prepared under Shoal's name")
        // Every Parse counts while tracking is on (PQexecParams sends an unnamed one too).
        let before = Int(try clientParses() ?? "") ?? -1
        #expect(before >= 2)
        try console.query("SET max_prepared_statements = 0")
        // The same connection, after the SET: its Parse reaches the server under its own name, uncounted.
        try client.prepare("untracked", "SELECT 2")
        #expect(try onServer("untracked") == "1")
        #expect(Int(try clientParses() ?? "") == before)
        try console.query("SET max_prepared_statements = 100")
        try client.prepare("tracked_again", "SELECT 3")
        #expect(try onServer("tracked_again") == "0")
        #expect(try client.executePrepared("tracked_again", []) == "3")
        #expect(Int(try clientParses() ?? "") ?? 0 > before)
    }
}

import Foundation
import Testing

/// Moodle's four transaction-pooling failures (held cursors, session advisory locks, temp tables, session SET),
/// replayed with its real statements through libpq, many clients on a small pool — with pinning on (no error,
/// no foreign row, nothing left behind) and off (PgBouncer's behaviour, so the tests can fail).
@Suite(.serialized) struct SessionStateTests {
    struct Outcome {
        var errors: [String] = []
        var foreignRows = 0
    }

    /// Runs `body(clientNumber)` for `clients` libpq clients at once, each on its own thread, collecting failures.
    func concurrently(_ clients: Int, _ body: @escaping (Int) throws -> Int) async -> Outcome {
        let calls = (0..<clients).map { number in background { () -> Result<Int, Error> in Result { try body(number) } } }
        var outcome = Outcome()
        for call in calls {
            switch try? await call.value() {
            case .success(let foreign): outcome.foreignRows += foreign
            case .failure(let error): outcome.errors.append("\(error)")
            case nil: outcome.errors.append("did not finish")
            }
        }
        return outcome
    }

    /// Moodle's get_recordset with the default fetchbuffersize: DECLARE … WITH HOLD (pg_query_params), FETCH 100000
    /// (here 100, so several fetches), CLOSE — three autocommit statements. Rows carry their owner's number.
    func heldCursorRequest(_ conninfo: String, client: Int, rounds: Int) throws -> Int {
        let connection = try PQConnection(conninfo)
        var foreign = 0
        for _ in 0..<rounds {
            try connection.query("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT $1::int AS owner, g FROM generate_series(1, 250) g", ["\(client)"])
            var seen = 0
            while true {
                let rows = try connection.query("FETCH 100 FROM crs1")
                if rows.isEmpty { break }
                foreign += rows.filter { $0[0] != "\(client)" }.count
                seen += rows.count
            }
            try connection.query("CLOSE crs1")
            if seen != 250 { throw TestFailure("client \(client) fetched \(seen) rows, not 250") }
        }
        return foreign
    }

    @Test func heldCursorsStayWithTheirClient() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 4 }
        defer { Task { await shoal.stop() } }
        let outcome = await concurrently(12) { try self.heldCursorRequest(shoal.conninfo, client: $0, rounds: 5) }
        #expect(outcome.errors.isEmpty, "\(outcome.errors.prefix(3))")
        #expect(outcome.foreignRows == 0)
        let pools = try PQConnection(shoal.conninfo).query("select count(*) from pg_cursors")
        #expect(pools.first?.first == "0")
    }

    @Test func withoutPinningHeldCursorsBreakAsInPgBouncer() async throws {
        // Two Moodle requests interleaved on one server connection, as transaction pooling allows.
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.pinSessionState = false
        }
        defer { Task { await shoal.stop() } }
        let first = try PQConnection(shoal.conninfo), second = try PQConnection(shoal.conninfo)
        try first.query("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT 'first request' FROM generate_series(1, 3)")
        #expect(throws: PQError.self) { try second.query("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT 'second request'") }
        // Worse: the second request reads the first one's rows.
        #expect(try second.scalar("FETCH 1 FROM crs1") == "first request")
    }

    @Test func withoutPinningLocksTempTablesAndSetsGoAstrayAsInPgBouncer() async throws {
        // One EventLoop and a pool of two, so which server each statement lands on is certain.
        let shoal = try await ShoalInstance(threads: 1) {
            $0.defaultPoolSize = 2
            $0.pinSessionState = false
        }
        defer { Task { await shoal.stop() } }
        let moodle = try PQConnection(shoal.conninfo), other = try PQConnection(shoal.conninfo)
        #expect(try moodle.scalar("SELECT pg_try_advisory_lock(7, 1)") == "t")
        try moodle.query("CREATE TEMPORARY TABLE mdl_temp_report (owner int)")
        try other.query("BEGIN") // takes the server that holds the lock and the table
        #expect(try moodle.scalar("SELECT pg_advisory_unlock(7, 1)") == "f", "the unlock ran where the lock is not held")
        #expect(throws: PQError.self) { try moodle.query("INSERT INTO mdl_temp_report VALUES (1)") }
        try other.query("COMMIT")
        try moodle.query("SET statement_timeout = 4321")
        let leaked = (0..<4).contains { _ in (try? other.scalar("SHOW statement_timeout")) == "4321ms" }
        #expect(leaked, "a session SET reaches another client")
    }

    @Test func advisoryLocksAreReleasedWhereTheyWereTaken() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 3 }
        let outcome = await concurrently(10) { client in
            let connection = try PQConnection(shoal.conninfo)
            for round in 0..<5 {
                // Moodle's postgres_lock_factory: try-lock, work in other statements, unlock.
                guard try connection.scalar("SELECT pg_try_advisory_lock($1::int, $2::int)", ["\(client)", "\(round)"]) == "t" else {
                    throw TestFailure("lock \(client)/\(round) not obtained")
                }
                _ = try connection.scalar("SELECT count(*) FROM pg_class")
                guard try connection.scalar("SELECT pg_advisory_unlock($1::int, $2::int)", ["\(client)", "\(round)"]) == "t" else {
                    throw TestFailure("unlock \(client)/\(round) landed on a server that does not hold it")
                }
            }
            // A lock that was not obtained pins nothing: the probe finds no lock and lets the server go.
            _ = try connection.query("SELECT pg_try_advisory_lock(1) WHERE false")
            return 0
        }
        #expect(outcome.errors.isEmpty, "\(outcome.errors.prefix(3))")
        // The clients are gone, their servers are still open in the pool: none holds a lock.
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try TestPostgres.shared.psql("select count(*) from pg_locks where locktype = 'advisory'") == "0")
        await shoal.stop()
    }

    @Test func temporaryTablesAreOnlyEverSeenByTheirClient() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 3 }
        defer { Task { await shoal.stop() } }
        let outcome = await concurrently(10) { client in
            let connection = try PQConnection(shoal.conninfo)
            var foreign = 0
            for _ in 0..<5 {
                try connection.query("CREATE TEMPORARY TABLE mdl_temp_report (owner int)")
                try connection.query("INSERT INTO mdl_temp_report VALUES ($1::int)", ["\(client)"])
                let rows = try connection.query("SELECT owner FROM mdl_temp_report")
                foreign += rows.filter { $0[0] != "\(client)" }.count
                try connection.query("DROP TABLE mdl_temp_report")
            }
            return foreign
        }
        #expect(outcome.errors.isEmpty, "\(outcome.errors.prefix(3))")
        #expect(outcome.foreignRows == 0)
    }

    @Test func sessionSetsFollowTheirClientAndNobodyElse() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let moodle = try PQConnection(shoal.conninfo)
        let other = try PQConnection(shoal.conninfo)
        // Moodle's session handler, outside any transaction.
        try moodle.query("SET statement_timeout = 4321")
        for _ in 0..<3 {
            #expect(try other.scalar("SHOW statement_timeout") == "0", "the setting leaked to another client")
            #expect(try moodle.scalar("SHOW statement_timeout") == "4321ms")
        }
        try moodle.query("SET search_path TO public, pg_catalog")
        #expect(try moodle.scalar("SHOW search_path") == "public, pg_catalog")
        #expect(try other.scalar("SHOW search_path") == "\"$user\", public")
        try moodle.query("RESET statement_timeout")
        #expect(try moodle.scalar("SHOW statement_timeout") == "0")
        // Nothing pinned for a SET: one server served both clients throughout.
        #expect(try PQConnection(shoal.consoleConninfo()).query("SHOW SERVERS").count == 1)
    }

    @Test func maxPinnedClientsRefusesAndShowClientsSaysWhy() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 2
            $0.maxPinnedClients = 1
            $0.adminUsers = ["postgres"]
            $0.pinWarnTimeout = 0.3
        }
        defer { Task { await shoal.stop() } }
        let holder = try PQConnection(shoal.conninfo)
        try holder.query("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT 1")
        try holder.query("SELECT 'a transaction later, still pinned'")
        let clients = try PQConnection(shoal.consoleConninfo()).query("SHOW CLIENTS")
        #expect(clients.contains { $0[2] == "postgres" && $0.last == "held_cursor" }, "\(clients)")
        let second = try PQConnection(shoal.conninfo)
        do {
            try second.query("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT 2")
            Issue.record("a second pin past max_pinned_clients = 1 was allowed")
        } catch let error as PQError {
            #expect(error.sqlState == "53400" && error.message.contains("max_pinned_clients"), "\(error)")
        }
        // The refused client is still usable, and the holder's cursor is intact.
        #expect(try second.scalar("select 'still usable'") == "still usable")
        try await Task.sleep(nanoseconds: 800_000_000)
        #expect(shoal.log.contains("client pinned to its server for") && shoal.log.contains("DECLARE crs1 NO SCROLL CURSOR WITH HOLD"),
                "pin_warn_timeout: \(shoal.log.suffix(400))")
        #expect(try holder.scalar("FETCH 1 FROM crs1") == "1")
        try holder.query("CLOSE crs1")
        try await Task.sleep(nanoseconds: 100_000_000)
        let after = try PQConnection(shoal.consoleConninfo()).query("SHOW CLIENTS")
        #expect(!after.contains { $0.last == "held_cursor" }, "unpinned after CLOSE: \(after)")
    }

    @Test func moodleThroughPHPWithTwentyWorkersOnAPoolOfFour() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 4 }
        defer { Task { await shoal.stop() } }
        let results = try await shoal.runPHPWorkers("moodle_session_state.php", workers: 20, environment: ["ROUNDS": "5"])
        for result in results { #expect(result.status == 0 && result.stdout == "OK 5\n", "\(result.stderr)") }
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try TestPostgres.shared.psql("select count(*) from pg_locks where locktype = 'advisory'") == "0")
    }

    /// The issue's bar: held cursors, advisory locks, temp tables and session SETs from 50 clients through a
    /// pool of 4, with no error and no leak; prints the most pinned clients seen at once.
    @Test func fiftyMoodleClientsOnAPoolOfFour() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 4
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let finished = NSLock()
        nonisolated(unsafe) var done = false
        let sampler = background { () -> (Int, Int) in
            let console = try PQConnection(shoal.consoleConninfo())
            var most = 0, samples = 0
            while true {
                finished.lock(); let stop = done; finished.unlock()
                if stop { break }
                let pinned = try console.query("SHOW CLIENTS").filter { row in (row.last ?? nil).map { !$0.isEmpty } ?? false }.count
                most = max(most, pinned)
                samples += 1
                usleep(20_000)
            }
            return (most, samples)
        }
        let outcome = await concurrently(50) { client in
            let connection = try PQConnection(shoal.conninfo)
            // Never a whole number of seconds, so SHOW answers in ms.
            try connection.query("SET statement_timeout = \(20_001 + client)")
            var foreign = 0
            for round in 0..<3 {
                foreign += try self.heldCursorRequest(shoal.conninfo, client: client, rounds: 1)
                guard try connection.scalar("SELECT pg_try_advisory_lock(7, $1::int)", ["\(client * 10 + round)"]) == "t" else { throw TestFailure("lock") }
                try connection.query("CREATE TEMP TABLE mdl_temp (owner int)")
                try connection.query("INSERT INTO mdl_temp VALUES ($1::int)", ["\(client)"])
                foreign += try connection.query("SELECT owner FROM mdl_temp").filter { $0[0] != "\(client)" }.count
                try connection.query("DROP TABLE mdl_temp")
                guard try connection.scalar("SELECT pg_advisory_unlock(7, $1::int)", ["\(client * 10 + round)"]) == "t" else { throw TestFailure("unlock") }
                guard try connection.scalar("SHOW statement_timeout") == "\(20_001 + client)ms" else { throw TestFailure("statement_timeout") }
            }
            return foreign
        }
        finished.withLock { done = true }
        #expect(outcome.errors.isEmpty, "\(outcome.errors.count) errors: \(outcome.errors.prefix(3))")
        #expect(outcome.foreignRows == 0)
        let (most, samples) = try await sampler.value()
        print("fifty clients, pool of 4: at most \(most) clients pinned at once (\(samples) samples of SHOW CLIENTS)")
        #expect(most <= 4)
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try TestPostgres.shared.psql("select count(*) from pg_locks where locktype = 'advisory'") == "0")
    }
}

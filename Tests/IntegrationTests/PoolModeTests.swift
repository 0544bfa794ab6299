import Foundation
import Testing

@Suite(.serialized) struct PoolModeTests {
    @Test func sessionModeKeepsTheServerAndResetsItOnRelease() async throws {
        let shoal = try await ShoalInstance {
            $0.poolMode = .session
            $0.defaultPoolSize = 1
        }
        defer { Task { await shoal.stop() } }
        do {
            let first = try PQConnection(shoal.conninfo)
            try first.query("set work_mem = '7MB'")
            try first.query("prepare p as select 41 + 1")
            #expect(try first.scalar("execute p") == "42")
            #expect(try first.scalar("show work_mem") == "7MB")
        }
        // Same single server, after DISCARD ALL: nothing of the first session is left.
        let second = try PQConnection(shoal.conninfo)
        #expect(try second.scalar("show work_mem") != "7MB")
        #expect(throws: PQError.self) { try second.query("execute p") }
    }

    @Test func statementModeRefusesTransactionBlocks() async throws {
        let shoal = try await ShoalInstance { $0.poolMode = .statement }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 'single statements are fine'") == "single statements are fine")
        do {
            try client.query("begin")
            try client.query("select 1")
            Issue.record("a transaction block was allowed in statement mode")
        } catch let error as PQError {
            #expect(error.message.contains("transaction blocks not allowed in statement pooling mode"))
        }
        #expect(try PQConnection(shoal.conninfo).scalar("select 1") == "1")
    }

    @Test func connectQueryRunsOnEveryNewServer() async throws {
        try TestPostgres.shared.psql("drop table if exists server_logins; create table server_logins (at timestamptz default now(), pid int default pg_backend_pid())")
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 2
            $0.databases["postgres"]?.connectQuery = "insert into server_logins default values"
        }
        defer { Task { await shoal.stop() } }
        let a = try PQConnection(shoal.conninfo)
        let b = try PQConnection(shoal.conninfo)
        try a.query("begin")
        try b.query("begin")
        try a.query("commit")
        try b.query("commit")
        #expect(try TestPostgres.shared.psql("select count(distinct pid) from server_logins") == "2")
    }

    /// issue 16: PHP's connect-per-request, one request at a time, lands on both EventLoops (a listener per loop);
    /// each used to dial a server of its own when the other loop's was idle — two logins where PgBouncer makes
    /// one. An idle server on another loop now serves before a new login (cross_thread_reuse_delay = 0).
    @Test func oneRequestAtATimeCostsOneServerLoginWhateverLoopItLandsOn() async throws {
        try TestPostgres.shared.psql("drop table if exists serial_logins; create table serial_logins (pid int default pg_backend_pid())")
        let shoal = try await ShoalInstance(threads: 2) {
            $0.databases["postgres"]?.connectQuery = "insert into serial_logins default values"
        }
        defer { Task { await shoal.stop() } }
        // 24 connections from new ephemeral ports: all on one of two loops about once in 8 million runs.
        for _ in 0..<24 { #expect(try PQConnection(shoal.conninfo).scalar("select 1") == "1") }
        #expect(try TestPostgres.shared.psql("select count(*) from serial_logins") == "1", "\(shoal.log.suffix(800))")
    }

    /// server_check_query runs when a server idle for server_check_delay is handed out, as in PgBouncer (it used to
    /// run from the janitor on every idle server every server_check_delay, and never at reuse). A check that
    /// fails closes that server, and the client is served by a new one instead of getting an error.
    @Test func checkQueryRunsAtReuseAfterServerCheckDelay() async throws {
        try TestPostgres.shared.psql("""
            drop table if exists check_log, check_gate, check_logins;
            create table check_log (at timestamptz default now());
            create table check_gate (ok bool); insert into check_gate values (true);
            create table check_logins (pid int default pg_backend_pid());
            create or replace function shoal_check() returns int language plpgsql as $$
            begin
              if not (select ok from check_gate) then raise exception 'gate closed'; end if;
              insert into check_log default values;
              return 1;
            end $$;
            """)
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.serverCheckDelay = 0.5
            $0.serverCheckQuery = "select shoal_check()"
            $0.databases["postgres"]?.connectQuery = "insert into check_logins default values"
        }
        defer { Task { await shoal.stop() } }
        func count(_ table: String) throws -> String { try TestPostgres.shared.psql("select count(*) from \(table)") }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 'first'") == "first")
        try await Task.sleep(nanoseconds: 1_500_000_000)
        #expect(try count("check_log") == "0", "an idle server is not checked until it is handed out")
        #expect(try client.scalar("select 'after a check'") == "after a check")
        #expect(try count("check_log") == "1")
        #expect(try client.scalar("select 'soon after'") == "soon after")
        #expect(try count("check_log") == "1", "idle less than server_check_delay: no check")
        #expect(try count("check_logins") == "1")
        // The check fails: that server closes and a new one serves the client, no error.
        try TestPostgres.shared.psql("update check_gate set ok = false")
        try await Task.sleep(nanoseconds: 1_500_000_000)
        #expect(try client.scalar("select 'served anyway'") == "served anyway")
        #expect(try count("check_logins") == "2")
        #expect(shoal.log.contains("server reset or check query failed"), "\(shoal.log.suffix(600))")
    }

    /// server_fast_close (issue 16: accepted and ignored before): after RECONNECT a session idle between
    /// transactions ends at once with PgBouncer's "database configuration changed"; one inside a transaction
    /// finishes it (its COMMIT succeeds) and ends right after. Without the key, sessions run on.
    @Test func serverFastCloseEndsSessionsBetweenTransactions() async throws {
        for fastClose in [true, false] {
            let shoal = try await ShoalInstance {
                $0.poolMode = .session
                $0.adminUsers = ["postgres"]
                $0.serverFastClose = fastClose
            }
            let console = try PQConnection(shoal.consoleConninfo())
            let idle = try PQConnection(shoal.conninfo)
            #expect(try idle.scalar("select 1") == "1")
            let busy = try PQConnection(shoal.conninfo)
            try busy.query("begin")
            #expect(try busy.scalar("select 2") == "2")
            try console.query("RECONNECT postgres")
            try await Task.sleep(nanoseconds: 300_000_000)
            #expect(try busy.scalar("select 'still in the transaction'") == "still in the transaction")
            try busy.query("commit")
            if fastClose {
                #expect(throws: PQError.self) { try idle.query("select 1") }
                #expect(throws: PQError.self) { try busy.query("select 1") }
                #expect(shoal.log.contains("database configuration changed"), "\(shoal.log.suffix(500))")
            } else {
                #expect(try idle.scalar("select 'runs on'") == "runs on")
                #expect(try busy.scalar("select 'runs on'") == "runs on")
            }
            // A new session gets a new server either way.
            #expect(try PQConnection(shoal.conninfo).scalar("select 3") == "3")
            await shoal.stop()
        }
    }
}

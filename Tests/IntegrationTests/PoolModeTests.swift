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

    @Test func connectQueryRunsOnEveryNewServerAndCheckQueryOnIdleOnes() async throws {
        try TestPostgres.shared.psql("drop table if exists server_logins; create table server_logins (at timestamptz default now(), pid int default pg_backend_pid())")
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 2
            $0.serverCheckDelay = 0.5
            $0.serverCheckQuery = "select 1"
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
        // Idle past server_check_delay: the janitor checks them; they stay usable and no new server is made.
        try await Task.sleep(nanoseconds: 1_500_000_000)
        #expect(try a.scalar("select 'checked'") == "checked")
        #expect(try TestPostgres.shared.psql("select count(*) from server_logins") == "2")
        let checks = try TestPostgres.shared.psql("select count(*) from pg_stat_activity where query = 'select 1'")
        #expect(Int(checks)! >= 1)
    }
}

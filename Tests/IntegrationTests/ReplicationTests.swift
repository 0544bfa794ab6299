import Foundation
import Testing

/// Replication connections through Shoal (issue 16), as PgBouncer ≥ 1.23 passes them: `replication=database`
/// (logical) or `replication=true` (physical) gets a server of its own, started with the client's parameters,
/// held for the client's life and closed with it — never pooled, never shared.
@Suite(.serialized) struct ReplicationTests {
    func walSenders() throws -> Int {
        Int(try TestPostgres.shared.psql("select count(*) from pg_stat_activity where backend_type = 'walsender'")
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test func pgBasebackupRunsThroughShoal() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        let target = "\(shoal.directory)/basebackup"
        // -X stream: a second replication connection streams WAL while the first copies the files.
        let backup = try ProcessRunner.run("pg_basebackup", ["-d", shoal.conninfo, "-D", target, "-X", "stream", "-c", "fast", "--no-sync"],
                                           timeout: 120)
        #expect(backup.status == 0, "\(backup.stderr)")
        #expect(FileManager.default.fileExists(atPath: "\(target)/PG_VERSION"))
        #expect(FileManager.default.fileExists(atPath: "\(target)/global/pg_control"))
        #expect(shoal.log.contains("replication=yes"), "\(shoal.log.suffix(800))")
        // Each replication server went with its client: none left in Shoal, no walsender left on the server.
        try waitUntil("the walsenders are gone", timeout: 10) { try walSenders() == 0 }
        let console = try PQConnection(shoal.consoleConninfo())
        #expect(try console.query("SHOW SERVERS").isEmpty)
    }

    @Test func logicalAndPhysicalConnectionsKeepTheirOwnServer() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"]; $0.defaultPoolSize = 1 }
        defer { Task { await shoal.stop() } }
        let console = try PQConnection(shoal.consoleConninfo())
        // A pooled client holds the pool's only server in a transaction: replication servers are not pooled,
        // so they are not held up by it.
        let pooled = try PQConnection(shoal.conninfo)
        try pooled.query("begin")
        try pooled.query("select 1")
        let logical = try PQConnection(shoal.conninfo + " replication=database application_name=shoal_logical")
        let identified = try logical.query("IDENTIFY_SYSTEM")
        #expect(identified.first?[3] == "postgres", "logical replication names its database: \(identified)")
        // The client's own startup parameters reached its server; SQL works on a logical walsender.
        #expect(try logical.scalar("select application_name from pg_stat_activity where pid = pg_backend_pid()") == "shoal_logical")
        #expect(try logical.scalar("select backend_type from pg_stat_activity where pid = pg_backend_pid()") == "walsender")
        let physical = try PQConnection(shoal.conninfo + " replication=true")
        #expect(try physical.query("IDENTIFY_SYSTEM").first?[3] == nil, "physical replication has no database")
        #expect(try walSenders() == 2)
        // SHOW CLIENTS and SHOW SERVERS say which is which (PgBouncer's replication column); SHOW POOLS keeps one
        // row for postgres/postgres.
        let clients = try console.query("SHOW CLIENTS").filter { $0[2] == "postgres" }.compactMap { $0[3] }
        #expect(clients.sorted() == ["logical", "none", "physical"], "\(clients)")
        let servers = try console.query("SHOW SERVERS").compactMap { $0[3] }
        #expect(servers.sorted() == ["logical", "none", "physical"], "\(servers)")
        #expect(try console.query("SHOW POOLS").filter { $0[0] == "postgres" }.count == 1)
        try pooled.query("commit")
        _ = consume logical
        _ = consume physical
        try waitUntil("the walsenders are gone", timeout: 10) { try walSenders() == 0 }
        try waitUntil("only the pooled server is left", timeout: 10) { try console.query("SHOW SERVERS").count == 1 }
    }

    /// A logical decoding stream (CopyBoth, both directions at once) through Shoal: pg_recvlogical creates a
    /// slot and receives a committed insert, on a PostgreSQL with wal_level = logical.
    @Test func pgRecvlogicalStreamsChangesThroughShoal() async throws {
        let postgres = try TestPostgres(name: "logical", settings: ["wal_level=logical", "max_replication_slots=4"])
        defer { try? postgres.stop() }
        let shoal = try await ShoalInstance { $0.databases["postgres"]?.ports = [postgres.port] }
        defer { Task { await shoal.stop() } }
        let slot = ["-d", shoal.conninfo, "--slot", "shoal_slot"]
        let created = try ProcessRunner.run("pg_recvlogical", slot + ["--create-slot", "-P", "test_decoding"], timeout: 60)
        #expect(created.status == 0, "\(created.stderr)")
        try postgres.psql("create table decoded (v text); insert into decoded values ('through shoal')")
        let end = try postgres.psql("select pg_current_wal_lsn()").trimmingCharacters(in: .whitespacesAndNewlines)
        let output = "\(shoal.directory)/changes.txt"
        let streamed = try ProcessRunner.run("pg_recvlogical", slot + ["--start", "--no-loop", "--endpos", end, "-f", output], timeout: 60)
        #expect(streamed.status == 0, "\(streamed.stderr)")
        let changes = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(changes.contains("table public.decoded: INSERT: v[text]:'through shoal'"), "\(changes)")
        _ = try ProcessRunner.run("pg_recvlogical", slot + ["--drop-slot"], timeout: 60)
    }

    @Test func aReplicationValuePostgresRefusesIsRefused() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        let answer = refusal(shoal.conninfo + " replication=maybe")
        #expect(answer.contains("invalid value for parameter \"replication\": \"maybe\""), "\(answer)")
        // replication=false is an ordinary client.
        #expect(try PQConnection(shoal.conninfo + " replication=false").scalar("select 1") == "1")
    }
}

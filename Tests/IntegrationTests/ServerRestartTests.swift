import Configuration
import Foundation
import Testing

/// PostgreSQL restarting under Shoal, as it does at every minor-version upgrade or failover of a single
/// instance: clients that need a server meanwhile wait (up to query_wait_timeout) and are served once it is
/// back, as with PgBouncer — they do not get "connect failed" at once.
@Suite(.serialized) struct ServerRestartTests {
    @Test func clientsWaitThroughARestartInsteadOfFailing() async throws {
        let postgres = try TestPostgres(name: "restart")
        defer { try? postgres.stop(mode: "immediate") }
        let shoal = try await ShoalInstance { config in
            var entry = DatabaseEntry(name: "postgres")
            entry.hosts = [postgres.address]
            entry.ports = [postgres.port]
            entry.dbname = "postgres"
            config.databases = ["postgres": entry]
            config.serverLoginRetry = 1
            config.queryWaitTimeout = 30
        }
        defer { Task { await shoal.stop() } }
        // A pool that has served before (its welcome is known), then the server goes away.
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("SELECT 1") == "1")
        try postgres.stop(mode: "fast")
        let started = Date()
        let waiting = background { () -> String in
            do { return try client.scalar("SELECT 'served after the restart'") ?? "" } catch { return "\(error)" }
        }
        let newcomer = background { () -> String in
            do { return try PQConnection(shoal.conninfo).scalar("SELECT 'new client served'") ?? "" } catch { return "\(error)" }
        }
        sleep(2)
        try postgres.start()
        #expect(try await waiting.value() == "served after the restart")
        #expect(try await newcomer.value() == "new client served")
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 2 && waited < 20, "waited \(waited) s")
    }

    /// issue 16: after RECONNECT, a server login that now fails (the password was changed under Shoal) fails the
    /// waiting client at once, even though an old server is still lent out mid-transaction — that server closes at
    /// its release and serves nobody. The waiter used to hang until the old server came back.
    @Test func aFailingLoginAfterReconnectFailsWaitersWhileAnOldServerIsBusy() async throws {
        try TestPostgres.shared.psql("drop role if exists rotating; create role rotating login password 'one'")
        let shoal = try await ShoalInstance {
            $0.addEntry("fixed") { $0.user = "rotating"; $0.password = "one" }
            $0.adminUsers = ["postgres"]
            $0.defaultPoolSize = 2
            $0.queryWaitTimeout = 30
        }
        defer { Task { await shoal.stop() } }
        let fixed = shoal.conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=fixed")
        let holder = try PQConnection(fixed)
        try holder.query("begin")
        #expect(try holder.scalar("select current_user") == "rotating")
        try TestPostgres.shared.psql("alter role rotating password 'two'")
        try PQConnection(shoal.consoleConninfo()).query("RECONNECT fixed")
        let waiter = try PQConnection(fixed)
        let started = Date()
        do {
            _ = try waiter.query("select 1")
            Issue.record("served through a login that must fail")
        } catch let error as PQError {
            #expect(error.message.contains("password authentication failed for user \"rotating\""), "\(error.message)")
        }
        #expect(Date().timeIntervalSince(started) < 10, "failed at once, not after query_wait_timeout (30 s)")
        // The old server finishes its transaction, then closes (RECONNECT).
        #expect(try holder.scalar("select 'old server'") == "old server")
        try holder.query("commit")
    }
}

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
}

import Foundation
import LoadHarness
import Testing

/// The load harness against a real Shoal and PostgreSQL: the PHP pattern end to end, and bad targets refused.
@Suite(.serialized) struct LoadHarnessIntegrationTests {
    @Test func phpRequestsThroughShoalCompleteWithoutErrors() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 4 }
        defer { Task { await shoal.stop() } }
        try SchemaInit.run(conninfo: shoal.conninfo, users: 500, courses: 5)
        for workload in [Workload.phpRequest(users: 500, courses: 5, persistent: false),
                         Workload.phpRequest(users: 500, courses: 5, persistent: true)] {
            let runner = LoadRunner(name: "shoal", conninfo: shoal.conninfo, workload: workload, mode: .closed(users: 30))
            let stats = runner.run(seconds: 2) { _, _ in }
            #expect(stats.requests > 0, "\(workload.name)")
            #expect(stats.errors.isEmpty, "\(workload.name): \(stats.errors)")
            #expect(stats.statements >= stats.requests * workload.statements.count)
        }
        // Every logged view was committed: one row per completed request at least.
        let logged = try TestPostgres.shared.psql("select count(*) from mdl_logstore_standard_log")
        #expect(Int(logged)! > 0)
    }

    @Test func openLoopKeepsTheOfferedRate() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        try SchemaInit.run(conninfo: shoal.conninfo, users: 500, courses: 5)
        let runner = LoadRunner(name: "shoal", conninfo: shoal.conninfo, workload: .selectOnly(users: 500), mode: .open(rate: 200, maxInFlight: 50))
        let stats = runner.run(seconds: 2) { _, _ in }
        #expect(stats.requests >= 300 && stats.requests <= 420, "\(stats.requests) requests at 200/s for 2 s")
    }

    @Test func preflightNamesTheProblem() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        let wrong = SchemaInit.preflight(conninfo: "host=127.0.0.1 port=\(shoal.port) dbname=postgres user=postgres password=nope")
        #expect(wrong?.contains("password authentication failed for user \"postgres\"") == true)
        let nobody = SchemaInit.preflight(conninfo: "host=127.0.0.1 port=\(freePort()) dbname=postgres user=postgres connect_timeout=2")
        #expect(nobody?.contains("refused") == true)
        #expect(SchemaInit.preflight(conninfo: shoal.conninfo) == nil)
    }
}

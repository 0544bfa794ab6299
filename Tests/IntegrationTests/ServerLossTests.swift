import Foundation
import Testing

/// A server connection dies under a client in transaction pooling (failover, crash, pg_terminate_backend):
/// the client gets an error, its transaction stays failed until it ends it, and its connection goes on.
@Suite(.serialized) struct ServerLossTests {
    func terminate(_ pid: String) throws {
        #expect(try TestPostgres.shared.psql("SELECT pg_terminate_backend(\(pid))") == "t")
    }

    @Test func aTransactionLostWithItsServerFailsUntilRollbackAndTheClientGoesOn() async throws {
        // One server: every transaction of the client lands on it, so the terminated backend is the one it uses.
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 1 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        try client.query("CREATE TABLE IF NOT EXISTS lost_rows (n int)")
        try client.query("TRUNCATE lost_rows")

        // Idle inside the block when the server goes: the next statement hears of it, then the block is failed.
        try client.query("BEGIN")
        try client.query("INSERT INTO lost_rows VALUES (1)")
        try terminate(try client.scalar("SELECT pg_backend_pid()")!)
        usleep(200_000)
        #expect(throws: PQError.self) { try client.query("INSERT INTO lost_rows VALUES (2)") }
        do { try client.query("INSERT INTO lost_rows VALUES (3)") } catch let error as PQError {
            #expect(error.sqlState == "25P02", "\(error)")
        }
        try client.query("COMMIT") // answered ROLLBACK, as PostgreSQL answers COMMIT of a failed transaction
        #expect(try client.scalar("SELECT count(*) FROM lost_rows") == "0")

        // In flight: the statement gets the error, ROLLBACK ends the block, the same connection goes on.
        try client.query("BEGIN")
        try client.query("INSERT INTO lost_rows VALUES (4)")
        let pid = try client.scalar("SELECT pg_backend_pid()")!
        let killer = background { usleep(300_000); try self.terminate(pid) }
        do {
            try client.query("SELECT pg_sleep(5)")
            Issue.record("the statement on the terminated server succeeded")
        } catch let error as PQError {
            #expect(error.sqlState == "08006" || error.sqlState == "57P01", "\(error)")
        }
        try await killer.value()
        try client.query("ROLLBACK")
        #expect(try client.scalar("SELECT count(*) FROM lost_rows") == "0")
        try client.query("INSERT INTO lost_rows VALUES (5)")
        #expect(try client.scalar("SELECT count(*) FROM lost_rows") == "1")
        // Outside a block: the statement fails, the next one runs.
        let pid2 = try client.scalar("SELECT pg_backend_pid()")!
        let killer2 = background { usleep(300_000); try self.terminate(pid2) }
        #expect(throws: PQError.self) { try client.query("SELECT pg_sleep(5)") }
        try await killer2.value()
        #expect(try client.scalar("SELECT 41 + 1") == "42")
        let log = try String(contentsOfFile: shoal.logPath, encoding: .utf8)
        #expect(log.contains("server connection lost inside a transaction: error sent, transaction failed, client kept"))
    }
}

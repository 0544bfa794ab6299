import CLibPQ
import Configuration
import Foundation
import Testing

/// One client must never reach another through a shared server connection: a server left in COPY, a setting
/// Shoal believed gone, a cancel still on its way, prepared statements another client deallocated. Each test
/// runs one EventLoop and a pool of one, so every client lands on the same server connection.
@Suite(.serialized) struct CrossClientSafetyTests {
    func singleServerShoal(_ configure: @escaping (inout ShoalConfig) -> Void = { _ in }) async throws -> ShoalInstance {
        try await ShoalInstance(threads: 1) {
            $0.defaultPoolSize = 1
            configure(&$0)
        }
    }

    /// libpq's extended-protocol COPY (PQsendQueryParams), left in copy-in by a client that goes away.
    @Test func serverLeftInCopyIsNeverReused() async throws {
        try TestPostgres.shared.psql("CREATE TABLE IF NOT EXISTS shoal_copy_left (x int)")
        let shoal = try await singleServerShoal()
        defer { Task { await shoal.stop() } }
        for _ in 0..<3 {
            let copier = try PQConnection(shoal.conninfo)
            #expect(PQsendQueryParams(copier.handle, "COPY shoal_copy_left FROM STDIN", 0, nil, nil, nil, nil, 0) == 1)
            var status = PGRES_EMPTY_QUERY
            while let result = PQgetResult(copier.handle) {
                status = PQresultStatus(result)
                PQclear(result)
                if status == PGRES_COPY_IN { break }
            }
            #expect(status == PGRES_COPY_IN)
            // copier disconnects here (PQfinish) in the middle of its COPY.
        }
        let next = try PQConnection(shoal.conninfo)
        #expect(try next.scalar("SELECT 41 + 1") == "42")
        #expect(try next.scalar("SELECT count(*) FROM shoal_copy_left") == "0")
    }

    /// A RESET inside a transaction that rolls back leaves the session's SET in force on the server.
    @Test func rolledBackResetDoesNotHideASettingFromTheNextClient() async throws {
        let shoal = try await singleServerShoal()
        defer { Task { await shoal.stop() } }
        let first = try PQConnection(shoal.conninfo)
        try first.query("SET search_path = shoal_private_schema")
        try first.query("BEGIN")
        try first.query("RESET search_path")
        try first.query("ROLLBACK")
        #expect(try first.scalar("SHOW search_path") == "shoal_private_schema")
        let second = try PQConnection(shoal.conninfo)
        #expect(try second.scalar("SHOW search_path") == "\"$user\", public")
        // And a SET inside a transaction that commits is the client's from then on.
        try second.query("BEGIN")
        try second.query("SET statement_timeout = '7s'")
        try second.query("COMMIT")
        #expect(try first.scalar("SHOW statement_timeout") == "0")
        #expect(try second.scalar("SHOW statement_timeout") == "7s")
        // A SET rolled back is forgotten: neither the client nor the next one sees it.
        try first.query("BEGIN")
        try first.query("SET work_mem = '3MB'")
        try first.query("ROLLBACK")
        #expect(try first.scalar("SHOW work_mem") == "4MB")
        #expect(try second.scalar("SHOW work_mem") == "4MB")
    }

    /// set_config(…, false) changes a setting Shoal cannot follow by name: the server is cleaned before reuse.
    @Test func setConfigForTheSessionDoesNotReachTheNextClient() async throws {
        let shoal = try await singleServerShoal()
        defer { Task { await shoal.stop() } }
        let first = try PQConnection(shoal.conninfo)
        try first.query("SELECT set_config('search_path', 'shoal_private_schema', false)")
        try first.query("SELECT set_config($1, $2, false)", ["work_mem", "3MB"])
        let second = try PQConnection(shoal.conninfo)
        #expect(try second.scalar("SHOW search_path") == "\"$user\", public")
        #expect(try second.scalar("SHOW work_mem") == "4MB")
    }

    /// A SET PostgreSQL refuses is an ordinary error; the session goes on.
    @Test func failedSetIsAnOrdinaryError() async throws {
        let shoal = try await singleServerShoal()
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(throws: PQError.self) { try client.query("SET work_mem = 'not_a_size'") }
        #expect(try client.scalar("SELECT 1") == "1")
        #expect(try client.scalar("SHOW work_mem") == "4MB")
        let other = try PQConnection(shoal.conninfo)
        #expect(try other.scalar("SELECT 2") == "2")
        #expect(try client.scalar("SELECT 3") == "3")
    }

    /// A cancel sent just as the client's transaction ends must not reach the next client's query.
    @Test func cancelInFlightAtReleaseDoesNotCancelTheNextClient() async throws {
        let shoal = try await singleServerShoal()
        defer { Task { await shoal.stop() } }
        for round in 0..<3 {
            let first = try PQConnection(shoal.conninfo)
            let second = try PQConnection(shoal.conninfo)
            try first.query("BEGIN")
            // The second client queues for the only server, with a statement long enough to be hit.
            let sleeper = background { () -> String in
                do { return try second.scalar("SELECT pg_sleep(0.6)::text || 'slept'") ?? "" } catch { return "\(error)" }
            }
            usleep(100_000)
            #expect(PQsendQuery(first.handle, "COMMIT") == 1)
            _ = first.cancel()
            while let result = PQgetResult(first.handle) { PQclear(result) }
            #expect(try await sleeper.value() == "slept", "round \(round)")
        }
    }

    /// One client's DEALLOCATE ALL / DISCARD ALL does not break another client's prepared statement.
    @Test func deallocateAllLeavesOtherClientsStatementsWorking() async throws {
        for pin in [true, false] {
            let shoal = try await singleServerShoal { $0.pinSessionState = pin }
            defer { Task { await shoal.stop() } }
            let owner = try PQConnection(shoal.conninfo)
            try owner.prepare("mine", "SELECT $1::int * 2")
            #expect(try owner.executePrepared("mine", ["21"]) == "42")
            let other = try PQConnection(shoal.conninfo)
            try other.query("DEALLOCATE ALL")
            #expect(try owner.executePrepared("mine", ["5"]) == "10", "pin_session_state \(pin)")
            try other.query("SELECT 1; DEALLOCATE ALL")
            #expect(try owner.executePrepared("mine", ["6"]) == "12", "pin_session_state \(pin)")
            try other.query("DISCARD ALL")
            #expect(try owner.executePrepared("mine", ["7"]) == "14", "pin_session_state \(pin)")
            // A DEALLOCATE ALL that fails (inside an aborted transaction) leaves the server's statements in place.
            try other.query("BEGIN")
            #expect(throws: PQError.self) { try other.query("SELECT 1/0") }
            #expect(throws: PQError.self) { try other.query("DEALLOCATE ALL") }
            try other.query("ROLLBACK")
            #expect(try owner.executePrepared("mine", ["8"]) == "16", "pin_session_state \(pin)")
            try owner.prepare("again", "SELECT $1::int * 2")
            #expect(try owner.executePrepared("again", ["9"]) == "18", "pin_session_state \(pin)")
            #expect(try other.scalar("SELECT 1") == "1")
        }
    }

    /// A client pipelining at a server that is busy (pg_sleep) is not read faster than the server reads:
    /// Shoal's memory does not follow what the client sends.
    @Test func aPipeliningClientCannotGrowShoalsMemory() async throws {
        let shoal = try await singleServerShoal { $0.authType = .trust }
        defer { Task { await shoal.stop() } }
        let client = try RawClient(port: shoal.port)
        try client.login()
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(client.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        try client.send([UInt8(ascii: "Q")] + be32(4 + 19) + Array("SELECT pg_sleep(4)".utf8) + [0])
        usleep(200_000)
        let before = residentBytes()
        // 1 MiB of 64 KiB messages the server will only look at once its pg_sleep ends (CopyData: Shoal only
        // counts them), sent again and again for up to 3 s or 300 MiB.
        let message: [UInt8] = [UInt8(ascii: "d")] + be32(4 + 65_536) + [UInt8](repeating: 120, count: 65_536)
        let chunk = Array([[UInt8]](repeating: message, count: 16).joined())
        var sent = 0
        let started = Date()
        while sent < 300 << 20 && Date().timeIntervalSince(started) < 3 {
            let count = chunk.withUnsafeBytes { Foundation.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count > 0 { sent += count }
        }
        let grown = residentBytes() - before
        client.close()
        print("pipelining client: sent \(sent >> 20) MiB, Shoal's process grew \(grown >> 20) MiB")
        // Without backpressure Shoal held all of it (about 1.1 bytes of RSS per byte sent).
        #expect(grown < 64 << 20, "RSS grew \(grown >> 20) MiB while the client sent \(sent >> 20) MiB")
        let next = try PQConnection(shoal.conninfo)
        #expect(try next.scalar("SELECT 'served'") == "served")
    }

    /// Statements far larger than Shoal holds: an unnamed Parse of 48 MiB streams through to PostgreSQL and is
    /// answered, a named one (which prepared-statement tracking would have to hold whole) is refused with 54000;
    /// Shoal's memory follows neither.
    @Test func aHugeStatementStreamsOrIsRefusedWithoutShoalHoldingIt() async throws {
        let shoal = try await singleServerShoal { $0.authType = .trust }
        defer { Task { await shoal.stop() } }
        let text = 48 << 20
        let sqlHead = Array("SELECT length('".utf8), sqlTail = Array("')".utf8) + [0]
        let fill = [UInt8](repeating: 120, count: 1 << 20)
        func sendAll(_ bytes: [UInt8], _ client: RawClient) -> Bool {
            bytes.withUnsafeBytes { Foundation.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
        }
        func parseHeader(named name: String) -> [UInt8] {
            let nameBytes = Array(name.utf8) + [0]
            return [UInt8(ascii: "P")] + be32(4 + nameBytes.count + sqlHead.count + text + sqlTail.count + 2) + nameBytes + sqlHead
        }
        let before = residentBytes()
        let streaming = try RawClient(port: shoal.port, receiveTimeout: 60)
        try streaming.login()
        #expect(sendAll(parseHeader(named: ""), streaming))
        for _ in 0..<(text >> 20) { #expect(sendAll(fill, streaming)) }
        let bindExecuteSync: [UInt8] = [UInt8(ascii: "B"), 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]
            + [UInt8(ascii: "E"), 0, 0, 0, 9, 0, 0, 0, 0, 0] + [UInt8(ascii: "S"), 0, 0, 0, 4]
        #expect(sendAll(sqlTail + [0, 0] + bindExecuteSync, streaming))
        let answer = String(decoding: try streaming.readBytesUntilReady(), as: UTF8.self)
        #expect(answer.contains("\(text)"), "the length PostgreSQL counted: \(answer.suffix(200)) \(shoal.log.suffix(1500))")
        let grownStreaming = residentBytes() - before
        streaming.close()

        // The refusal comes on the header alone (nothing more is sent, so the close is clean).
        let named = try RawClient(port: shoal.port, receiveTimeout: 10)
        try named.login()
        #expect(sendAll(parseHeader(named: "big"), named))
        let refusal = String(decoding: named.readAll(), as: UTF8.self)
        #expect(refusal.contains("54000") && refusal.contains("prepared statement message too long"), "\(refusal)")
        let grown = residentBytes() - before
        print("huge statements: Shoal's process grew \(grownStreaming >> 20) MiB streaming a 48 MiB Parse")
        #expect(grown < 32 << 20, "RSS grew \(grown >> 20) MiB for a 48 MiB statement")
        let next = try PQConnection(shoal.conninfo)
        #expect(try next.scalar("SELECT 'served'") == "served")
    }

    /// Every client message split at every byte boundary (Query, Parse/Bind/Execute/Sync, COPY data, an
    /// error, Terminate): answered as whole, and the server serves the next client.
    @Test func messagesSplitAtEveryByteAreServed() async throws {
        try TestPostgres.shared.psql("CREATE TABLE IF NOT EXISTS shoal_split_copy (x int)")
        try TestPostgres.shared.psql("TRUNCATE shoal_split_copy")
        for prepared in [200, 0] {
            let shoal = try await singleServerShoal {
                $0.authType = .trust
                $0.maxPreparedStatements = prepared
            }
            defer { Task { await shoal.stop() } }
            let client = try RawClient(port: shoal.port)
            try client.login()
            func message(_ type: Character, _ body: [UInt8]) -> [UInt8] { [type.asciiValue!] + be32(4 + body.count) + body }
            func cString(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }
            try client.trickle(message("Q", cString("SELECT 1")))
            #expect(try client.readUntilReady() == [UInt8(ascii: "T"), UInt8(ascii: "D"), UInt8(ascii: "C"), UInt8(ascii: "Z")])
            try client.trickle(message("P", cString("named_\(prepared)") + cString("SELECT 2") + [0, 0])
                               + message("B", cString("") + cString("named_\(prepared)") + [0, 0, 0, 0, 0, 0])
                               + message("E", cString("") + [0, 0, 0, 0]) + message("S", []))
            #expect(try client.readUntilReady() == [UInt8(ascii: "1"), UInt8(ascii: "2"), UInt8(ascii: "D"), UInt8(ascii: "C"), UInt8(ascii: "Z")])
            try client.trickle(message("Q", cString("COPY shoal_split_copy FROM STDIN")))
            #expect(try client.readUntil(UInt8(ascii: "G")) == [UInt8(ascii: "G")])
            try client.trickle(message("d", Array("7\n".utf8)) + message("c", []))
            #expect(try client.readUntilReady() == [UInt8(ascii: "C"), UInt8(ascii: "Z")])
            try client.trickle(message("Q", cString("SELECT 1/0")))
            #expect(try client.readUntilReady() == [UInt8(ascii: "E"), UInt8(ascii: "Z")])
            try client.trickle(message("X", []))
            client.close()
            usleep(100_000)
            let next = try PQConnection(shoal.conninfo)
            #expect(try next.scalar("SELECT 'served'") == "served")
        }
        #expect(try TestPostgres.shared.psql("SELECT count(*) FROM shoal_split_copy WHERE x = 7") == "2")
    }

    /// A Terminate whose header arrives in two reads: the server that saw half of it is never reused.
    @Test func splitTerminateDoesNotPoisonTheServer() async throws {
        let shoal = try await singleServerShoal {
            $0.maxPreparedStatements = 0
            $0.authType = .trust
        }
        defer { Task { await shoal.stop() } }
        for _ in 0..<3 {
            let socket = try RawClient(port: shoal.port)
            try socket.login()
            try socket.send([UInt8(ascii: "Q")] + be32(4 + 9) + Array("SELECT 1".utf8) + [0])
            _ = try socket.readUntilReady()
            // Terminate: 'X' 00 00 00 04 — split after the type byte.
            try socket.send([UInt8(ascii: "X"), 0])
            usleep(50_000)
            try socket.send([0, 0, 4])
            usleep(50_000)
            socket.close()
        }
        usleep(100_000)
        let next = try PQConnection(shoal.conninfo)
        #expect(try next.scalar("SELECT 'still served'") == "still served")
    }
}

/// This process's resident memory (Shoal runs in the test process).
func residentBytes() -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

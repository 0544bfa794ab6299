import Foundation
import Testing
import Configuration

@Suite(.serialized) struct TimeoutTests {
    @Test func idleTransactionAndQueryTimeoutsCloseTheClientAndFreeTheServer() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.idleTransactionTimeout = 1
            $0.queryTimeout = 1.5
        }
        defer { Task { await shoal.stop() } }
        let idle = try PQConnection(shoal.conninfo)
        try idle.query("begin")
        try await Task.sleep(nanoseconds: 2_000_000_000)
        do {
            try idle.query("select 1")
            Issue.record("an idle transaction outlived idle_transaction_timeout")
        } catch let error as PQError {
            #expect(error.message.contains("idle transaction timeout"), "\(error)")
        }
        let slow = try PQConnection(shoal.conninfo)
        let started = Date()
        do {
            try slow.query("select pg_sleep(5)")
            Issue.record("a query outlived query_timeout")
        } catch let error as PQError {
            #expect(error.message.contains("query timeout"), "\(error)")
        }
        #expect(Date().timeIntervalSince(started) < 4.5) // well before pg_sleep(5) would end
        // The pool of one is usable again.
        #expect(try PQConnection(shoal.conninfo).scalar("select 'free'") == "free")
        #expect(shoal.log.contains("closing because: idle transaction timeout"))
    }

    /// A statement that runs longer than idle_transaction_timeout is not "idle": the clock starts at its answer.
    @Test func aLongStatementInATransactionIsNotIdleTime() async throws {
        // Seconds wide enough that a busy machine's scheduling cannot eat the margin.
        let shoal = try await ShoalInstance { $0.idleTransactionTimeout = 2 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        try client.query("begin")
        try client.query("select pg_sleep(2.6)")
        // A quarter of the timeout of real idleness (the application working between statements): still allowed.
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(try client.scalar("select 'still in the transaction'") == "still in the transaction")
        try client.query("commit")
    }

    /// transaction_timeout (PgBouncer 1.25): a block open longer ends, even though no statement ran long and the
    /// client was never idle for long; the `[users]` value overrides the global one.
    @Test func transactionTimeoutEndsABusyButLongTransaction() async throws {
        var user = UserEntry(name: "postgres")
        user.transactionTimeout = 1
        let shoal = try await ShoalInstance { [user] in
            $0.transactionTimeout = 30
            $0.users["postgres"] = user
        }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        try client.query("begin")
        do {
            for _ in 0..<8 { try client.query("select pg_sleep(0.3)") }
            Issue.record("a 2.4 s transaction outlived transaction_timeout = 1")
        } catch let error as PQError {
            #expect(error.message.contains("transaction timeout"), "\(error)")
        }
        #expect(try PQConnection(shoal.conninfo).scalar("select 'served'") == "served")
    }

    @Test func clientIdleTimeoutClosesIdleClients() async throws {
        let shoal = try await ShoalInstance { $0.clientIdleTimeout = 1 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 1") == "1")
        try await Task.sleep(nanoseconds: 2_000_000_000)
        #expect(throws: PQError.self) { try client.query("select 1") }
        #expect(shoal.log.contains("client_idle_timeout"))
    }
}

@Suite(.serialized) struct SharedLimitTests {
    @Test func maxDbConnectionsCapsServersAcrossPoolsAndClientsStillGetServed() async throws {
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 5
            $0.maxDbConnections = 2
        }
        defer { Task { await shoal.stop() } }
        let run = try shoal.pgbench(script: "SELECT pg_sleep(0.001);\n", ["-n", "-c", "10", "-j", "2", "-T", "2"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("number of failed transactions: 0"))
        let servers = try TestPostgres.shared.psql("select count(*) from pg_stat_activity where application_name = 'pgbench'")
        #expect(Int(servers)! <= 2)
    }

    /// max_db_client_connections and max_user_client_connections were shown by SHOW and not enforced.
    @Test func perDatabaseAndPerUserClientLimitsRefuseWithPgBouncersMessages() async throws {
        let shoal = try await ShoalInstance { $0.maxDbClientConnections = 2; $0.maxUserClientConnections = 3 }
        defer { Task { await shoal.stop() } }
        let other = shoal.conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=template1")
        var held = [try PQConnection(shoal.conninfo), try PQConnection(shoal.conninfo)]
        #expect(refusal(shoal.conninfo).contains("client connections exceeded (max_db_client_connections)"))
        // Another database through the `*` entry: its own count, but the same user's.
        held.append(try PQConnection(other))
        #expect(refusal(other).contains("client connections exceeded (max_user_client_connections)"))
        // A client that leaves frees its place.
        held.removeFirst()
        try waitUntil("a place freed", timeout: 10) { (try? PQConnection(shoal.conninfo)) != nil }
        #expect(held.count == 2)
    }

    @Test func maxClientConnRefusesTheNextClientWithPgBouncersMessage() async throws {
        let shoal = try await ShoalInstance { $0.maxClientConn = 2 }
        defer { Task { await shoal.stop() } }
        let first = try PQConnection(shoal.conninfo)
        let second = try PQConnection(shoal.conninfo)
        #expect(refusal(shoal.conninfo).contains("no more connections allowed (max_client_conn)"))
        #expect(try first.scalar("select 1") == "1")
        #expect(try second.scalar("select 2") == "2")
    }

    /// A CancelRequest connection is counted from accept like any other, and must give its place back when it
    /// closes (it used to be marked closed before the clean-up ran, so each cancel kept a max_client_conn place).
    @Test func cancelRequestsGiveTheirPlaceBack() async throws {
        let shoal = try await ShoalInstance { $0.maxClientConn = 2; $0.authType = .trust }
        defer { Task { await shoal.stop() } }
        let client = try RawClient(port: shoal.port)
        let key = try client.loginForKey()
        for _ in 0..<5 {
            let canceller = try RawClient(port: shoal.port)
            try canceller.send(be32(16) + be32(80877102) + be32(Int(UInt32(bitPattern: key.processID))) + be32(Int(UInt32(bitPattern: key.secretKey))))
            _ = canceller.readAll()
        }
        try waitUntil("the cancellers are gone") { shoal.server.runtime.clientCount == 1 }
        #expect(try PQConnection(shoal.conninfo).scalar("select 'a place is free'") == "a place is free")
    }

    /// query_wait_notify (PgBouncer's, default 5 s): a logged-in client queued that long is told so with a NOTICE,
    /// once, and is served when a server frees.
    @Test func aQueuedClientIsToldAfterQueryWaitNotify() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 1; $0.queryWaitNotify = 1 }
        defer { Task { await shoal.stop() } }
        let holder = try PQConnection(shoal.conninfo)
        try holder.query("BEGIN")
        #expect(try holder.scalar("select 1") == "1")
        let release = background { usleep(2_500_000); try holder.query("COMMIT") }
        let psql = try ProcessRunner.run("psql", ["-X", "-At", shoal.conninfo, "-c", "select 'served after the wait'"])
        #expect(psql.stdout.contains("served after the wait"), "\(psql.stderr)")
        let notice = "NOTICE:  No server connection available in postgres backend, client being queued"
        #expect(psql.stderr.components(separatedBy: notice).count == 2, "once: \(psql.stderr)")
        try await release.value()
    }

    /// issue 15: a client counts against max_client_conn from accept, so connections that never log in cannot
    /// leave the limit unguarded; per address, connections waiting to log in and failed logins per minute are
    /// capped (max_pending_logins_per_address, max_failed_logins_per_minute). The console stays reachable.
    @Test func connectionsCountFromAcceptAndPerAddressLoginLimitsHold() async throws {
        // Silent connections reach Shoal only without tcp_defer_accept (with it, the kernel holds them back 45 s).
        let counting = try await ShoalInstance { $0.maxClientConn = 2; $0.adminUsers = ["postgres"]; $0.tcpDeferAccept = false }
        defer { Task { await counting.stop() } }
        let silent = [try RawClient(port: counting.port), try RawClient(port: counting.port)]
        try waitUntil("both silent connections are counted") { counting.server.runtime.clientCount == 2 }
        #expect(refusal(counting.conninfo).contains("no more connections allowed (max_client_conn)"))
        #expect(try PQConnection(counting.consoleConninfo()).query("SHOW VERSION").count == 1, "the console is exempt")
        for connection in silent { connection.close() }
        try waitUntil("their places are freed") { (try? PQConnection(counting.conninfo)) != nil }

        let limited = try await ShoalInstance { $0.maxPendingLoginsPerAddress = 2; $0.maxFailedLoginsPerMinute = 3; $0.tcpDeferAccept = false }
        defer { Task { await limited.stop() } }
        var waiting = [try RawClient(port: limited.port), try RawClient(port: limited.port)]
        usleep(300_000) // accepted by Shoal, not only by the kernel
        #expect(refusal(limited.conninfo).contains("too many connections from this address waiting to log in"))
        waiting.removeAll()
        try waitUntil("the waiting ones are gone") { (try? PQConnection(limited.conninfo)) != nil }
        for _ in 0..<3 { #expect(refusal("\(limited.conninfo) password=wrong").contains("password authentication failed")) }
        #expect(refusal(limited.conninfo).contains("too many failed logins from this address"))
        #expect(limited.log.contains("too many failed logins from this address"))
    }

    /// tcp_defer_accept (PgBouncer's default on Linux; it was accepted and ignored): a connection that sends
    /// nothing is not handed to Shoal at all, so it costs no accept, no client object and no max_client_conn place;
    /// one that sends its startup packet is accepted with it.
    @Test func tcpDeferAcceptKeepsSilentConnectionsInTheKernel() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        let silent = try RawClient(port: shoal.port)
        usleep(500_000)
        #expect(shoal.server.runtime.clientCount == 0, "a silent connection reached Shoal")
        #expect(try PQConnection(shoal.conninfo).scalar("select 'served'") == "served")
        silent.close()
    }
}

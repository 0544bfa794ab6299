import Configuration
import Foundation
import Testing

/// Log lines PgBouncer users grep for, in PgBouncer's words (issue 16's wording list).
@Suite(.serialized) struct LogWordingTests {
    @Test func serverConnectionsAutoDatabasesAndTheReservePoolAreLoggedAsPgBouncerDoes() async throws {
        _ = try? TestPostgres.shared.psql("CREATE DATABASE wording_auto")
        let shoal = try await ShoalInstance {
            $0.defaultPoolSize = 1
            $0.reservePoolSize = 1
            $0.reservePoolTimeout = 0.5
        }
        defer { Task { await shoal.stop() } }
        // A server connection names its local end, the port pg_stat_activity shows as client_port.
        let holder = try PQConnection(shoal.conninfo)
        try holder.query("BEGIN")
        let port = try holder.scalar("select client_port from pg_stat_activity where pid = pg_backend_pid()")
        #expect(shoal.log.contains("new connection to server (from 127.0.0.1:\(port ?? "?"))"), "\(shoal.log)")
        // The pool of one is held: a second client waits past reserve_pool_timeout and gets the reserve server.
        let waiting = try PQConnection(shoal.conninfo)
        #expect(try waiting.scalar("select 'served from the reserve'") == "served from the reserve")
        #expect(shoal.log.contains("WARNING C-") && shoal.log.contains("taking connection from reserve_pool"), "\(shoal.log)")
        try holder.query("COMMIT")
        // A database served through the `*` entry is registered once.
        let auto = shoal.conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=wording_auto")
        #expect(try PQConnection(auto).scalar("select current_database()") == "wording_auto")
        #expect(try PQConnection(auto).scalar("select 1") == "1")
        #expect(shoal.log.components(separatedBy: "registered new auto-database: wording_auto").count == 2, "\(shoal.log)")
    }

    /// issue 16: a plain host list (no routing key) opens no health-check connection, and two concurrent first
    /// clients cost two server logins, not three (a dial no waiter needs any more serves the next client; this
    /// failed about one run in two before).
    @Test func aHostListEntryOpensOnlyTheServersItsClientsNeed() async throws {
        try TestPostgres.shared.psql("drop table if exists list_logins; create table list_logins (pid int default pg_backend_pid())")
        let shoal = try await ShoalInstance {
            $0.databases["postgres"]?.hosts = ["127.0.0.1", "localhost"]
            $0.databases["postgres"]?.ports = [TestPostgres.shared.port, TestPostgres.shared.port]
            $0.databases["postgres"]?.connectQuery = "insert into list_logins default values"
        }
        defer { Task { await shoal.stop() } }
        let clients = (0..<2).map { _ in background { try PQConnection(shoal.conninfo).scalar("select pg_sleep(0.5)::text") } }
        for client in clients { _ = try await client.value() }
        #expect(try TestPostgres.shared.psql("select count(*) from list_logins").trimmingCharacters(in: .whitespacesAndNewlines) == "2",
                "\(shoal.log)")
        #expect(!shoal.log.contains("health check"), "no health-check connection without a routing key")
    }

    /// A server login PostgreSQL refuses is logged as PgBouncer logs it, with the server's severity (and Shoal's
    /// own reasons are not prefixed twice).
    @Test func aRefusedServerLoginKeepsItsSeverity() async throws {
        let shoal = try await ShoalInstance {
            $0.addEntry("wrongpw") { $0.user = "postgres"; $0.password = "not-the-password" }
        }
        defer { Task { await shoal.stop() } }
        let answer = refusal(shoal.conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=wrongpw"))
        #expect(answer.contains("password authentication failed for user \"postgres\""), "\(answer)")
        #expect(shoal.log.contains("server login failed: FATAL password authentication failed for user \"postgres\""), "\(shoal.log.suffix(600))")
        #expect(!shoal.log.contains("server login failed: server login failed"))
        // The client's side in PgBouncer's order: "closing because" is written before the error is sent (so the
        // line is there as soon as the client has its FATAL), then "pooler error".
        let log = shoal.log
        let closing = log.range(of: "closing because: password authentication failed")
        let poolerError = log.range(of: "pooler error: password authentication failed")
        #expect(closing != nil && poolerError != nil && closing!.lowerBound < poolerError!.lowerBound, "\(log.suffix(600))")
    }

    /// autodb_idle_timeout (issue 15: accepted and ignored, so every name tried through `*` kept its pools for
    /// good): a `*` database with no clients and no servers for that long is dropped, and comes back on demand.
    @Test func unusedAutoDatabasesAreDroppedAfterAutodbIdleTimeout() async throws {
        _ = try? TestPostgres.shared.psql("CREATE DATABASE autodb_reaped")
        let shoal = try await ShoalInstance {
            $0.adminUsers = ["postgres"]
            $0.autodbIdleTimeout = 1
            $0.serverIdleTimeout = 1
        }
        defer { Task { await shoal.stop() } }
        let auto = shoal.conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=autodb_reaped")
        let console = try PQConnection(shoal.consoleConninfo())
        func listed(_ database: String = "autodb_reaped") throws -> Bool { try console.query("SHOW POOLS").contains { $0[0] == database } }
        // The configured database idles alongside, with no clients and (after server_idle_timeout) no servers.
        #expect(try PQConnection(shoal.conninfo).scalar("select 1") == "1")
        var client: PQConnection? = try PQConnection(auto)
        #expect(try client?.scalar("select current_database()") == "autodb_reaped")
        // A connected client keeps it, however long it idles.
        try await Task.sleep(nanoseconds: 3_500_000_000)
        #expect(try listed())
        #expect(!shoal.log.contains("dropping database 'autodb_reaped'"))
        client = nil // PQfinish
        // Its server goes after server_idle_timeout, then the database after autodb_idle_timeout.
        try waitUntil("the auto-database is dropped", timeout: 10) { try !listed() }
        #expect(shoal.log.contains("dropping database 'autodb_reaped' as it does not exist anymore or inactive auto-database"), "\(shoal.log)")
        // The configured database is never dropped, and the auto-database is registered again when used.
        #expect(try listed("postgres"))
        #expect(try PQConnection(auto).scalar("select 'back'") == "back")
        #expect(try listed())
        #expect(shoal.log.components(separatedBy: "registered new auto-database: autodb_reaped").count == 3, "\(shoal.log)")
    }

    /// pool_idle_timeout (PgBouncer 1.25; issue 16: accepted and ignored): any pool with no clients, no servers
    /// and nobody waiting that long is freed; a client idle in transaction pooling (no server) keeps its pool.
    @Test func unusedPoolsAreFreedAfterPoolIdleTimeout() async throws {
        let shoal = try await ShoalInstance {
            $0.adminUsers = ["postgres"]
            $0.poolIdleTimeout = 1
            $0.serverIdleTimeout = 1
        }
        defer { Task { await shoal.stop() } }
        let console = try PQConnection(shoal.consoleConninfo())
        func listed() throws -> Bool { try console.query("SHOW POOLS").contains { $0[0] == "postgres" } }
        var client: PQConnection? = try PQConnection(shoal.conninfo)
        #expect(try client?.scalar("select 1") == "1")
        try await Task.sleep(nanoseconds: 3_000_000_000)
        #expect(try listed(), "an idle client, even without a server, keeps its pool")
        client = nil // PQfinish
        try waitUntil("the pool is freed", timeout: 10) { try !listed() }
        #expect(shoal.log.contains("pool postgres/postgres unused for pool_idle_timeout, freed"), "\(shoal.log.suffix(600))")
        #expect(try PQConnection(shoal.conninfo).scalar("select 'again'") == "again")
        #expect(try listed())
    }

    /// unix_socket_mode, unix_socket_group and login_notify_message act as PgBouncer documents them (issue 15:
    /// they were accepted and ignored; the socket was always 0777).
    @Test func unixSocketModeGroupAndLoginNotice() async throws {
        let group = try #require(getgrnam("postgres")).pointee.gr_gid
        let shoal = try await ShoalInstance {
            $0.unixSocketMode = 0o770
            $0.unixSocketGroup = "postgres"
            $0.loginNotifyMessage = "Welcome to the department pooler"
        }
        defer { Task { await shoal.stop() } }
        var info = stat()
        #expect(stat("\(shoal.directory)/.s.PGSQL.\(shoal.port)", &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o770, "mode \(String(info.st_mode & 0o7777, radix: 8))")
        #expect(info.st_gid == group)
        let psql = try ProcessRunner.run("psql", ["-X", "-At", shoal.conninfo, "-c", "select 'in'"])
        #expect(psql.stdout.contains("in") && psql.stderr.contains("NOTICE:  Welcome to the department pooler"), "\(psql.stdout)\(psql.stderr)")
    }

    /// scram_iterations: the PBKDF2 rounds of the verifiers Shoal derives — for a plaintext auth-file password
    /// and for an unknown user alike (the same count, so it tells nothing), read from server-first-message.
    @Test func scramIterationsSetTheRoundsShoalAnnounces() async throws {
        let shoal = try await ShoalInstance { $0.scramIterations = 5000 }
        defer { Task { await shoal.stop() } }
        for user in ["postgres", "nobody_here"] {
            let client = try RawClient(port: shoal.port)
            try client.sendStartup(user: user)
            _ = try client.readUntil(UInt8(ascii: "R")) // AuthenticationSASL
            let first = Array("n,,n=,r=fyko+d2lbbFgONRv9qkxdawL".utf8)
            let mechanism = Array("SCRAM-SHA-256".utf8) + [0]
            try client.send([UInt8(ascii: "p")] + be32(4 + mechanism.count + 4 + first.count) + mechanism + be32(first.count) + first)
            let answer = String(decoding: client.readAll(), as: UTF8.self)
            #expect(answer.contains(",i=5000"), "\(user): \(answer)")
            client.close()
        }
    }
}

import Configuration
import Foundation
import ProxyServer
import Testing

/// Real clients (psql, libpq, pgbench) through Shoal to a real PostgreSQL 15.
@Suite(.serialized) struct ProxyIntegrationTests {
    init() { raiseFileLimit() }

    @Test func psqlQueriesThroughTCPAndUnixSocket() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        let tcp = try shoal.psql(["-c", "select 40 + 2, current_setting('server_version_num')::int >= 150000"])
        #expect(tcp.status == 0, "\(tcp.stderr)")
        #expect(tcp.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "42|t")
        let unix = try shoal.psql(["-c", "select 'via socket'"], conninfo: "host=\(shoal.directory) port=\(shoal.port) user=postgres dbname=postgres password=\(TestPostgres.password)")
        #expect(unix.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "via socket", "\(unix.stderr)")
        #expect(shoal.log.contains("login attempt: db=postgres user=postgres tls=no replication=no"))
    }

    @Test func wrongPasswordAndUnknownDatabaseAreRefusedWithPgBouncersWords() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        #expect(refusal("host=127.0.0.1 port=\(shoal.port) user=postgres dbname=postgres password=wrong").contains("password authentication failed for user"))
        #expect(refusal("host=127.0.0.1 port=\(shoal.port) user=nobody dbname=postgres password=x").contains("password authentication failed for user"))
        let shoalMD5 = try await ShoalInstance { $0.authType = .md5; $0.databases["*"] = nil }
        defer { Task { await shoalMD5.stop() } }
        #expect(refusal("host=127.0.0.1 port=\(shoalMD5.port) user=postgres dbname=nope password=\(TestPostgres.password)")
            .contains("no such database: nope"))
        // PostgreSQL's words for a wrong password, md5 as SCRAM (issue 15).
        #expect(refusal("host=127.0.0.1 port=\(shoalMD5.port) user=postgres dbname=postgres password=wrong")
            .contains("password authentication failed for user \"postgres\""))
        // Plain md5 auth against a plaintext auth_file secret works.
        let ok = try PQConnection(shoalMD5.conninfo)
        #expect(try ok.scalar("select 1") == "1")
        // The service is still up for everyone after the failures.
        #expect(try PQConnection(shoal.conninfo).scalar("select 'still up'") == "still up")
    }

    @Test func pgbenchSelectOnlyReconnectAndTPCB() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 5 }
        defer { Task { await shoal.stop() } }
        let initialise = try shoal.pgbench(["-i", "-s", "1", "-q"])
        #expect(initialise.status == 0, "\(initialise.stderr)")
        for arguments in [["-S", "-c", "20", "-j", "2", "-T", "3"],
                          ["-S", "-C", "-c", "10", "-j", "2", "-T", "3"],
                          ["-c", "20", "-j", "2", "-T", "3"],
                          ["-S", "-M", "extended", "-c", "20", "-j", "2", "-T", "3"]] {
            let run = try shoal.pgbench(arguments)
            #expect(run.status == 0, "pgbench \(arguments): \(run.stderr)")
            #expect(run.stdout.contains("number of failed transactions: 0 (0.000%)"), "pgbench \(arguments): \(run.stdout)")
            let processed = run.stdout.split(separator: "\n").first { $0.contains("number of transactions actually processed") }
            #expect(processed != nil && !processed!.hasSuffix(": 0"), "pgbench \(arguments): \(run.stdout)")
        }
        // pgbench -i itself ran COPY FROM STDIN through Shoal.
        #expect(try TestPostgres.shared.psql("select count(*) from pgbench_accounts") == "100000")
    }

    @Test func thousandClientsThroughAPoolOfTenLoseAndDuplicateNothing() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 10 }
        defer { Task { await shoal.stop() } }
        try TestPostgres.shared.psql("drop table if exists ledger; create table ledger (id bigserial primary key, client int not null, n int not null, unique (client, n))")
        let script = "\(shoal.directory)/ledger.sql"
        try """
            \\set n random(1, 1000000000)
            BEGIN;
            INSERT INTO ledger (client, n) VALUES (:client_id, :n);
            COMMIT;
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let run = try shoal.pgbench(["-n", "-c", "1000", "-j", "2", "-t", "3", "-f", script], timeout: 300)
        #expect(run.status == 0, "\(run.stderr.suffix(2000))")
        #expect(run.stdout.contains("number of transactions actually processed: 3000/3000"), "\(run.stdout)")
        #expect(try TestPostgres.shared.psql("select count(*) from ledger") == "3000")
        #expect(try TestPostgres.shared.psql("select count(distinct client) from ledger") == "1000")
        #expect(try TestPostgres.shared.psql("select count(*) from (select client from ledger group by client having count(*) <> 3) x") == "0")
        // Shoal held at most the pool's ten server connections.
        let servers = try TestPostgres.shared.psql("select count(*) from pg_stat_activity where datname = 'postgres' and application_name = '' and backend_type = 'client backend'")
        #expect(Int(servers)! <= 11)
    }

    @Test func trackedParametersDoNotLeakBetweenClients() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 1 }
        defer { Task { await shoal.stop() } }
        let alpha = try PQConnection(shoal.conninfo + " application_name=alpha options='-c TimeZone=Asia/Tokyo'")
        let beta = try PQConnection(shoal.conninfo + " application_name=beta")
        #expect(try alpha.scalar("show application_name") == "alpha")
        #expect(try beta.scalar("show application_name") == "beta")
        #expect(try alpha.scalar("show timezone") == "Asia/Tokyo")
        let betaZone = try beta.scalar("show timezone")
        #expect(betaZone != "Asia/Tokyo")
        try alpha.query("set timezone = 'America/Chicago'")
        try alpha.query("set application_name = 'alpha2'")
        // One server connection serves both; each still sees its own values.
        #expect(try beta.scalar("show timezone") == betaZone)
        #expect(try beta.scalar("show application_name") == "beta")
        #expect(try alpha.scalar("show timezone") == "America/Chicago")
        #expect(try alpha.scalar("show application_name") == "alpha2")
        #expect(try beta.scalar("select count(*) from pg_stat_activity where application_name in ('alpha2','beta')") == "1")
    }

    @Test func moodleStartupOptionsAreApplied() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }
        let moodle = try PQConnection(shoal.conninfo + " options='--client_encoding=utf8 --standard_conforming_strings=on'")
        #expect(try moodle.scalar("show client_encoding") == "UTF8")
        #expect(try moodle.scalar("show standard_conforming_strings") == "on")
        #expect(refusal(shoal.conninfo + " options='-c work_mem=1MB'").contains("unsupported startup parameter in options: work_mem"))
        let lenient = try await ShoalInstance { $0.ignoreStartupParameters = ["work_mem", "extra_float_digits"] }
        defer { Task { await lenient.stop() } }
        let ignored = try PQConnection(lenient.conninfo + " options='-c work_mem=1MB'")
        #expect(try ignored.scalar("select 1") == "1")
    }

    @Test func cancelReachesTheRightServerAndThePoolStaysUsable() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        let sleeper = try PQConnection(shoal.conninfo)
        let bystander = try PQConnection(shoal.conninfo)
        try bystander.query("begin")
        try bystander.query("select 1")
        let started = Date()
        let outcome = Box<Result<[[String?]], Error>?>(nil)
        let thread = Thread {
            outcome.value = Result { try sleeper.query("select pg_sleep(20)") }
        }
        thread.start()
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(sleeper.cancel())
        while outcome.value == nil && Date().timeIntervalSince(started) < 10 { try await Task.sleep(nanoseconds: 20_000_000) }
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 2.5, "cancel took \(elapsed)s")
        guard case .failure(let error as PQError)? = outcome.value else { Issue.record("query was not cancelled"); return }
        #expect(error.sqlState == "57014")
        // The other client's transaction was not touched, and both go on.
        #expect(try bystander.scalar("select 'alive'") == "alive")
        try bystander.query("commit")
        #expect(try sleeper.scalar("select 'after cancel'") == "after cancel")
    }

    @Test func clientKilledMidTransactionLeavesNoRowAndNoStuckServer() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 1 }
        defer { Task { await shoal.stop() } }
        try TestPostgres.shared.psql("drop table if exists orphan; create table orphan (v text)")
        do {
            let doomed = try PQConnection(shoal.conninfo)
            try doomed.query("begin")
            try doomed.query("insert into orphan values ('never committed')")
            shutdown(doomed.socket, Int32(SHUT_RDWR)) // the client vanishes without a word
        }
        let next = try PQConnection(shoal.conninfo)
        #expect(try next.scalar("select count(*) from orphan") == "0")
        #expect(try next.scalar("select 1") == "1")
        // The same with a query still running.
        do {
            let doomed = try PQConnection(shoal.conninfo)
            _ = PQsendQueryShim(doomed, "insert into orphan select 'x' from pg_sleep(1)")
            shutdown(doomed.socket, Int32(SHUT_RDWR))
        }
        #expect(try next.scalar("select count(*) from orphan") == "0")
    }

    @Test func closedClientsAreFreed() async throws {
        let shoal = try await ShoalInstance { $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        #expect(try PQConnection(shoal.conninfo).scalar("select 1") == "1")
        try await Task.sleep(nanoseconds: 300_000_000)
        let before = ShoalRuntime.clientObjectsAlive
        // Connect per request, like PHP. The registries hold clients strongly (the cancel registry too), so
        // every way out must let go: a normal logout, a console session, a wrong password, a cancel request.
        for _ in 0..<40 { _ = try PQConnection(shoal.conninfo).scalar("select 1") }
        _ = try PQConnection(shoal.consoleConninfo()).query("SHOW VERSION")
        _ = refusal("\(shoal.conninfo) password=wrong")
        for _ in 0..<3 {
            let canceller = try RawClient(port: shoal.port)
            try canceller.send(be32(16) + be32(80877102) + be32(1234) + be32(5678))
            _ = canceller.readAll()
        }
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(ShoalRuntime.clientObjectsAlive <= before, "\(ShoalRuntime.clientObjectsAlive - before) closed clients still in memory")
    }

    @Test func errorsMidTransactionAndCopyBothWays() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 1 }
        defer { Task { await shoal.stop() } }
        let connection = try PQConnection(shoal.conninfo)
        try connection.query("begin")
        #expect(throws: PQError.self) { try connection.query("select 1/0") }
        do { try connection.query("select 1") } catch let error as PQError { #expect(error.sqlState == "25P02") }
        try connection.query("rollback")
        #expect(try connection.scalar("select 'clean'") == "clean")
        try TestPostgres.shared.psql("drop table if exists copied; create table copied (a int, b text)")
        let copyIn = try ProcessRunner.run("psql", ["-X", "-v", "ON_ERROR_STOP=1", shoal.conninfo, "-c", "\\copy copied from stdin"],
                                           input: (1...5000).map { "\($0)\trow \($0)" }.joined(separator: "\n") + "\n\\.\n")
        #expect(copyIn.status == 0, "\(copyIn.stderr)")
        let copyOut = try shoal.psql(["-c", "copy (select * from copied order by a) to stdout"])
        #expect(copyOut.stdout.split(separator: "\n").count == 5000)
        #expect(try connection.scalar("select sum(a) from copied") == "12502500")
    }

    /// pkt_buf bounds a client's reads (and so the receive buffer it keeps while idle): messages many times that
    /// size, in both protocols, arrive whole over many reads.
    @Test func messagesLargerThanPktBufArriveWhole() async throws {
        let shoal = try await ShoalInstance { $0.pktBuf = 512 }
        defer { Task { await shoal.stop() } }
        let connection = try PQConnection(shoal.conninfo)
        let text = String(repeating: "moodle ", count: 30_000)
        #expect(try connection.scalar("select length('\(text)')") == "\(text.count)")
        #expect(try connection.scalar("select md5($1) = md5(repeat('moodle ', 30000))", [text]) == "t")
        #expect(try connection.scalar("select 1") == "1")
    }

    /// disable_pqexec (PgBouncer's; issue 15/16: accepted and ignored): a simple Query ends the client with
    /// `PQexec disallowed`, nothing of it reaching the server; the extended protocol is served.
    @Test func disablePqexecRefusesTheSimpleProtocol() async throws {
        let shoal = try await ShoalInstance { $0.disablePqexec = true; $0.adminUsers = ["postgres"] }
        defer { Task { await shoal.stop() } }
        let extended = try PQConnection(shoal.conninfo)
        #expect(try extended.scalar("select $1::int + 1", ["41"]) == "42")
        let simple = try PQConnection(shoal.conninfo)
        do {
            try simple.query("select 1")
            Issue.record("a simple Query was served")
        } catch let error as PQError {
            #expect(error.message.contains("PQexec disallowed"), "\(error.message)")
        }
        #expect(shoal.log.contains("client used pqexec"))
        // The server that client had is unharmed, and the console still takes simple queries.
        #expect(try extended.scalar("select $1::text", ["still served"]) == "still served")
        #expect(try PQConnection(shoal.consoleConninfo()).query("SHOW VERSION").count == 1)
    }
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
}

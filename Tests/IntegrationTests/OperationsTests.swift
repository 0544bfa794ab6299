import Foundation
import LoadHarness
import Testing

/// /metrics and the probes, the stats line, and the signals of the real `shoal` binary.
@Suite(.serialized) struct OperationsTests {
    struct Scrape {
        var samples: [String: Double]
        var types: [String: String]
        var healthz: Int
        var readyz: Int
        var contentType: String

        func value(_ name: String, database: String = "postgres", user: String = "postgres", extra: String = "") -> Double? {
            samples["\(name){\(["database=\(database)", extra, "user=\(user)"].filter { !$0.isEmpty }.joined(separator: ","))}"]
        }
    }

    /// Scrapes with prometheus_client's parser (Python), so the text format is checked by a real consumer.
    static func scrape(port: Int) throws -> Scrape {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/parse_metrics.py").path
        let run = try ProcessRunner.run("python3", [script, "http://127.0.0.1:\(port)"])
        guard run.status == 0 else { throw TestFailure("scrape failed: \(run.stderr)") }
        let json = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] ?? [:]
        return Scrape(samples: json["samples"] as? [String: Double] ?? [:], types: json["types"] as? [String: String] ?? [:],
                      healthz: json["healthz"] as? Int ?? 0, readyz: json["readyz"] as? Int ?? 0,
                      contentType: json["content_type"] as? String ?? "")
    }

    @Test func metricsParseWithPrometheusClientAndMoveWithLoad() async throws {
        let metricsPort = freePort()
        let shoal = try await ShoalInstance {
            $0.metricsPort = metricsPort
            $0.metricsAddr = "127.0.0.1"
            $0.statsPeriod = 1
        }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 1") == "1")
        let before = try Self.scrape(port: metricsPort)
        #expect(before.healthz == 200 && before.readyz == 200)
        #expect(before.contentType.hasPrefix("text/plain; version=0.0.4"))
        #expect(before.types["shoal_query_duration_seconds"] == "histogram")
        #expect(before.types["shoal_stats_queries_pooled"] == "counter") // the parser drops `_total` from family names
        #expect(before.value("shoal_pools_client_active_connections") == 1)
        let queriesBefore = try #require(before.value("shoal_stats_queries_pooled_total"))

        for index in 0..<25 { #expect(try client.scalar("select \(index)") == "\(index)") }
        try client.query("begin")
        try client.query("select pg_sleep(0.02)")
        try client.query("commit")
        let after = try Self.scrape(port: metricsPort)
        #expect(after.value("shoal_stats_queries_pooled_total") == queriesBefore + 28)
        #expect(after.value("shoal_stats_sql_transactions_pooled_total").map { $0 >= 27 } == true)
        let slowTransactions = after.value("shoal_transaction_duration_seconds_bucket", extra: "le=+Inf")
            .flatMap { all in after.value("shoal_transaction_duration_seconds_bucket", extra: "le=0.01").map { all - $0 } }
        // At least the pg_sleep one; a busy machine may push a plain one past 10 ms too (no timing is asserted).
        #expect(slowTransactions.map { $0 >= 1 } == true, "the pg_sleep transaction lands above 10 ms")
        #expect(after.value("shoal_query_duration_seconds_count") == after.value("shoal_stats_queries_pooled_total"))
        #expect(after.value("shoal_stats_received_bytes_total")! > before.value("shoal_stats_received_bytes_total")!)
        #expect(after.value("shoal_server_connects_total") == 1)

        // Failed logins are counted; the stats line appears every stats_period.
        _ = refusal(shoal.conninfo.replacingOccurrences(of: "password=\(TestPostgres.password)", with: "password=wrong"))
        #expect(try Self.scrape(port: metricsPort).samples["shoal_client_auth_failures_total{}"] == 1)
        try await Task.sleep(nanoseconds: 1_300_000_000)
        #expect(shoal.log.contains(" xacts/s, "), "stats line: \(shoal.log.suffix(500))")

        // Shutting down: /readyz says so, /healthz still answers.
        shoal.server.requestShutdown(.waitForClients)
        let draining = try Self.scrape(port: metricsPort)
        #expect(draining.readyz == 503 && draining.healthz == 200)
        #expect(try client.scalar("select 'still served while draining'") == "still served while draining")
    }

    // MARK: The binary and its signals

    /// Starts `.build/debug/shoal` (built with the tests) on its own config file.
    final class ShoalProcess {
        let pid: pid_t
        let port: Int
        let directory: String
        var logPath: String { "\(directory)/shoal.log" }
        var configPath: String { "\(directory)/shoal.ini" }

        init(poolSize: Int = 2, extra: String = "", arguments: [String] = [], port: Int? = nil) throws {
            self.port = port ?? freePort()
            let port = self.port
            directory = "/tmp/shoal-proc-test-\(getpid())-\(port)-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try "\"postgres\" \"\(TestPostgres.password)\"\n".write(toFile: "\(directory)/userlist.txt", atomically: true, encoding: .utf8)
            try (Self.config(directory: directory, port: port, poolSize: poolSize) + "\n" + extra).write(toFile: "\(directory)/shoal.ini", atomically: true, encoding: .utf8)
            let binary = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent(".build/debug/shoal").path
            pid = try ProcessRunner.spawn(binary, arguments + ["-q", "\(directory)/shoal.ini"], stdout: "\(directory)/stdout", stderr: "\(directory)/stderr")
            let deadline = Date().addingTimeInterval(20)
            while !log.contains("listening on") {
                guard Date() < deadline else { throw TestFailure("shoal did not start: \(log) \(stderr)") }
                usleep(50_000)
            }
        }

        static func config(directory: String, port: Int, poolSize: Int) -> String {
            """
            [databases]
            postgres = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir = \(directory)
            auth_type = scram-sha-256
            auth_file = \(directory)/userlist.txt
            admin_users = postgres
            pool_mode = transaction
            default_pool_size = \(poolSize)
            logfile = \(directory)/shoal.log
            pidfile = \(directory)/shoal.pid
            """
        }

        var conninfo: String { "host=127.0.0.1 port=\(port) user=postgres dbname=postgres password=\(TestPostgres.password) connect_timeout=5" }
        var consoleConninfo: String { conninfo.replacingOccurrences(of: "dbname=postgres", with: "dbname=pgbouncer") }
        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        var stderr: String { (try? String(contentsOfFile: "\(directory)/stderr", encoding: .utf8)) ?? "" }

        func signal(_ number: Int32) { kill(pid, number) }

        func waitForLog(_ text: String, timeout: TimeInterval = 5) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if log.contains(text) { return true }
                usleep(50_000)
            }
            return false
        }

        deinit {
            kill(pid, SIGKILL)
            _ = ProcessRunner.exitCode(of: pid, within: 5)
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test func sighupReloadsAndUsr1Usr2PauseAndResume() async throws {
        let shoal = try ShoalProcess(poolSize: 2)
        let console = try PQConnection(shoal.consoleConninfo)
        #expect(try console.query("SHOW DATABASES").first { $0[0] == "postgres" }?[5] == "2")
        try ShoalProcess.config(directory: shoal.directory, port: shoal.port, poolSize: 7)
            .write(toFile: shoal.configPath, atomically: true, encoding: .utf8)
        shoal.signal(SIGHUP)
        #expect(shoal.waitForLog("got SIGHUP, re-reading config"))
        try await Task.sleep(nanoseconds: 200_000_000)
        #expect(try console.query("SHOW DATABASES").first { $0[0] == "postgres" }?[5] == "7")

        // Logged in before the pause (a login needs the pool's welcome, learned from a first server login).
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 1") == "1")
        shoal.signal(SIGUSR1)
        #expect(shoal.waitForLog("got SIGUSR1, pausing all activity"))
        #expect(try console.query("SHOW STATE").first { $0[0] == "paused" }?[1] == "yes")
        let held = background { try client.scalar("select 'after SIGUSR2'") }
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(!held.isDone)
        shoal.signal(SIGUSR2)
        #expect(try await held.value() == "after SIGUSR2")
        #expect(shoal.waitForLog("got SIGUSR2, continuing from PAUSE"))
        shoal.signal(SIGUSR2)
        #expect(shoal.waitForLog("got SIGUSR2, but not paused/suspended, ignoring"))
    }

    @Test func listensOnSeveralAddressesAndTheUnixSocketWithJSONLogs() async throws {
        let shoal = try ShoalProcess(extra: "listen_addr = 127.0.0.1, ::1\nlog_format = json\n")
        let v6 = try PQConnection(shoal.conninfo.replacingOccurrences(of: "host=127.0.0.1", with: "host=::1"))
        #expect(try v6.scalar("select inet_client_addr() is not null") == "t")
        // PHP's dbsocket: the Unix socket in unix_socket_dir.
        let unix = try PQConnection(shoal.conninfo.replacingOccurrences(of: "host=127.0.0.1", with: "host=\(shoal.directory)"))
        #expect(try unix.scalar("select 'over the socket'") == "over the socket")
        let lines = shoal.log.split(separator: "\n")
        #expect(lines.contains { $0.contains("\"msg\":\"listening on [::1]:\(shoal.port)\"") }, "\(shoal.log)")
        // Every line is a JSON object; connection lines carry the structured keys.
        for line in lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) is [String: Any], "not JSON: \(line)")
        }
        let login = lines.first { $0.contains("login attempt") }.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(login?["pool"] as? String == "postgres/postgres" && login?["client"] != nil && login?["level"] as? String == "LOG", "\(String(describing: login))")
    }

    /// issue 17: an online upgrade with so_reuseport — start the new process on the same port, SIGTERM the old
    /// one — under the PHP connect-per-request pattern refuses no connection and fails no request: the old
    /// process stops listening, serves the clients it has (those it accepted just before its listener closed
    /// included: PgBouncer refuses their login, and that failed 1–5 requests per restart here) and exits; the
    /// kernel sends new ones to the new process, and with net.ipv4.tcp_migrate_req = 1 also those queued on the
    /// old listeners when they close (without it about one restart in thirteen lost a connection here).
    @Test func aRollingRestartWithSoReuseportRefusesNobody() async throws {
        let sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
        let original = (try? String(contentsOfFile: sysctl, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        func setMigrate(_ value: String) -> Bool { (try? value.write(toFile: sysctl, atomically: false, encoding: .utf8)) != nil }
        defer { if let original { _ = setMigrate(original) } }
        let canSet = setMigrate("0")
        let old = try ShoalProcess(poolSize: 4, extra: "so_reuseport = 1\n")
        if canSet {
            #expect(old.log.contains("net.ipv4.tcp_migrate_req is 0"), "the risk is said at start-up: \(old.log)")
            #expect(setMigrate("1"))
        }
        let conninfo = old.conninfo
        try SchemaInit.run(conninfo: conninfo, users: 200, courses: 5)
        let runner = LoadRunner(name: "rolling", conninfo: conninfo, workload: .phpRequest(users: 200, courses: 5, persistent: false),
                                mode: .closed(users: 16))
        let load = background { runner.run(seconds: 7) { _, _ in } }
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let new = try ShoalProcess(poolSize: 4, extra: "so_reuseport = 1\n", port: old.port)
        if canSet { #expect(!new.log.contains("tcp_migrate_req")) }
        try await Task.sleep(nanoseconds: 1_000_000_000)
        old.signal(SIGTERM)
        #expect(ProcessRunner.exitCode(of: old.pid, within: 10) == 0, "the old process drains and exits: \(old.log.suffix(400))")
        let stats = try await load.value()
        #expect(stats.requests > 50, "\(stats.requests) requests")
        withKnownIssue("net.ipv4.tcp_migrate_req cannot be set here (not root): a connection queued at the close may be reset",
                       isIntermittent: true) {
            #expect(stats.errors.isEmpty, "\(stats.errors)")
        } when: { !canSet }
        // After the switch every connection reaches the new process.
        #expect(try PQConnection(new.conninfo).scalar("select 'new'") == "new")
        #expect(new.log.contains("login attempt"), "the new process served clients")
    }

    /// issue 17: with so_reuseport two Shoals may share one unix_socket_dir (the packaged shoal@.service does): the
    /// new one binds the socket file again, and the old one, stopping, must not remove that file. NIO removes the
    /// path of a Unix listener it closes, which took the new process's socket off the file system.
    @Test func theOldProcessLeavesTheNewOnesUnixSocketInPlace() async throws {
        let shared = "/tmp/shoal-shared-socket-\(getpid())"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: shared) }
        let old = try await ShoalInstance { $0.soReuseport = true; $0.unixSocketDir = shared }
        let new = try await ShoalInstance { [port = old.port] in $0.soReuseport = true; $0.unixSocketDir = shared; $0.listenPort = port }
        defer { Task { await new.stop() } } // a second stop is a no-op
        let socket = "host=\(shared) port=\(old.port) user=postgres dbname=postgres password=\(TestPostgres.password) connect_timeout=5"
        #expect(try PQConnection(socket).scalar("select 'before'") == "before")
        await old.stop()
        #expect(FileManager.default.fileExists(atPath: "\(shared)/.s.PGSQL.\(old.port)"))
        #expect(try PQConnection(socket).scalar("select 'served by the new one'") == "served by the new one")
        await new.stop()
        #expect(!FileManager.default.fileExists(atPath: "\(shared)/.s.PGSQL.\(old.port)"), "the last one removes its own file")
    }

    /// PgBouncer's so_reuseport: two processes share one port, and the kernel spreads the connections between
    /// them (and, in Shoal, between each one's EventLoops). Without it the second cannot take the port.
    @Test func soReuseportLetsTwoInstancesShareThePort() async throws {
        let first = try await ShoalInstance { $0.soReuseport = true }
        defer { Task { await first.stop() } }
        let port = first.port
        let second = try await ShoalInstance { $0.soReuseport = true; $0.listenPort = port }
        defer { Task { await second.stop() } }
        #expect(first.log.contains("listening on 127.0.0.1:\(port) (so_reuseport, 2 listeners)"), "\(first.log)")
        #expect(second.log.contains("listening on 127.0.0.1:\(port) (so_reuseport, 2 listeners)"), "\(second.log)")
        for _ in 0..<24 {
            let client = try PQConnection(first.conninfo)
            #expect(try client.scalar("select 1") == "1")
        }
        // Spread by the kernel's hash of each connection: 24 all landing on one process is a 1 in 16 million chance.
        #expect(first.log.contains("login attempt") && second.log.contains("login attempt"),
                "first: \(first.log.components(separatedBy: "login attempt").count - 1), second: \(second.log.components(separatedBy: "login attempt").count - 1)")

        // Without so_reuseport the port stays taken, and with no listen_addr address bound Shoal does not start
        // (PgBouncer's rule: the Unix socket alone would hide the mistake).
        do {
            let third = try await ShoalInstance { $0.listenPort = port }
            await third.stop()
            Issue.record("a third instance started on a taken port without so_reuseport")
        } catch {
            #expect("\(error)" == "failed to listen on any address in listen_addr list: 127.0.0.1", "\(error)")
        }
    }

    /// Each EventLoop accepts its own clients (a listener per loop on the port, SO_REUSEPORT), yet without
    /// so_reuseport the port is still this process's alone: a second instance refuses to start, as PgBouncer's.
    @Test func everyLoopListensButWithoutSoReuseportThePortIsNotShared() async throws {
        let first = try await ShoalInstance { $0.workerThreads = 2 }
        defer { Task { await first.stop() } }
        let port = first.port
        let listeners = try ProcessRunner.run("ss", ["-tlnH", "( sport = :\(port) )"]).stdout
            .split(separator: "\n").filter { $0.contains("LISTEN") }
        #expect(listeners.count == 2, "\(listeners)")
        for _ in 0..<8 { #expect(try PQConnection(first.conninfo).scalar("select 1") == "1") }
        do {
            let second = try await ShoalInstance { $0.workerThreads = 2; $0.listenPort = port }
            await second.stop()
            Issue.record("a second instance shared the port without so_reuseport")
        } catch {
            #expect("\(error)" == "failed to listen on any address in listen_addr list: 127.0.0.1", "\(error)")
        }
        #expect(first.log.contains("listening on 127.0.0.1:\(port)") && !first.log.contains("so_reuseport,"), "\(first.log)")
    }

    /// tcp_keepidle (and its siblings) reach the sockets: with 7 s the kernel's keepalive timer on a client's
    /// connection runs from 7 s, not from the 2-hour default.
    @Test func tcpKeepaliveKeysReachTheSockets() async throws {
        let shoal = try await ShoalInstance { $0.tcpKeepidle = 7; $0.tcpKeepintvl = 3; $0.tcpKeepcnt = 4; $0.tcpUserTimeout = 20_000 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 1") == "1")
        // `timer:(keepalive,6.9sec,0)`: the seconds left before the first probe (once the last send is acknowledged;
        // until then the timer shows the retransmission's).
        var sockets = ""
        try waitUntil("the keepalive timer shows", timeout: 5) {
            sockets = try ProcessRunner.run("ss", ["-tnoH", "state", "established", "( sport = :\(shoal.port) )"]).stdout
            return sockets.contains("timer:(keepalive,")
        }
        let left = sockets.components(separatedBy: "timer:(keepalive,").dropFirst().first?.prefix { $0.isNumber || $0 == "." }
        #expect(left.flatMap { Double($0) }.map { $0 <= 7 } == true, "\(sockets)")
    }

    /// tcp_socket_buffer fixes both socket buffers (`ss -m` shows the kernel's doubled figure, rb/tb).
    @Test func tcpSocketBufferReachesTheSockets() async throws {
        let shoal = try await ShoalInstance { $0.tcpSocketBuffer = 65_536 }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 1") == "1")
        let sockets = try ProcessRunner.run("ss", ["-tnmH", "state", "established", "( sport = :\(shoal.port) )"]).stdout
        #expect(sockets.contains("rb131072") && sockets.contains("tb131072"), "\(sockets)")
    }

    /// `-R` (PgBouncer's deprecated online restart) is not silently ignored: it is logged, then Shoal starts.
    @Test func rebootFlagIsLoggedNotIgnored() throws {
        let shoal = try ShoalProcess(arguments: ["-R"])
        #expect(shoal.log.contains("Online restart is deprecated, use so_reuseport instead"), "\(shoal.log)")
        #expect(try PQConnection(shoal.conninfo).scalar("select 1") == "1")
    }

    /// SHUTDOWN WAIT_FOR_SERVERS is in force when it answers: a RESUME right after it, in the same session, is
    /// refused as shutting down (it used to land before the shutdown began and answer "not paused").
    @Test func shutdownTakesEffectBeforeItsReply() throws {
        let shoal = try ShoalProcess()
        let holder = try PQConnection(shoal.conninfo)
        try holder.query("begin")
        let answer = try ProcessRunner.run("psql", ["-X", "-At", shoal.consoleConninfo, "-c", "SHUTDOWN WAIT_FOR_SERVERS", "-c", "RESUME"])
        #expect(answer.stderr.contains("pooler is shutting down"), "\(answer.stdout) \(answer.stderr)")
        #expect(!answer.stderr.contains("not paused"), "\(answer.stderr)")
        try holder.query("commit")
    }

    @Test func sigtermLetsOpenTransactionsCommitThenExits() async throws {
        let shoal = try ShoalProcess()
        var connection: PQConnection? = try PQConnection(shoal.conninfo)
        let client = connection!
        try client.query("begin")
        try client.query("create temporary table rolling_update (v int)")
        try client.query("insert into rolling_update values (1)")
        shoal.signal(SIGTERM)
        #expect(shoal.waitForLog("got SIGTERM, shutting down, waiting for all clients disconnect"))
        try await Task.sleep(nanoseconds: 300_000_000)
        // New TCP clients are turned away; the open transaction finishes and commits.
        #expect(!refusal(shoal.conninfo).isEmpty)
        // The Unix socket stays open for the console; a login to a database there is refused as in PgBouncer.
        let unix = "host=\(shoal.directory) port=\(shoal.port) user=postgres dbname=postgres password=\(TestPostgres.password)"
        #expect(refusal(unix).contains("pooler is shutting down"))
        #expect(try client.scalar("select count(*) from rolling_update") == "1")
        try client.query("commit")
        #expect(try client.scalar("select 'after commit'") == "after commit")
        #expect(ProcessRunner.exitCode(of: shoal.pid, within: 1) == nil, "exited while a client was connected")
        connection = nil // PQfinish
        _ = consume client
        #expect(ProcessRunner.exitCode(of: shoal.pid, within: 10) == 0)
        #expect(shoal.log.contains("client connections dropped, exiting"))
        #expect(!FileManager.default.fileExists(atPath: "\(shoal.directory)/shoal.pid"))
    }

    @Test func sigintWaitsForServersToBeReleased() async throws {
        let shoal = try ShoalProcess()
        let client = try PQConnection(shoal.conninfo)
        try client.query("begin")
        try client.query("select 1")
        shoal.signal(SIGINT)
        #expect(shoal.waitForLog("got SIGINT, shutting down, waiting for all servers connections to be released"))
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(ProcessRunner.exitCode(of: shoal.pid, within: 0.5) == nil, "exited with a transaction open")
        try client.query("commit")
        #expect(ProcessRunner.exitCode(of: shoal.pid, within: 10) == 0)
        #expect(shoal.log.contains("server connections dropped, exiting"))
    }
}

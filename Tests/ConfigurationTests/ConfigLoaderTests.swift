@testable import Configuration
import Testing

@Suite struct ConfigLoaderTests {
    func loader(_ files: [String: String]) -> ConfigLoader {
        ConfigLoader(reader: IniReader(load: { path in
            guard let text = files[path] else { throw CocoaLikeError.missing }
            return text
        }))
    }
    enum CocoaLikeError: Error { case missing }

    @Test func readsPgBouncerHabits() throws {
        let ini = """
            ; a comment
            # another
            [databases]
              moodle = host=10.0.0.5 port=5433 dbname=moodle pool_size=40 pool_mode=transaction
            quoted = host=db user=app password='it''s' client_encoding=UTF8
            * = host=fallback

            [users]
            cron = pool_mode=session max_user_connections=5

            [pgbouncer]
            listen_port = 6000
            listen_port = 6432
            listen_addr = 127.0.0.1, ::1
            auth_type = SCRAM-SHA-256
            max_client_conn = 0x10
            query_wait_timeout = 2.5
            server_reset_query_always = 1
            ignore_startup_parameters = extra_float_digits options
            %include extra.ini
            """
        let result = try loader(["main.ini": ini, "extra.ini": "default_pool_size = 7\ndns_max_ttl = 3\n"]).load(path: "main.ini")
        let config = result.config
        #expect(config.listenPort == 6432)
        #expect(config.listenAddr == ["127.0.0.1", "::1"])
        #expect(config.authType == .scramSHA256)
        #expect(config.maxClientConn == 16)
        #expect(config.queryWaitTimeout == 2.5)
        #expect(config.serverResetQueryAlways)
        #expect(config.defaultPoolSize == 7)
        #expect(config.ignoreStartupParameters == ["extra_float_digits", "options"])
        let moodle = try #require(config.databases["moodle"])
        #expect(moodle.hosts == ["10.0.0.5"] && moodle.ports == [5433] && moodle.poolSize == 40 && moodle.poolMode == .transaction)
        #expect(config.databases["quoted"]?.password == "it's")
        #expect(config.users["cron"]?.poolMode == .session)
        #expect(config.database(named: "physics")?.dbname == "physics")
        #expect(config.database(named: "physics")?.hosts == ["fallback"])
        // dns_max_ttl is PgBouncer's but not acted on: a warning naming file, line and key.
        let warning = try #require(result.warnings.first)
        #expect(warning.file == "extra.ini" && warning.line == 2 && warning.key == "dns_max_ttl")
    }

    @Test func badValueNamesFileLineAndKey() {
        let ini = "[pgbouncer]\nlisten_port = 6432\npool_mode = sometimes\n"
        do {
            _ = try loader(["a.ini": ini]).load(path: "a.ini")
            Issue.record("expected an error")
        } catch {
            #expect(error.file == "a.ini" && error.line == 3 && error.key == "pool_mode")
            #expect(error.description.contains("session, transaction or statement"))
        }
    }

    /// A number of seconds too large for a timer used to be accepted and then trapped where it was converted to
    /// nanoseconds (at the first dial, or in SHOW CONFIG): it is refused with its line.
    @Test func secondsBeyondWhatATimerHoldsAreRefused() throws {
        for value in ["1e300", "inf", "-1", "nan"] {
            #expect(throws: ConfigDiagnostic.self, "server_connect_timeout = \(value)") {
                _ = try loader(["a.ini": "[pgbouncer]\nserver_connect_timeout = \(value)\n"]).load(path: "a.ini")
            }
        }
        let config = try loader(["a.ini": "[pgbouncer]\nserver_connect_timeout = 1000000000\ncross_thread_reuse_delay = 0.25\n"]).load(path: "a.ini").config
        #expect(config.serverConnectTimeout == 1_000_000_000 && config.crossThreadReuseDelay == 0.25)
    }

    /// Ports, listen_backlog and the keepalive keys past what they are narrowed to (a port's 16 bits, Int32,
    /// Linux's keepalive bounds) trapped or failed the listener at start-up; they are refused with their line.
    @Test func integersBeyondTheirUseAreRefused() throws {
        let refused = ["listen_port = 99999", "listen_port = -5", "metrics_port = 70000", "readonly_listen_port = 65536",
                       "listen_backlog = 99999999999", "tcp_keepidle = 32768", "tcp_keepintvl = 99999", "tcp_keepcnt = 128",
                       "tcp_user_timeout = 4294967296", "tcp_socket_buffer = 4294967296"]
        for line in refused {
            do {
                _ = try loader(["a.ini": "[pgbouncer]\n\(line)\n"]).load(path: "a.ini")
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.line == 2 && error.description.contains("expected an integer from 0 to"), "\(error)")
            }
        }
        let config = try loader(["a.ini": "[pgbouncer]\nlisten_port = 65535\ntcp_keepidle = 32767\ntcp_keepcnt = 127\n"]).load(path: "a.ini").config
        #expect(config.listenPort == 65535 && config.tcpKeepidle == 32767 && config.tcpKeepcnt == 127)
    }

    /// pkt_buf acts (a client's largest read, so its idle receive buffer), so it is a setting, not a warning.
    @Test func pktBufIsReadAndBounded() throws {
        let result = try loader(["a.ini": "[pgbouncer]\npkt_buf = 8192\n"]).load(path: "a.ini")
        #expect(result.config.pktBuf == 8192 && result.warnings.isEmpty)
        #expect(ShoalConfig().pktBuf == 4096)
        for value in ["100", "-1", "99999999999"] {
            #expect(throws: ConfigDiagnostic.self, "pkt_buf = \(value)") {
                _ = try loader(["a.ini": "[pgbouncer]\npkt_buf = \(value)\n"]).load(path: "a.ini")
            }
        }
    }

    /// What auth_type hba/cert need is checked by the loader itself, so start-up, RELOAD, SET and --check refuse
    /// the same configs (hba used to be accepted by a reload and then let everyone in by password).
    @Test func hbaAndCertAreCheckedWhereverAConfigIsRead() throws {
        let refused: [(files: [String: String], line: Int, key: String, text: String)] = [
            (["a.ini": "[pgbouncer]\nauth_type = hba\n"], 0, "auth_type", "needs auth_hba_file"),
            (["a.ini": "[pgbouncer]\nauth_type = hba\nauth_hba_file = missing.conf\n"], 0, "auth_hba_file", "cannot read hba file"),
            (["a.ini": "[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n",
              "hba.conf": "host all all 10.0.0.0/8 trust\nhost all all 10.0.0.1/8 reject\n"], 2, "auth_hba_file", "bits outside its mask"),
            (["a.ini": "[pgbouncer]\nauth_type = cert\nclient_tls_sslmode = require\n"], 0, "auth_type", "verify-ca or verify-full"),
        ]
        for (files, line, key, text) in refused {
            do {
                _ = try loader(files).load(path: "a.ini")
                Issue.record("loaded: \(files)")
            } catch {
                #expect(error.line == line && error.key == key && error.message.contains(text), "\(error)")
            }
        }
        let good = try loader(["a.ini": "[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n",
                               "hba.conf": "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n"]).load(path: "a.ini")
        #expect(good.config.hbaRules?.rules.map(\.method) == [.peer, .scramSHA256])
        // SET refuses what start-up refuses, and leaves the running config as it was.
        var config = good.config
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("auth_hba_file", to: "/nonexistent/hba.conf", in: &config) }
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("auth_type", to: "cert", in: &config) }
        #expect(config.authType == .hba && config.authHbaFile == "hba.conf" && config.hbaRules == good.config.hbaRules)
        try ConfigLoader.set("auth_type", to: "md5", in: &config)
        #expect(config.authType == .md5 && config.hbaRules == nil)
    }

    /// issue 15: a key Shoal reads but does not act on is a warning with file and line at start-up, shown by SHOW
    /// CONFIG as ignored (never as a setting in force), and refused by SET.
    @Test func keysShoalIgnoresAreSaidToBeIgnoredEverywhere() throws {
        let result = try loader(["a.ini": "[pgbouncer]\nsyslog = 1\n"]).load(path: "a.ini")
        #expect(result.warnings.contains { $0.line == 2 && $0.key == "syslog" && $0.message.contains("not supported") })
        let shown = ConfigLoader.settings(of: result.config).first { $0.key == "syslog" }
        #expect(shown?.value == "1 (ignored: not supported by Shoal)" && shown?.changeable == false, "\(String(describing: shown))")
        var config = result.config
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("syslog", to: "0", in: &config) }
    }

    @Test func transactionTimeoutIsReadGloballyAndPerUser() throws {
        let ini = "[pgbouncer]\ntransaction_timeout = 5\n[users]\nmoodle = transaction_timeout=2\n"
        let config = try loader(["a.ini": ini]).load(path: "a.ini").config
        #expect(config.transactionTimeout == 5)
        #expect(config.users["moodle"]?.transactionTimeout == 2)
    }

    @Test func unixSocketModeIsOctalAndShownAsWritten() throws {
        let config = try loader(["a.ini": "[pgbouncer]\nunix_socket_mode = 0700\nunix_socket_group = pgb\n"]).load(path: "a.ini").config
        #expect(config.unixSocketMode == 0o700 && config.unixSocketGroup == "pgb")
        #expect(ConfigLoader.settings(of: config).first { $0.key == "unix_socket_mode" }?.value == "0700")
        #expect(throws: ConfigDiagnostic.self) { _ = try loader(["a.ini": "[pgbouncer]\nunix_socket_mode = 0789\n"]).load(path: "a.ini") }
    }

    @Test func peersAreReadWithPgBouncersRules() throws {
        let config = try loader(["a.ini": "[pgbouncer]\npeer_id = 2\n[peers]\n1 = host=10.0.0.1 port=7000\n3 = host=10.0.0.3 pool_size=4\n"])
            .load(path: "a.ini").config
        #expect(config.peerID == 2)
        #expect(config.peers[1]?.host == "10.0.0.1" && config.peers[1]?.port == 7000)
        #expect(config.peers[3]?.port == 6432 && config.peers[3]?.poolSize == 4)
        for (line, message) in [("0 = host=a", "ids of peers must be a number larger than 0 and at most 65536"),
                                ("2 = port=6432", "host was not provided for peer 2")] {
            do {
                _ = try loader(["a.ini": "[pgbouncer]\n[peers]\n\(line)\n"]).load(path: "a.ini")
                Issue.record("\(line) was taken")
            } catch {
                #expect(error.message == message && error.line == 3)
            }
        }
        #expect(throws: ConfigDiagnostic.self) { _ = try loader(["a.ini": "[pgbouncer]\npeer_id = 20000\n"]).load(path: "a.ini") }
    }

    @Test func maxHostConnectionsIsTheFleetsOnceReplicasAreDiscovered() {
        var config = ShoalConfig()
        config.maxHostConnections = 100
        #expect(config.hostConnectionLimit(replicas: 4) == 100, "no discovery: this process's own")
        config.peersDNS = "shoal-peers"
        #expect(config.hostConnectionLimit(replicas: 4) == 25)
        #expect(config.hostConnectionLimit(replicas: 8) == 12, "the HPA's maximum keeps the instance's total")
        #expect(config.hostConnectionLimit(replicas: 0) == 100, "nothing resolved yet")
        #expect(config.hostConnectionLimit(replicas: 500) == 1)
        config.maxHostConnections = 0
        #expect(config.hostConnectionLimit(replicas: 4) == 0, "no limit stays no limit")
    }

    @Test func workerThreadsCountsLoopsAndOnlyARestartChangesIt() throws {
        let config = try loader(["a.ini": "[pgbouncer]\nworker_threads = 3\n"]).load(path: "a.ini").config
        #expect(config.eventLoopCount(cpusAvailable: 8) == 3)
        #expect(ShoalConfig().eventLoopCount(cpusAvailable: 1) == 1, "0: the CPUs available (a 1-CPU pod runs one loop)")
        #expect(ShoalConfig().eventLoopCount(cpusAvailable: 4) == 4)
        do {
            _ = try loader(["a.ini": "[pgbouncer]\nworker_threads = -1\n"]).load(path: "a.ini")
            Issue.record("a negative worker_threads was taken")
        } catch {
            #expect(error.line == 2 && error.key == "worker_threads")
        }
        var live = config
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("worker_threads", to: "1", in: &live) }
        #expect(ConfigLoader.settings(of: config).first { $0.key == "worker_threads" }?.changeable == false)
    }

    @Test func refusesUnknownKeysSyntaxAndMissingMainSection() {
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\nno_such_key = 1\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\njust words\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[databases]\na = host=x\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[nonsense]\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\n[databases]\na = host=x bogus=1\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\n[databases]\npgbouncer = host=x\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\n%include missing.ini\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\nlog_connections = yes\n"]).load(path: "a.ini") }
        #expect(throws: ConfigDiagnostic.self) { try loader(["a.ini": "[pgbouncer]\nserver_lifetime = -1\n"]).load(path: "a.ini") }
    }

    @Test func inlineSemicolonIsPartOfTheValue() throws {
        let result = try loader(["a.ini": "[pgbouncer]\nserver_reset_query = DISCARD ALL ;x\n"]).load(path: "a.ini")
        #expect(result.config.serverResetQuery == "DISCARD ALL ;x")
    }
}

@Suite struct UserListTests {
    @Test func parsesQuotedFieldsAndStopsAtBrokenLine() {
        let text = """
            ; comment
            "postgres" "secret"
            "we""ird" "md54cd7994f0a6f6357615cc334d1c5d03a" trailing words
            broken line
            "after" "never"
            """
        let result = UserList.parse(text, file: "userlist.txt")
        #expect(result.userList.secrets["postgres"] == "secret")
        #expect(result.userList.secrets["we\"ird"] == "md54cd7994f0a6f6357615cc334d1c5d03a")
        #expect(result.userList.secrets["after"] == nil)
        #expect(result.problem?.line == 4)
        #expect(result.problem?.message == "broken auth file")
    }
}

@Suite struct RoutedEntryTests {
    @Test func hostListsPairWithPortsAsInLibpq() throws {
        let one = try DatabaseEntry.parse(name: "m", value: "host=w,r1,r2 port=6000 target_session_attrs=read-write")
        #expect(one.addresses(socketDirectory: "/tmp").map(\.description) == ["w:6000", "r1:6000", "r2:6000"])
        #expect(one.targetSessionAttrs == .readWrite && one.isRouted)
        let each = try DatabaseEntry.parse(name: "m", value: "host=w,r1 port=5432,5433 aurora_topology=on load_balance_hosts=disable")
        #expect(each.addresses(socketDirectory: "/tmp").map(\.port) == [5432, 5433])
        #expect(each.auroraTopology == true && each.loadBalanceHosts == "disable")
        #expect(try DatabaseEntry.parse(name: "m", value: "host=/var/run/postgresql").addresses(socketDirectory: "/tmp").first?.isUnixSocket == true)
        #expect(!(try DatabaseEntry.parse(name: "m", value: "host=one")).isRouted)
        // A plain host list is PgBouncer's: taken in turn, no roles, no health-check connections.
        #expect(!(try DatabaseEntry.parse(name: "m", value: "host=one,two")).isRouted)
    }

    @Test func badRoutingValuesAreRefusedWithTheirName() {
        #expect(throws: ConnectionString.SyntaxError(message: "invalid target_session_attrs: writer")) {
            try DatabaseEntry.parse(name: "m", value: "host=a,b target_session_attrs=writer")
        }
        #expect(throws: ConnectionString.SyntaxError(message: "could not match 3 port numbers to 2 hosts")) {
            try DatabaseEntry.parse(name: "m", value: "host=a,b port=1,2,3")
        }
        #expect(throws: ConnectionString.SyntaxError(message: "invalid load_balance_hosts: random")) {
            try DatabaseEntry.parse(name: "m", value: "host=a,b load_balance_hosts=random")
        }
    }
}

@Suite struct AuroraEndpointTests {
    @Test func instancePatternsComeFromClusterEndpoints() {
        #expect(AuroraEndpoints.instancePattern(forClusterHost: "moodle.cluster-abc123.eu-west-1.rds.amazonaws.com")
                == "?.abc123.eu-west-1.rds.amazonaws.com")
        #expect(AuroraEndpoints.instancePattern(forClusterHost: "moodle.cluster-ro-abc123.eu-west-1.rds.amazonaws.com")
                == "?.abc123.eu-west-1.rds.amazonaws.com")
        #expect(AuroraEndpoints.instancePattern(forClusterHost: "reports.cluster-custom-abc123.us-east-1.rds.amazonaws.com")
                == "?.abc123.us-east-1.rds.amazonaws.com")
        #expect(AuroraEndpoints.instancePattern(forClusterHost: "db.internal") == nil)
        #expect(AuroraEndpoints.instancePattern(forClusterHost: "10.0.0.5") == nil)
    }
}

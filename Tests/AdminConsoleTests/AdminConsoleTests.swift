import AdminConsole
import Configuration
import Foundation
import Pooling
import Testing

@Suite struct AdminCommandParserTests {
    func parse(_ text: String) throws(AdminError) -> AdminCommand? { try AdminCommandParser.parse(text) }

    @Test func pgbouncerGrammar() throws {
        #expect(try parse("SHOW POOLS;") == .show("pools"))
        #expect(try parse("  show   stats_totals  ;; ") == .show("stats_totals"))
        #expect(try parse("select version") == .show("version"))
        #expect(try parse("SHOW") == .show("help"))
        #expect(try parse("PAUSE") == .pause(database: nil))
        #expect(try parse("pause moodle_db") == .pause(database: "moodle_db"))
        #expect(try parse("RESUME \"Odd\"\"Name\"") == .resume(database: "Odd\"Name"))
        #expect(try parse("KILL_CLIENT 42") == .killClient(id: "42"))
        #expect(try parse("SET default_pool_size = 30") == .set(key: "default_pool_size", value: "30"))
        #expect(try parse("set server_reset_query to 'DISCARD ''ALL'''") == .set(key: "server_reset_query", value: "DISCARD 'ALL'"))
        #expect(try parse("SHUTDOWN") == .shutdown(.immediate))
        #expect(try parse("shutdown wait_for_clients") == .shutdown(.waitForClients))
        #expect(try parse(" ; ") == nil)
    }

    @Test func errorsSayWhatIsWrong() {
        #expect(throws: AdminError("invalid command 'FROB', use SHOW HELP;")) { try parse("FROB") }
        #expect(throws: AdminError("invalid command 'SHOW POOLS; SHOW STATS', use SHOW HELP;")) { try parse("SHOW POOLS; SHOW STATS") }
        #expect(throws: AdminError("invalid command 'PAUSE a-b', use SHOW HELP;")) { try parse("PAUSE a-b") }
        #expect(throws: AdminError.badArguments) { try parse("SUSPEND now") }
        #expect(throws: AdminError.badArguments) { try parse("SHUTDOWN LATER") }
        #expect(throws: AdminError.badArguments) { try parse("PAUSE " + String(repeating: "x", count: 64)) }
        #expect(throws: AdminError("a database is required")) { try parse("DISABLE") }
        #expect(throws: AdminError.badArguments) { try parse("RESUME \"unterminated") }
    }

    @Test func readOnlyCommands() throws {
        #expect(try parse("SHOW POOLS")?.isReadOnly == true)
        #expect(try parse("SHOW FDS")?.isReadOnly == false)
        #expect(try parse("PAUSE")?.isReadOnly == false)
    }
}

@Suite struct ShowTableTests {
    @Test func poolsCountLiveConnectionsPerState() {
        var pool = PoolInfo(key: PoolKey(database: "moodle", user: "web"), mode: "transaction")
        let now = Date(timeIntervalSince1970: 1_764_000_000)
        func row(_ type: String, _ state: String) -> ConnectionInfo {
            ConnectionInfo(type: type, user: "web", database: "moodle", state: state, addr: "10.0.0.1", port: 5432, localAddr: "10.0.0.2",
                           localPort: 6432, connectTime: now, requestTime: now, waitMicros: 1_500_000, closeNeeded: false,
                           ptr: "0x1", link: "", remotePid: 0, tls: "", applicationName: "", id: 7)
        }
        for connection in [row("C", "active"), row("C", "idle"), row("C", "waiting"), row("S", "active"), row("S", "idle"), row("S", "new")] {
            pool.count(connection)
        }
        pool.maxWaitMicros = 2_250_000
        let table = ShowTables.pools([pool])
        #expect(table.rows == [["moodle", "web", "2", "1", "0", "0", "1", "0", "0", "1", "0", "0", "1", "2", "250000", "transaction", nil]])
        let clients = ShowTables.connections([row("C", "waiting")])
        #expect(clients.rows[0][9] == "2025-11-24 16:00:00+00")
        #expect(clients.rows[0][11] == "1" && clients.rows[0][12] == "500000") // wait, wait_us
    }

    @Test func averagesFollowPgBouncersDefinitions() {
        var before = TrafficCounters()
        before.recordQuery(micros: 100)
        var after = before
        for _ in 0..<10 { after.recordQuery(micros: 300) }
        after.recordTransaction(micros: 5000)
        after.recordAssignment(waitMicros: 40)
        after.recordAssignment(waitMicros: 60)
        let averages = after.pgbouncerAverages(since: before, seconds: 2)
        #expect(averages[2] == 5) // 10 queries in 2 s
        #expect(averages[6] == 300) // mean query time of the period
        #expect(averages[5] == 5000)
        #expect(averages[7] == 50) // mean wait per assignment
        #expect(after.queryDurations.count == 11)
        #expect(after.queryDurations.cumulative.last == 11)
    }

    @Test func configRowsAndLiveSet() throws {
        var config = ShoalConfig()
        try ConfigLoader.set("default_pool_size", to: "35", in: &config)
        #expect(config.defaultPoolSize == 35)
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("listen_port", to: "7000", in: &config) }
        #expect(throws: ConfigDiagnostic.self) { try ConfigLoader.set("default_pool_size", to: "many", in: &config) }
        let rows = ShowTables.config(ConfigLoader.settings(of: config)).rows
        #expect(rows.contains(["default_pool_size", "35", "20", "yes"]))
        #expect(rows.contains(["listen_port", "6432", "6432", "no"]))
        #expect(rows.contains(["metrics_port", "0", "0", "no"]))
    }

    @Test func prometheusTextHasHistogramsAndEscapedLabels() {
        var pool = PoolInfo(key: PoolKey(database: "a\"b", user: "web"), mode: "transaction")
        pool.traffic.recordQuery(micros: 700)
        let text = PrometheusText.render(pools: [pool], process: .init(ready: true, paused: false, clients: 3, maxClientConnections: 100, authFailures: 2))
        #expect(text.contains("shoal_stats_queries_pooled_total{database=\"a\\\"b\",user=\"web\"} 1"))
        #expect(text.contains("shoal_query_duration_seconds_bucket{database=\"a\\\"b\",user=\"web\",le=\"0.0005\"} 0"))
        #expect(text.contains("shoal_query_duration_seconds_bucket{database=\"a\\\"b\",user=\"web\",le=\"0.001\"} 1"))
        #expect(text.contains("shoal_client_auth_failures_total 2"))
    }

    @Test func hostsTableAndSeriesCarryRoleStateAndLag() {
        var replica = HostStatus(address: HostAddress(host: "r1", port: 5432))
        replica.role = .replica
        replica.health = .up
        replica.lag = 7.25
        replica.lagging = true
        replica.reason = "check succeeded"
        let table = ShowTables.hosts([replica], connections: { _ in 3 })
        #expect(table.columns.map(\.name) == ["host", "port", "role", "state", "lag_ms", "in_rotation", "last_check", "check_ms",
                                               "failures", "promotions", "server_connections", "reason"])
        #expect(table.rows == [["r1", "5432", "replica", "up", "7250", "0", nil, nil, "0", "0", "3", "check succeeded"]])
        let text = PrometheusText.render(pools: [read], process: .init(ready: true, paused: false, clients: 0, maxClientConnections: 1, authFailures: 0),
                                         hosts: [.init(status: replica, connections: 3)], failovers: 2)
        #expect(text.contains("shoal_host_replica_lag_seconds{host=\"r1\",port=\"5432\",role=\"replica\"} 7.25"))
        #expect(text.contains("shoal_host_in_rotation{host=\"r1\",port=\"5432\",role=\"replica\"} 0"))
        #expect(text.contains("shoal_failovers_total 2"))
        // Read-only pools are labelled apart from the writer's pool of the same database and user.
        #expect(text.contains("shoal_pools_client_waiting_connections{database=\"moodle (read-only)\",user=\"web\"} 0"))
    }

    private var read: PoolInfo { PoolInfo(key: PoolKey(database: "moodle", user: "web", readOnly: true), mode: "transaction") }
}

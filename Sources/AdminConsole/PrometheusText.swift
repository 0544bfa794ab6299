import Foundation
import Pooling

/// Renders the pools in Prometheus' text exposition format (version 0.0.4).
///
/// Names follow pgbouncer_exporter's with `shoal_` for `pgbouncer_` wherever the figure is the same one
/// (`shoal_pools_client_active_connections` ↔ `pgbouncer_pools_client_active_connections`), so dashboards port
/// by a prefix change; the histograms and connect/auth counters are Shoal's own. Every per-pool series carries
/// `database` and `user` labels.
public struct PrometheusText {
    public struct Process: Sendable {
        public var ready: Bool
        public var paused: Bool
        public var clients: Int
        public var maxClientConnections: Int
        public var authFailures: UInt64
        public init(ready: Bool, paused: Bool, clients: Int, maxClientConnections: Int, authFailures: UInt64) {
            self.ready = ready
            self.paused = paused
            self.clients = clients
            self.maxClientConnections = maxClientConnections
            self.authFailures = authFailures
        }
    }

    private var output = ""

    /// What the health checks know of one backend host, for the `shoal_host_*` series.
    public struct Host: Sendable {
        public var status: HostStatus
        public var connections: Int
        public init(status: HostStatus, connections: Int) {
            self.status = status
            self.connections = connections
        }
    }

    public static func render(pools: [PoolInfo], process: Process, hosts: [Host] = [], failovers: Int = 0) -> String {
        var text = PrometheusText()
        let pools = pools.sorted { ($0.key.displayDatabase, $0.key.user) < ($1.key.displayDatabase, $1.key.user) }
        text.single("shoal_up", "gauge", "Shoal is running.", 1)
        text.single("shoal_ready", "gauge", "Listening, config loaded and not shutting down (what /readyz reports).", process.ready ? 1 : 0)
        text.single("shoal_paused", "gauge", "The whole pooler is paused or suspended.", process.paused ? 1 : 0)
        text.single("shoal_clients_connected", "gauge", "Client connections counted against max_client_conn.", Double(process.clients))
        text.single("shoal_config_max_client_connections", "gauge", "max_client_conn.", Double(process.maxClientConnections))
        text.single("shoal_client_auth_failures_total", "counter", "Failed client logins (bad password, unknown user, console refused).",
                    Double(process.authFailures))

        let gauges: [(String, String, (PoolInfo) -> Double)] = [
            ("shoal_pools_client_active_connections", "Clients linked to a server or logged in without one (SHOW POOLS cl_active).",
             { Double($0.clientsActive + $0.clientsIdle) }),
            ("shoal_pools_client_linked_connections", "Clients linked to a server right now.", { Double($0.clientsActive) }),
            ("shoal_pools_client_pinned_connections", "Clients pinned to their server by session state (held cursor, advisory lock, temp table…).",
             { Double($0.clientsPinned) }),
            ("shoal_pools_client_waiting_connections", "Clients queued for a server (cl_waiting).", { Double($0.clientsWaiting) }),
            ("shoal_pools_server_active_connections", "Servers linked to a client (sv_active).", { Double($0.serversActive) }),
            ("shoal_pools_server_idle_connections", "Servers idle in the pool (sv_idle).", { Double($0.serversIdle) }),
            ("shoal_pools_server_used_connections", "Servers idle and due for server_check_query (sv_used).", { Double($0.serversUsed) }),
            ("shoal_pools_server_testing_connections", "Servers running the reset or check query (sv_tested).", { Double($0.serversTested) }),
            ("shoal_pools_server_login_connections", "Servers logging in (sv_login).", { Double($0.serversLogin) }),
            ("shoal_pools_client_maxwait_seconds", "How long the longest-waiting client has waited (maxwait).", { Double($0.maxWaitMicros) / 1e6 }),
            ("shoal_pools_paused", "The pool is paused (PAUSE, SUSPEND, KILL or shutdown).", { $0.paused ? 1 : 0 }),
        ]
        for (name, help, value) in gauges { text.family(name, "gauge", help, pools, value) }
        text.hosts(hosts, failovers: failovers)

        let counters: [(String, String, (PoolInfo) -> Double)] = [
            ("shoal_stats_sql_transactions_pooled_total", "Transactions carried (xact_count).", { Double($0.traffic.transactions) }),
            ("shoal_stats_queries_pooled_total", "Queries carried (query_count).", { Double($0.traffic.queries) }),
            ("shoal_stats_received_bytes_total", "Bytes received from clients (bytes_received).", { Double($0.traffic.bytesReceived) }),
            ("shoal_stats_sent_bytes_total", "Bytes sent from servers to clients (bytes_sent).", { Double($0.traffic.bytesSent) }),
            ("shoal_stats_server_in_transaction_seconds_total", "Time in transactions (xact_time).", { Double($0.traffic.transactionMicros) / 1e6 }),
            ("shoal_stats_queries_duration_seconds_total", "Time in queries (query_time).", { Double($0.traffic.queryMicros) / 1e6 }),
            ("shoal_stats_client_wait_seconds_total", "Time clients waited for a server (wait_time).", { Double($0.traffic.waitMicros) / 1e6 }),
            ("shoal_stats_server_assignments_total", "Times a client was given a server (server_assignment_count).", { Double($0.traffic.serverAssignments) }),
            ("shoal_stats_client_logins_total", "Client logins (client_login_count).", { Double($0.traffic.clientLogins) }),
            ("shoal_stats_client_parses_total", "Parse messages from clients (client_parse_count).", { Double($0.traffic.clientParses) }),
            ("shoal_stats_binds_total", "Bind messages from clients (bind_count).", { Double($0.traffic.binds) }),
            ("shoal_server_connects_total", "Server connections that logged in.", { Double($0.traffic.serverConnects) }),
            ("shoal_server_connect_errors_total", "Server connections that failed to connect or log in.", { Double($0.traffic.serverConnectFailures) }),
        ]
        for (name, help, value) in counters { text.family(name, "counter", help, pools, value) }

        text.histogram("shoal_transaction_duration_seconds", "Transaction durations, first query to idle ReadyForQuery.", pools) { $0.traffic.transactionDurations }
        text.histogram("shoal_query_duration_seconds", "Query durations, request to ReadyForQuery.", pools) { $0.traffic.queryDurations }
        text.histogram("shoal_client_wait_duration_seconds", "Time from a client's request to its server assignment.", pools) { $0.traffic.waitDurations }
        return text.output
    }

    private mutating func header(_ name: String, _ type: String, _ help: String) {
        output += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    private mutating func single(_ name: String, _ type: String, _ help: String, _ value: Double) {
        header(name, type, help)
        output += "\(name) \(Self.number(value))\n"
    }

    private mutating func hosts(_ hosts: [Host], failovers: Int) {
        guard !hosts.isEmpty else { return }
        single("shoal_failovers_total", "counter", "Writer changes seen by the health checks.", Double(failovers))
        let series: [(String, String, String, (Host) -> Double)] = [
            ("shoal_host_up", "gauge", "The host answers its health checks (1), is down (0).", { $0.status.health == .up ? 1 : 0 }),
            ("shoal_host_primary", "gauge", "The host reports it is the writer (not in recovery).", { $0.status.role == .primary ? 1 : 0 }),
            ("shoal_host_in_rotation", "gauge", "Up and, for a replica, within max_replica_lag.",
             { $0.status.health == .up && !$0.status.lagging ? 1 : 0 }),
            ("shoal_host_replica_lag_seconds", "gauge", "Replay lag the last check measured.", { $0.status.lag }),
            ("shoal_host_check_duration_seconds", "gauge", "How long the last successful health check took.", { $0.status.checkLatency ?? 0 }),
            ("shoal_host_check_failures", "gauge", "Health checks failed in a row.", { Double($0.status.consecutiveFailures) }),
            ("shoal_host_last_check_timestamp_seconds", "gauge", "When the last health check finished (Unix time).", { $0.status.lastCheck ?? 0 }),
            ("shoal_host_promotions_total", "counter", "Times this host became the writer in place of another.", { Double($0.status.promotions) }),
            ("shoal_host_server_connections", "gauge", "Server connections all pools hold to the host (max_host_connections).",
             { Double($0.connections) }),
        ]
        for (name, type, help, value) in series {
            header(name, type, help)
            for host in hosts {
                output += "\(name){host=\"\(Self.escape(host.status.address.host))\",port=\"\(host.status.address.port)\",role=\"\(host.status.role.rawValue)\"} \(Self.number(value(host)))\n"
            }
        }
    }

    private mutating func family(_ name: String, _ type: String, _ help: String, _ pools: [PoolInfo], _ value: (PoolInfo) -> Double) {
        header(name, type, help)
        for pool in pools { output += "\(name){\(Self.labels(pool))} \(Self.number(value(pool)))\n" }
    }

    private mutating func histogram(_ name: String, _ help: String, _ pools: [PoolInfo], _ value: (PoolInfo) -> DurationHistogram) {
        header(name, "histogram", help)
        for pool in pools {
            let histogram = value(pool)
            let labels = Self.labels(pool)
            let cumulative = histogram.cumulative
            for (bound, count) in zip(DurationHistogram.upperBounds, cumulative) {
                output += "\(name)_bucket{\(labels),le=\"\(Self.number(bound))\"} \(count)\n"
            }
            output += "\(name)_bucket{\(labels),le=\"+Inf\"} \(cumulative.last ?? 0)\n"
            output += "\(name)_sum{\(labels)} \(Self.number(Double(histogram.sumMicros) / 1e6))\n"
            output += "\(name)_count{\(labels)} \(histogram.count)\n"
        }
    }

    private static func labels(_ pool: PoolInfo) -> String {
        "database=\"\(escape(pool.key.displayDatabase))\",user=\"\(escape(pool.key.user))\""
    }

    /// Label values escape backslash, quote and newline.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}

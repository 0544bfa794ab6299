import Configuration
import Foundation
import Pooling

/// The SHOW result sets, with PgBouncer 1.25's column names, order and types, built from live data.
public enum ShowTables {
    public static let pgbouncerVersion = "1.25.2"

    // MARK: Connections

    private static let connectionColumns = "type user database replication state addr port:i local_addr local_port:i "
        + "connect_time:T request_time:T wait:i wait_us:i close_needed:i ptr link remote_pid:i tls application_name "
        + "prepared_statements:i id:i pinned"

    /// SHOW CLIENTS / SHOW SERVERS: one row per connection, grouped by pool. PgBouncer's 21 columns, then
    /// Shoal's `pinned` (tools that read columns by name are unaffected).
    public static func connections(_ rows: [ConnectionInfo]) -> ResultTable {
        var table = ResultTable(connectionColumns)
        let ordered = rows.sorted { ($0.database, $0.user, $0.id) < ($1.database, $1.user, $1.id) }
        for row in ordered {
            table.append([
                row.type, row.user.isEmpty ? "(nouser)" : row.user, row.database.isEmpty ? "(nodb)" : row.database, row.replication,
                row.state, row.addr, String(row.port), row.localAddr, String(row.localPort),
                ConsoleFormat.timestamp(row.connectTime), ConsoleFormat.timestamp(row.requestTime),
                String(row.waitMicros / 1_000_000), String(row.waitMicros % 1_000_000), row.closeNeeded ? "1" : "0",
                row.ptr, row.link, String(row.remotePid), row.tls.isEmpty ? nil : row.tls, row.applicationName, "0",
                String(row.id), row.pinned,
            ])
        }
        return table
    }

    /// SHOW SOCKETS: the connection columns plus buffer positions. Shoal does not keep PgBouncer's packet
    /// buffers, so those read 0.
    public static func sockets(_ rows: [ConnectionInfo]) -> ResultTable {
        var table = ResultTable(connectionColumns + " recv_pos:i pkt_pos:i pkt_remain:i send_pos:i send_remain:i pkt_avail:i send_avail:i")
        for row in connections(rows).rows { table.append(row + Array(repeating: "0", count: 7)) }
        return table
    }

    // MARK: Pools

    public static func pools(_ pools: [PoolInfo]) -> ResultTable {
        var table = ResultTable("database user cl_active:i cl_waiting:i cl_active_cancel_req:i cl_waiting_cancel_req:i "
            + "sv_active:i sv_active_cancel:i sv_being_canceled:i sv_idle:i sv_used:i sv_tested:i sv_login:i maxwait:i "
            + "maxwait_us:i pool_mode load_balance_hosts")
        for pool in pools.sorted(by: { ($0.key.displayDatabase, $0.key.user) < ($1.key.displayDatabase, $1.key.user) }) {
            // PgBouncer counts logged-in clients without a server as active too.
            table.append([
                pool.key.displayDatabase, pool.key.user, String(pool.clientsActive + pool.clientsIdle), String(pool.clientsWaiting), "0", "0",
                String(pool.serversActive), "0", "0", String(pool.serversIdle), String(pool.serversUsed),
                String(pool.serversTested), String(pool.serversLogin), String(pool.maxWaitMicros / 1_000_000),
                String(pool.maxWaitMicros % 1_000_000), pool.mode, pool.loadBalanceHosts,
            ])
        }
        return table
    }

    // MARK: Hosts (Shoal)

    /// SHOW HOSTS: every backend host of a routed database, with what the health checks found.
    public static func hosts(_ hosts: [HostStatus], connections: (HostAddress) -> Int) -> ResultTable {
        var table = ResultTable("host port:i role state lag_ms:i in_rotation:i last_check:T check_ms:n failures:i promotions:i "
            + "server_connections:i reason")
        for host in hosts {
            table.append([
                host.address.host, String(host.address.port), host.role.rawValue, host.health.rawValue,
                String(Int((host.lag * 1000).rounded())), host.health == .up && !host.lagging ? "1" : "0",
                host.lastCheck.map { ConsoleFormat.timestamp(Date(timeIntervalSince1970: $0)) },
                host.checkLatency.map { String(format: "%.3f", $0 * 1000) }, String(host.consecutiveFailures),
                String(host.promotions), String(connections(host.address)), host.reason,
            ])
        }
        return table
    }

    // MARK: Statistics

    private static let totalNames = ["server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
                                     "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count",
                                     "bind_count", "client_login_count"]
    private static let averageNames = ["server_assignment_count", "xact_count", "query_count", "recv", "sent", "xact_time",
                                       "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
                                       "client_login_count"]

    /// SHOW STATS: per database, totals then averages over the last stats_period.
    public static func stats(totals: [String: TrafficCounters], averages: [String: [UInt64]]) -> ResultTable {
        let columns = ["database"] + totalNames.map { "total_" + ($0 == "bytes_received" ? "received" : $0 == "bytes_sent" ? "sent" : $0) + ":n" }
            + averageNames.map { "avg_\($0):n" }
        var table = ResultTable(columns.joined(separator: " "))
        for database in totals.keys.sorted() {
            let average = averages[database] ?? Array(repeating: 0, count: 12)
            table.append([database] + totals[database]!.pgbouncerTotals.map(String.init) + average.map(String.init))
        }
        return table
    }

    public static func statsTotals(_ totals: [String: TrafficCounters]) -> ResultTable {
        var table = ResultTable((["database"] + totalNames.map { "\($0):n" }).joined(separator: " "))
        for database in totals.keys.sorted() {
            table.append([database] + totals[database]!.pgbouncerTotals.map(String.init))
        }
        return table
    }

    public static func statsAverages(databases: [String], averages: [String: [UInt64]]) -> ResultTable {
        let names = totalNames.prefix(8).map { $0 } + ["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"]
        var table = ResultTable((["database"] + names.map { "\($0):n" }).joined(separator: " "))
        for database in databases.sorted() {
            table.append([database] + (averages[database] ?? Array(repeating: 0, count: 12)).map(String.init))
        }
        return table
    }

    /// SHOW TOTALS: the process-wide totals and averages as name/value rows.
    public static func totals(_ all: TrafficCounters, averages: [UInt64]) -> ResultTable {
        var table = ResultTable("name value:n")
        let names = ["server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes", "xact_time",
                     "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count",
                     "client_login_count"]
        for (name, value) in zip(names, all.pgbouncerTotals) { table.append(["total_\(name)", String(value)]) }
        for (name, value) in zip(names, averages) { table.append(["avg_\(name)", String(value)]) }
        return table
    }

    // MARK: Configuration

    public struct DatabaseUsage: Sendable {
        public var currentConnections = 0
        public var currentClientConnections = 0
        public var paused = false
        public var disabled = false
        public init() {}
    }

    /// SHOW DATABASES: every configured database, then the console's own.
    public static func databases(config: ShoalConfig, usage: [String: DatabaseUsage]) -> ResultTable {
        var table = ResultTable("name host port:i database force_user pool_size:i min_pool_size:i reserve_pool_size:i "
            + "server_lifetime:i pool_mode load_balance_hosts max_connections:i current_connections:i "
            + "max_client_connections:i current_client_connections:i paused:i disabled:i")
        var names = Set(config.databases.keys)
        // Databases reached through the `*` entry appear once they have a pool, as PgBouncer's auto-databases do.
        for name in usage.keys where config.databases["*"] != nil { names.insert(name) }
        for name in names.sorted() {
            guard let entry = config.database(named: name) else { continue }
            let use = usage[name] ?? DatabaseUsage()
            let host = entry.hosts.joined(separator: ",")
            table.append([
                name, host.isEmpty ? nil : host, String(entry.ports.first ?? 5432), entry.dbname ?? name, entry.user,
                String(entry.poolSize ?? config.defaultPoolSize), String(entry.minPoolSize ?? config.minPoolSize),
                String(entry.reservePoolSize ?? config.reservePoolSize), String(Int(entry.serverLifetime ?? config.serverLifetime)),
                entry.poolMode?.rawValue, entry.hosts.count > 1 ? (entry.loadBalanceHosts ?? "round-robin") : nil,
                String(entry.maxDbConnections ?? config.maxDbConnections), String(use.currentConnections),
                String(entry.maxDbClientConnections ?? config.maxDbClientConnections), String(use.currentClientConnections),
                use.paused ? "1" : "0", use.disabled ? "1" : "0",
            ])
        }
        table.append(["pgbouncer", nil, String(config.listenPort), "pgbouncer", "pgbouncer", "2", "0", "0", "0", "statement",
                      nil, "0", "0", "0", String(usage["pgbouncer"]?.currentClientConnections ?? 0), "0", "0"])
        return table
    }

    public struct UserUsage: Sendable {
        public var currentConnections = 0
        public var currentClientConnections = 0
        public init() {}
    }

    /// SHOW USERS: users of the auth file, of [users] and of live pools.
    public static func users(config: ShoalConfig, names: [String], usage: [String: UserUsage]) -> ResultTable {
        var table = ResultTable("name pool_size reserve_pool_size pool_mode max_user_connections:i current_connections:i "
            + "max_user_client_connections:i current_client_connections:i")
        for name in Set(names).union(config.users.keys).union(usage.keys).sorted() {
            let entry = config.users[name]
            let use = usage[name] ?? UserUsage()
            table.append([
                name, entry?.poolSize.map { pad($0) } ?? "", entry?.reservePoolSize.map { pad($0) } ?? "",
                entry?.poolMode?.rawValue, String(entry?.maxUserConnections ?? config.maxUserConnections),
                String(use.currentConnections), String(entry?.maxUserClientConnections ?? config.maxUserClientConnections),
                String(use.currentClientConnections),
            ])
        }
        return table
    }

    /// PgBouncer prints these with `%9d`.
    private static func pad(_ value: Int) -> String {
        let text = String(value)
        return String(repeating: " ", count: max(0, 9 - text.count)) + text
    }

    public static func config(_ settings: [ConfigLoader.Setting]) -> ResultTable {
        var table = ResultTable("key value default changeable")
        for setting in settings {
            table.append([setting.key, setting.value, setting.defaultValue, setting.changeable ? "yes" : "no"])
        }
        return table
    }

    // MARK: Small ones

    public static func version(shoal: String) -> ResultTable {
        var table = ResultTable("version")
        // Tools match `PgBouncer x.y.z`; Shoal's own version follows.
        table.append(["PgBouncer \(pgbouncerVersion) (Shoal \(shoal))"])
        return table
    }

    public static func state(active: Bool, paused: Bool, suspended: Bool) -> ResultTable {
        var table = ResultTable("key value")
        table.append(["active", active ? "yes" : "no"])
        table.append(["paused", paused ? "yes" : "no"])
        table.append(["suspended", suspended ? "yes" : "no"])
        return table
    }

    public struct ListCounts: Sendable {
        public var databases = 0, users = 0, pools = 0
        public var freeClients = 0, usedClients = 0, loginClients = 0, freeServers = 0, usedServers = 0
        public init() {}
    }

    public static func lists(_ counts: ListCounts) -> ResultTable {
        var table = ResultTable("list items:i")
        let rows: [(String, Int)] = [
            ("databases", counts.databases), ("users", counts.users), ("peers", 0), ("pools", counts.pools),
            ("peer_pools", 0), ("free_clients", counts.freeClients), ("used_clients", counts.usedClients),
            ("login_clients", counts.loginClients), ("free_servers", counts.freeServers),
            ("used_servers", counts.usedServers), ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0), ("dns_pending", 0),
        ]
        for (name, count) in rows { table.append([name, String(count)]) }
        return table
    }

    /// SHOW MEM: Shoal has no slab allocator; it reports its connection objects in the same columns.
    public static func mem(clients: Int, servers: Int, pools: Int) -> ResultTable {
        var table = ResultTable("name size:i used:i free:i memtotal:i")
        for (name, size, used) in [("client_connections", 4096, clients), ("server_connections", 4096, servers), ("pools", 1024, pools)] {
            table.append([name, String(size), String(used), "0", String(size * used)])
        }
        return table
    }

    /// SHOW FDS serves PgBouncer's online restart (-R), which Shoal does not do: the columns, no rows.
    public static func fds() -> ResultTable {
        ResultTable("fd:i task user database addr port:i cancel:I link:i client_encoding std_strings datestyle timezone "
            + "password scram_client_key:b scram_server_key:b")
    }

    /// The fake SHOW of session parameters that drivers issue on connect.
    public static func fakeParameter(_ name: String) -> ResultTable? {
        let values = ["client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
                      "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT"]
        guard let value = values[name] else { return nil }
        var table = ResultTable(name)
        table.append([value])
        return table
    }

    public static let help = """
        SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION
        SHOW PEERS|PEER_POOLS
        SHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE
        SHOW DNS_HOSTS|DNS_ZONES
        SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
        SHOW HOSTS
        SET key = arg
        RELOAD
        PAUSE [<db>]
        RESUME [<db>]
        DISABLE <db>
        ENABLE <db>
        RECONNECT [<db>]
        KILL <db>
        KILL_CLIENT <client_id>
        SUSPEND
        SHUTDOWN
        SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
        WAIT_CLOSE [<db>]
        """
}

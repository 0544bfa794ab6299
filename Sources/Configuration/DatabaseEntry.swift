/// One `[databases]` line.
public struct DatabaseEntry: Sendable, Equatable {
    public var name: String
    /// Hosts in order. Empty means the Unix socket directory of the pooler (PgBouncer's default).
    public var hosts: [String] = []
    public var ports: [Int] = [5432]
    public var dbname: String?
    public var user: String?
    public var password: String?
    public var authUser: String?
    public var authQuery: String?
    public var authDbname: String?
    public var poolSize: Int?
    public var minPoolSize: Int?
    public var reservePoolSize: Int?
    public var maxDbConnections: Int?
    public var maxDbClientConnections: Int?
    public var serverLifetime: Double?
    public var poolMode: PoolMode?
    public var queryWaitTimeout: Double?
    public var connectQuery: String?
    public var loadBalanceHosts: String?
    /// Which hosts the entry's pools use (Shoal; libpq's key). Nil is `any`.
    public var targetSessionAttrs: TargetSessionAttrs?
    /// Discover the instances of an Aurora cluster from `aurora_replica_status()` (Shoal). Nil: the global key.
    public var auroraTopology: Bool?
    /// client_encoding, datestyle, timezone, application_name: added to the server's startup packet.
    public var startupParameters: [(String, String)] = []
    public var file: String = ""
    public var line: Int = 0

    public init(name: String) { self.name = name }

    public static func == (a: DatabaseEntry, b: DatabaseEntry) -> Bool {
        a.name == b.name && a.hosts == b.hosts && a.ports == b.ports && a.dbname == b.dbname && a.user == b.user
            && a.password == b.password && a.poolSize == b.poolSize && a.poolMode == b.poolMode
            && a.startupParameters.map { "\($0)=\($1)" } == b.startupParameters.map { "\($0)=\($1)" }
            && a.minPoolSize == b.minPoolSize && a.reservePoolSize == b.reservePoolSize && a.maxDbConnections == b.maxDbConnections
            && a.connectQuery == b.connectQuery && a.authUser == b.authUser && a.authQuery == b.authQuery
            && a.targetSessionAttrs == b.targetSessionAttrs && a.auroraTopology == b.auroraTopology
            && a.loadBalanceHosts == b.loadBalanceHosts
    }

    /// The configured backends, pairing hosts with ports as libpq does: one port for every host, or one each.
    /// `socketDirectory` stands in when no host is given (PgBouncer's default).
    public func addresses(socketDirectory: String) -> [HostAddress] {
        guard !hosts.isEmpty else { return [HostAddress(host: socketDirectory, port: ports.first ?? 5432)] }
        return hosts.enumerated().map { index, host in
            HostAddress(host: host, port: ports.count == hosts.count ? ports[index] : ports.first ?? 5432)
        }
    }

    /// Whether pools of this entry choose among hosts by role and health rather than using the only one.
    /// Routing by role and health asks for it: `target_session_attrs` or Aurora's topology. A plain host list
    /// is PgBouncer's: hosts taken in turn (load_balance_hosts), no health-check connections, no roles.
    public var isRouted: Bool { targetSessionAttrs != nil || auroraTopology == true }

    static let knownKeys: Set<String> = [
        "host", "port", "dbname", "user", "password", "auth_user", "auth_query", "auth_dbname", "pool_size",
        "min_pool_size", "reserve_pool_size", "reserve_pool", "max_db_connections", "max_db_client_connections",
        "server_lifetime", "pool_mode", "query_wait_timeout", "connect_query", "load_balance_hosts",
        "target_session_attrs", "aurora_topology", "client_encoding", "datestyle", "timezone", "application_name",
    ]

    /// Parses the connection string; errors carry PgBouncer's wording.
    public static func parse(name: String, value: String) throws(ConnectionString.SyntaxError) -> DatabaseEntry {
        var entry = DatabaseEntry(name: name)
        for (key, value) in try ConnectionString.parse(value) {
            func int() throws(ConnectionString.SyntaxError) -> Int {
                guard let number = Int(value) else { throw .init(message: "invalid value \"\(value)\" for \(key): expected an integer") }
                return number
            }
            switch key {
            case "host": entry.hosts = value.split(separator: ",").map(String.init)
            case "port":
                var ports: [Int] = []
                for part in value.split(separator: ",") {
                    guard let port = Int(part), port > 0, port < 65536 else { throw .init(message: "invalid port: \(value)") }
                    ports.append(port)
                }
                entry.ports = ports
            case "dbname": entry.dbname = value
            case "user": entry.user = value
            case "password": entry.password = value
            case "auth_user": entry.authUser = value
            case "auth_query": entry.authQuery = value
            case "auth_dbname": entry.authDbname = value
            case "pool_size": let n = try int(); entry.poolSize = n < 0 ? nil : n
            case "min_pool_size": let n = try int(); entry.minPoolSize = n < 0 ? nil : n
            case "reserve_pool_size", "reserve_pool": let n = try int(); entry.reservePoolSize = n < 0 ? nil : n
            case "max_db_connections": let n = try int(); entry.maxDbConnections = n <= 0 ? nil : n
            case "max_db_client_connections": let n = try int(); entry.maxDbClientConnections = n <= 0 ? nil : n
            case "server_lifetime": let n = try int(); entry.serverLifetime = n <= 0 ? nil : Double(n)
            case "query_wait_timeout": entry.queryWaitTimeout = Double(try int())
            case "pool_mode":
                guard let mode = PoolMode(rawValue: value.lowercased()) else { throw .init(message: "invalid pool mode: \(value)") }
                entry.poolMode = mode
            case "connect_query": entry.connectQuery = value
            case "load_balance_hosts":
                guard ["round-robin", "disable"].contains(value.lowercased()) else {
                    throw .init(message: "invalid load_balance_hosts: \(value)")
                }
                entry.loadBalanceHosts = value.lowercased()
            case "target_session_attrs":
                guard let target = TargetSessionAttrs(rawValue: value.lowercased()) else {
                    throw .init(message: "invalid target_session_attrs: \(value)")
                }
                entry.targetSessionAttrs = target
            case "aurora_topology":
                switch value.lowercased() {
                case "on", "1", "true", "yes": entry.auroraTopology = true
                case "off", "0", "false", "no": entry.auroraTopology = false
                default: throw .init(message: "invalid aurora_topology: \(value)")
                }
            case "client_encoding", "datestyle", "timezone", "application_name":
                entry.startupParameters.append((key, value))
            default:
                throw .init(message: "unrecognized connection parameter: \(key)")
            }
        }
        if entry.ports.count > 1 && entry.ports.count != max(1, entry.hosts.count) {
            throw .init(message: "could not match \(entry.ports.count) port numbers to \(entry.hosts.count) hosts")
        }
        return entry
    }
}

/// One `[users]` line.
public struct UserEntry: Sendable, Equatable {
    public var name: String
    public var poolMode: PoolMode?
    public var poolSize: Int?
    public var reservePoolSize: Int?
    public var maxUserConnections: Int?
    public var maxUserClientConnections: Int?
    public var queryTimeout: Double?
    public var queryWaitTimeout: Double?
    public var idleTransactionTimeout: Double?
    public var transactionTimeout: Double?
    public var clientIdleTimeout: Double?

    public init(name: String) { self.name = name }

    public static func parse(name: String, value: String) throws(ConnectionString.SyntaxError) -> UserEntry {
        var entry = UserEntry(name: name)
        for (key, value) in try ConnectionString.parse(value) {
            func int() throws(ConnectionString.SyntaxError) -> Int {
                guard let number = Int(value) else { throw .init(message: "invalid value \"\(value)\" for \(key): expected an integer") }
                return number
            }
            switch key {
            case "pool_mode":
                guard let mode = PoolMode(rawValue: value.lowercased()) else { throw .init(message: "invalid pool mode: \(value)") }
                entry.poolMode = mode
            case "pool_size": let n = try int(); entry.poolSize = n < 0 ? nil : n
            case "reserve_pool_size": let n = try int(); entry.reservePoolSize = n < 0 ? nil : n
            case "max_user_connections": let n = try int(); entry.maxUserConnections = n <= 0 ? nil : n
            case "max_user_client_connections": let n = try int(); entry.maxUserClientConnections = n <= 0 ? nil : n
            case "query_timeout": let n = try int(); entry.queryTimeout = n <= 0 ? nil : Double(n)
            case "query_wait_timeout": let n = try int(); entry.queryWaitTimeout = n <= 0 ? nil : Double(n)
            case "idle_transaction_timeout": let n = try int(); entry.idleTransactionTimeout = n <= 0 ? nil : Double(n)
            case "client_idle_timeout": let n = try int(); entry.clientIdleTimeout = n <= 0 ? nil : Double(n)
            case "transaction_timeout": let n = try int(); entry.transactionTimeout = n <= 0 ? nil : Double(n)
            default: throw .init(message: "unrecognized user parameter: \(key)")
            }
        }
        return entry
    }
}

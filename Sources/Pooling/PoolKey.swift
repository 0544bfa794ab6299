import Configuration

/// What a pool is for. Clients of the read-only listener get pools of their own, served by replicas.
/// The host is not part of the key: a pool of a routed database holds servers on whichever of its hosts fit
/// its target, so that its waiters follow the writer through a failover instead of being stranded in a pool
/// of the old one.
public struct PoolKey: Hashable, Sendable, CustomStringConvertible {
    public var database: String
    public var user: String
    /// Opened through `readonly_listen_port`.
    public var readOnly: Bool
    /// A replication client's own pool (the client's id): its server is dedicated to it, never shared.
    public var dedicatedTo: Int?

    public init(database: String, user: String, readOnly: Bool = false, dedicatedTo: Int? = nil) {
        self.database = database
        self.user = user
        self.readOnly = readOnly
        self.dedicatedTo = dedicatedTo
    }

    /// The shared pool this one belongs with in SHOW POOLS and /metrics (itself, unless dedicated).
    public var shared: PoolKey { PoolKey(database: database, user: user, readOnly: readOnly) }

    /// The database as SHOW POOLS and /metrics label it: read-only pools are told apart from the writer's by
    /// a suffix, so no two rows or series share their labels.
    public var displayDatabase: String { readOnly ? "\(database) (read-only)" : database }

    public var description: String { readOnly ? "\(database)/\(user) (read-only)" : "\(database)/\(user)" }
}

/// A pool's limits and modes resolved from the config (user > database > global), fixed for one config snapshot.
public struct PoolSettings: Sendable, Equatable {
    public var mode: PoolMode
    public var poolSize: Int
    public var minPoolSize: Int
    public var reservePoolSize: Int
    public var reservePoolTimeout: Double
    public var queryWaitTimeout: Double
    /// query_wait_notify: seconds queued before a waiter is told so (0: never).
    public var queryWaitNotify: Double = 0
    public var serverLifetime: Double
    public var serverIdleTimeout: Double
    public var serverLoginRetry: Double
    public var serverCheckDelay: Double
    public var serverRoundRobin: Bool
    /// server_check_query ("" when checks are off; PgBouncer's "<empty>" becomes an empty query string " ").
    public var serverCheckQuery: String
    /// cross_thread_reuse_delay: with room in the pool and nothing idle on the client's own EventLoop, an idle
    /// server on another loop is used instead of dialing when it has been idle at least this long (seconds; 0:
    /// always, PgBouncer's count of logins; longer: a loop dials its own server, a login more per loop for no
    /// thread hop per message while the other loop's server was in recent use).
    public var crossThreadReuseDelay: Double = 0

    public init(mode: PoolMode = .transaction, poolSize: Int = 20, minPoolSize: Int = 0, reservePoolSize: Int = 0,
                reservePoolTimeout: Double = 5, queryWaitTimeout: Double = 120, serverLifetime: Double = 3600,
                serverIdleTimeout: Double = 600, serverLoginRetry: Double = 15, serverCheckDelay: Double = 30,
                serverRoundRobin: Bool = false, serverCheckQuery: String = "") {
        self.mode = mode
        self.poolSize = poolSize
        self.minPoolSize = minPoolSize
        self.reservePoolSize = reservePoolSize
        self.reservePoolTimeout = reservePoolTimeout
        self.queryWaitTimeout = queryWaitTimeout
        self.serverLifetime = serverLifetime
        self.serverIdleTimeout = serverIdleTimeout
        self.serverLoginRetry = serverLoginRetry
        self.serverCheckDelay = serverCheckDelay
        self.serverRoundRobin = serverRoundRobin
        self.serverCheckQuery = serverCheckQuery
    }

    public init(config: ShoalConfig, database: DatabaseEntry, user: String) {
        let userEntry = config.users[user]
        self.init(
            mode: userEntry?.poolMode ?? database.poolMode ?? config.poolMode,
            poolSize: userEntry?.poolSize ?? database.poolSize ?? config.defaultPoolSize,
            minPoolSize: database.minPoolSize ?? config.minPoolSize,
            reservePoolSize: userEntry?.reservePoolSize ?? database.reservePoolSize ?? config.reservePoolSize,
            reservePoolTimeout: config.reservePoolTimeout,
            queryWaitTimeout: userEntry?.queryWaitTimeout ?? database.queryWaitTimeout ?? config.queryWaitTimeout,
            serverLifetime: database.serverLifetime ?? config.serverLifetime,
            serverIdleTimeout: config.serverIdleTimeout,
            serverLoginRetry: config.serverLoginRetry,
            serverCheckDelay: config.serverCheckDelay,
            serverRoundRobin: config.serverRoundRobin,
            serverCheckQuery: config.serverCheckQuery == "<empty>" ? ";" : config.serverCheckQuery
        )
        queryWaitNotify = Double(config.queryWaitNotify)
        crossThreadReuseDelay = config.crossThreadReuseDelay
    }
}

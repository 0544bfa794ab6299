import Configuration

/// What a pool is for. A host joins this key when a database entry names several (writer and replicas).
public struct PoolKey: Hashable, Sendable, CustomStringConvertible {
    public var database: String
    public var user: String

    public init(database: String, user: String) {
        self.database = database
        self.user = user
    }

    public var description: String { "\(database)/\(user)" }
}

/// A pool's limits and modes resolved from the config (user > database > global), fixed for one config snapshot.
public struct PoolSettings: Sendable, Equatable {
    public var mode: PoolMode
    public var poolSize: Int
    public var minPoolSize: Int
    public var reservePoolSize: Int
    public var reservePoolTimeout: Double
    public var queryWaitTimeout: Double
    public var serverLifetime: Double
    public var serverIdleTimeout: Double
    public var serverLoginRetry: Double
    public var serverCheckDelay: Double
    public var serverRoundRobin: Bool
    /// server_check_query ("" when checks are off; PgBouncer's "<empty>" becomes an empty query string " ").
    public var serverCheckQuery: String

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
    }
}

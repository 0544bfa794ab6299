import Configuration
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Pooling
import PostgresWire

/// State shared by every connection of one Shoal process: the config snapshot, the auth file, the pools,
/// the cancel keys, and the EventLoops. Configuration is an immutable snapshot swapped whole on reload.
public final class ShoalRuntime: @unchecked Sendable {
    let group: MultiThreadedEventLoopGroup
    let loops: [EventLoop]
    let logger: Logger
    let cancelRegistry = CancelRegistry()
    let budget = ConnectionBudget()
    /// Health, role and lag of the hosts of routed databases; created with the runtime, started by the server.
    private(set) var hosts: HostMonitor!
    private let configBox: NIOLockedValueBox<ConfigSnapshot>
    private let userListBox: NIOLockedValueBox<UserList>
    private let poolsLock = NIOLock()
    private var pools: [PoolKey: Pool] = [:]
    private let clientCountBox = NIOLockedValueBox(0)
    /// SCRAM verifiers derived from plaintext auth_file passwords, so each login does not pay PBKDF2.
    private let verifierCache = NIOLockedValueBox<[String: SCRAM.Verifier]>([:])
    private let parsedVerifiers = NIOLockedValueBox<[String: SCRAM.Verifier]>([:])
    private let nextConnectionID = NIOLockedValueBox(0)

    /// One per EventLoop, same index as `loops`.
    let sweepers: [ClientSweeper]
    /// One per EventLoop, same index as `loops`; each is touched on its own loop only.
    let registries: [LoopRegistry]
    /// PAUSE / SUSPEND / DISABLE / SHUTDOWN state, read at login and by the console.
    let lifecycle = NIOLockedValueBox(LifecycleState())
    /// TLS contexts of the current config (rebuilt on reload; a failed rebuild keeps the old ones).
    let tls = NIOLockedValueBox(TLSContexts.none)
    /// auth_query's connections, a few per target, kept open between lookups.
    let authLookups: AuthLookups
    /// The fleet's other processes, for cancel requests that land on the wrong one. Set once, at the end of init
    /// (it needs `self`), before any EventLoop can read it; never a `lazy var`, which races between loops.
    private(set) var peers: PeerDirectory!

    /// A client's cancel key, with this process's peer id in it when peering is on.
    func registerCancelKey(for client: ClientConnection) -> (processID: Int32, secretKey: Int32) {
        let snapshot = self.snapshot
        let peerID = snapshot.config.peerID
        return cancelRegistry.register(client, peerID: peerID, peering: peerID > 0 || !snapshot.config.peersDNS.isEmpty)
    }
    /// Server-side names of prepared statements, shared by every pool (one per distinct text and types).
    let statementNames = StatementNames()
    /// Open admin console sessions (SUSPEND resumes when the last one goes).
    let consoleSessions = NIOLockedValueBox(0)
    /// Per-database SHOW STATS_AVERAGES figures of the last stats_period.
    let statsAverages = NIOLockedValueBox<[String: [UInt64]]>([:])
    /// When the process started, for SHOW STATS averages and uptime.
    let startedAt = NIODeadline.now()
    /// The object that owns the listeners, for the console's RELOAD, SHUTDOWN, SUSPEND.
    weak var controller: (any ServerController)?
    private let readyBox = NIOLockedValueBox(false)
    /// Listening with a loaded config and not shutting down: what /readyz reports.
    var ready: Bool {
        get { readyBox.withLockedValue { $0 } && lifecycle.withLockedValue { $0.shutdown == nil } }
        set { readyBox.withLockedValue { $0 = newValue } }
    }
    /// Called when the process should end (SHUTDOWN, or a WAIT_FOR_* shutdown that has finished).
    public var onExit: @Sendable (String) -> Void = { _ in }

    public init(config: ShoalConfig, userList: UserList, group: MultiThreadedEventLoopGroup, logger: Logger) {
        self.group = group
        self.loops = Array(group.makeIterator())
        self.sweepers = loops.map { ClientSweeper(eventLoop: $0) }
        self.registries = loops.map { _ in LoopRegistry() }
        self.logger = logger
        self.configBox = NIOLockedValueBox(ConfigSnapshot(config))
        self.userListBox = NIOLockedValueBox(userList)
        self.authLookups = AuthLookups(eventLoop: loops[0])
        self.hosts = HostMonitor(runtime: self, eventLoop: loops[0])
        self.peers = PeerDirectory(runtime: self)
    }

    /// The current snapshot: one lock and one retain. Read fields through it (`snapshot.config.x`) rather than
    /// copying the whole `ShoalConfig` struct, which retains every string and collection in it.
    var snapshot: ConfigSnapshot { configBox.withLockedValue { $0 } }
    public var config: ShoalConfig { snapshot.config }
    var userList: UserList { userListBox.withLockedValue { $0 } }

    func loopIndex(of eventLoop: EventLoop) -> Int {
        loops.firstIndex { $0 === eventLoop } ?? 0
    }

    func makeConnectionID() -> Int {
        nextConnectionID.withLockedValue { $0 += 1; return $0 }
    }

    // MARK: Clients

    /// Counts a client in, or refuses it past max_client_conn.
    func admitClient() -> Bool {
        let limit = config.maxClientConn
        return clientCountBox.withLockedValue { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    let clientLimits = ClientLimits()
    /// The Unix sockets' files, removed at exit only while still Shoal's own (see `UnixListenSocket`).
    let unixSockets = NIOLockedValueBox<[UnixListenSocket]>([])

    /// max_pending_logins_per_address and max_failed_logins_per_minute (limits read from the current config).
    private let loginLimits = NIOLockedValueBox(LoginLimits())

    enum LoginAdmission {
        /// No per-address limit is set: nothing is counted (no lock taken on the connect path).
        case unlimited
        /// Counted as waiting to log in until `loginEnded`.
        case counted
        case refused(LoginLimits.Refusal)
    }

    /// A TCP client from `address` was accepted.
    func loginStarted(from address: String) -> LoginAdmission {
        let snapshot = self.snapshot
        let pendingLimit = snapshot.config.maxPendingLoginsPerAddress
        let failureLimit = snapshot.config.maxFailedLoginsPerMinute
        guard pendingLimit > 0 || failureLimit > 0 else { return .unlimited }
        let now = NIODeadline.now().uptimeNanoseconds / 1_000_000_000
        return loginLimits.withLockedValue { limits in
            limits.maxPendingPerAddress = pendingLimit
            limits.maxFailuresPerMinute = failureLimit
            return limits.connectionAccepted(from: address, nowSeconds: now).map(LoginAdmission.refused) ?? .counted
        }
    }

    func loginEnded(from address: String) { loginLimits.withLockedValue { $0.loginEnded(from: address) } }

    func loginFailed(from address: String) {
        guard snapshot.config.maxFailedLoginsPerMinute > 0 else { return }
        let now = NIODeadline.now().uptimeNanoseconds / 1_000_000_000
        loginLimits.withLockedValue { $0.loginFailed(from: address, nowSeconds: now) }
    }

    func clientLeft() {
        clientCountBox.withLockedValue { $0 -= 1 }
    }

    public var clientCount: Int { clientCountBox.withLockedValue { $0 } }

    /// Client connection objects still in memory, closed ones included until they are freed (for leak tests).
    public static var clientObjectsAlive: Int { ClientConnection.alive.withLockedValue { $0 } }

    /// A stored `SCRAM-SHA-256$…` secret, parsed once (nil if the secret is not a verifier).
    func parsedVerifier(_ secret: String) -> SCRAM.Verifier? {
        guard secret.hasPrefix("SCRAM-SHA-256$") else { return nil }
        if let cached = parsedVerifiers.withLockedValue({ $0[secret] }) { return cached }
        let parsed = SCRAM.Verifier(parsing: secret)
        if let parsed { parsedVerifiers.withLockedValue { $0[secret] = parsed } }
        return parsed
    }

    /// The salts of users without a stored verifier; one key per process.
    let salts = SaltSource.random()

    /// The verifier for a plaintext auth-file password, with this user's own salt (cached: PBKDF2 is the cost).
    func scramVerifier(user: String, password: String) -> SCRAM.Verifier {
        let iterations = snapshot.config.scramIterations
        let key = "\(user)\u{0}\(password)\u{0}\(iterations)"
        if let cached = verifierCache.withLockedValue({ $0[key] }) { return cached }
        let verifier = SCRAM.Verifier(password: password, salt: salts.salt(for: user), iterations: iterations)
        verifierCache.withLockedValue { $0[key] = verifier }
        return verifier
    }

    // MARK: Pools

    /// The pool for `key`, made if needed, with the logging-in client counted in it — under the pools lock, so a
    /// pool found unused and freed by the janitor (which checks and removes under the same lock) is never one
    /// a client is joining.
    func pool(for key: PoolKey, database: DatabaseEntry) -> Pool {
        poolsLock.withLock {
            if let pool = pools[key] {
                pool.withState { $0.clientJoined() }
                return pool
            }
            let config = self.config
            if config.databases[key.database] == nil, !pools.keys.contains(where: { $0.database == key.database }) {
                logger.info("registered new auto-database: \(key.database)")
            }
            let pool = Pool(key: key, database: database, settings: PoolSettings(config: config, database: database, user: key.user),
                            loopCount: loops.count, routed: hosts.isRouted(database, config))
            pool.serverSecret = initialServerSecret(database: database, user: key.user)
            if lifecycle.withLockedValue({ $0.isPaused(database: key.database) }) {
                _ = pool.withState { $0.pause() }
            }
            pool.withState { $0.clientJoined() }
            pools[key] = pool
            return pool
        }
    }

    /// A replication client's own pool (PgBouncer ≥ 1.23: "a client and server replication connection form a
    /// strong pair"): one server, dialled with the client's startup parameters and `replication`, never shared or
    /// reused — released, it closes (server_lifetime 0) — and the pool goes with its client. It counts in
    /// max_db_connections, max_user_connections and max_host_connections like any other.
    func replicationPool(key: PoolKey, client: Int, database: DatabaseEntry, replication: String,
                         parameters: [(String, String)]) -> Pool {
        let config = snapshot.config
        var entry = database
        entry.connectQuery = nil // a walsender takes replication commands; connect_query is for pooled servers
        let given = Set(parameters.map { $0.0.lowercased() })
        entry.startupParameters = entry.startupParameters.filter { !given.contains($0.0.lowercased()) } + parameters
            + [("replication", replication)]
        var settings = PoolSettings(config: config, database: database, user: key.user)
        settings.mode = .session
        settings.poolSize = 1
        settings.minPoolSize = 0
        settings.reservePoolSize = 0
        settings.serverLifetime = 0
        settings.serverCheckQuery = ""
        var dedicated = key
        dedicated.dedicatedTo = client
        let pool = Pool(key: dedicated, database: entry, settings: settings, loopCount: loops.count, routed: hosts.isRouted(database, config))
        pool.serverSecret = initialServerSecret(database: database, user: key.user)
        pool.withState { $0.clientJoined() }
        poolsLock.withLock { pools[dedicated] = pool }
        return pool
    }

    /// The replication client of a dedicated pool is gone: a dial still under way is discarded when it lands,
    /// an idle server closes, and the pool is forgotten.
    func dropDedicatedPool(_ pool: Pool) {
        guard pool.key.dedicatedTo != nil else { return }
        for server in pool.withState({ $0.reconnect(now: NIODeadline.now().uptimeNanoseconds) }) {
            server.close(reason: "replication client gone")
        }
        removePool(pool)
    }

    var allPools: [Pool] { poolsLock.withLock { Array(pools.values) } }

    func existingPool(_ key: PoolKey) -> Pool? { poolsLock.withLock { pools[key] } }

    /// Closes one idle server of another pool with the same database or user, to free a shared slot.
    func evictIdleServer(sharingWith pool: Pool) {
        let others = allPools.filter { $0 !== pool && ($0.key.database == pool.key.database || $0.key.user == pool.key.user) }
        evictIdleServer(fromFirstOf: others, reason: "evicted for max_db_connections/max_user_connections")
    }

    /// Closes the idle server unused longest of the first of `pools` that has one (on `host` when given).
    func evictIdleServer(fromFirstOf pools: [Pool], on host: HostAddress? = nil, reason: String) {
        for pool in pools {
            if let victim = pool.withState({ $0.takeOneIdle { host == nil || $0.hostAddress == host } }) {
                victim.close(reason: reason)
                return
            }
        }
    }

    /// The password for server logins known from the config: the database entry's, else the auth file's.
    func initialServerSecret(database: DatabaseEntry, user: String) -> ServerLoginSecret {
        if let password = database.password, database.user == nil || database.user == user {
            return .password(password)
        }
        return ServerLoginSecret(authFileSecret: userList.secrets[user])
    }

    // MARK: Reload

    /// Rebuilds the TLS contexts for `config`. On failure the running ones stay and the reason is returned.
    @discardableResult
    func reloadTLS(_ config: ShoalConfig) -> String? {
        do {
            let contexts = try TLSContexts.build(config)
            tls.withLockedValue { $0 = contexts }
            return nil
        } catch {
            logger.error("\(error)")
            logger.warning("TLS settings could not be applied, still using old configuration")
            return "TLS settings could not be applied, still using old configuration"
        }
    }

    /// Swaps in a new config and auth file; pools pick up new limits at once, servers keep running.
    public func apply(config: ShoalConfig, userList: UserList) {
        configBox.withLockedValue { $0 = ConfigSnapshot(config) }
        userListBox.withLockedValue { $0 = userList }
        verifierCache.withLockedValue { $0.removeAll() }
        parsedVerifiers.withLockedValue { $0.removeAll() }
        for pool in allPools {
            guard let database = config.database(named: pool.key.database) else {
                // Dropped from the config: its clients go, as PgBouncer's do, and so does the pool.
                logger.warning("dropping database '\(pool.key.database)' as it does not exist anymore or inactive auto-database")
                kill(pool: pool, reason: "database removed")
                removePool(pool)
                continue
            }
            // A replication client's pool keeps the entry its server was dialled with, for the client's life.
            if pool.key.dedicatedTo != nil { continue }
            let old = pool.database
            let wasRouted = pool.routed
            pool.update(database: database, settings: PoolSettings(config: config, database: database, user: pool.key.user),
                        routed: hosts.isRouted(database, config))
            if old.hosts != database.hosts || old.ports != database.ports || old.dbname != database.dbname
                || old.targetSessionAttrs != database.targetSessionAttrs || wasRouted != pool.routed
                || old.user != database.user || old.password != database.password {
                // Where or as whom to connect changed: servers of the old entry close as they come back.
                reconnect(pool: pool)
            }
        }
        hosts.configure(config)
        authLookups.clearCache()
    }

    /// A host changed health, role or lag: idle servers on hosts their pool may no longer use close now (busy
    /// ones close when released), and pools with waiters dial the host that fits now.
    func routingChanged() {
        loops[0].execute { [self] in
            let config = snapshot.config
            let now = NIODeadline.now().uptimeNanoseconds
            for pool in allPools where pool.routed {
                let usable = hosts.usableHosts(for: pool, config: config)
                let stale = pool.withState { state in state.takeIdle { !usable.contains($0.hostAddress) } }
                for server in stale { server.close(reason: "host left the pool's rotation") }
                Janitor.maintain(pool, runtime: self, now: now)
            }
            // Servers kept by sessions and pinned clients between their transactions.
            _ = visitLoops { registry, _ in
                for client in registry.clients.values { client.endSessionIfHostLeft() }
            }
        }
    }

    /// autodb_idle_timeout and pool_idle_timeout, as PgBouncer frees them: a database made through `*` whose pools
    /// have had no clients, no servers and no waiters for autodb_idle_timeout is dropped; any pool unused for
    /// pool_idle_timeout (0 = never) is freed. Checked and removed under the pools lock, where logins join pools.
    func freeUnusedPools(now: UInt64, unusedSince: inout [PoolKey: UInt64]) {
        let config = snapshot.config
        let autodbTimeout = UInt64(config.autodbIdleTimeout * 1e9)
        let poolTimeout = config.poolIdleTimeout > 0 ? UInt64(config.poolIdleTimeout * 1e9) : nil
        var droppedDatabases: [String] = []
        var freedPools: [PoolKey] = []
        poolsLock.withLock {
            var unused: [PoolKey: UInt64] = [:]
            for (key, pool) in pools where key.dedicatedTo == nil && pool.withState({ $0.isUnused }) {
                unused[key] = unusedSince[key] ?? now
            }
            unusedSince = unused
            // Auto-databases: every pool of the database unused that long.
            let byDatabase = Dictionary(grouping: pools.values) { $0.key.database }
            for (name, databasePools) in byDatabase where config.databases[name] == nil {
                let since = databasePools.map { unused[$0.key] }
                guard since.allSatisfy({ $0 != nil }), let latest = since.compactMap({ $0 }).max(), now &- latest >= autodbTimeout else { continue }
                for pool in databasePools { pools[pool.key] = nil; unusedSince[pool.key] = nil }
                droppedDatabases.append(name)
            }
            guard let poolTimeout else { return }
            for (key, since) in unusedSince where now &- since >= poolTimeout {
                pools[key] = nil
                unusedSince[key] = nil
                freedPools.append(key)
            }
        }
        for name in droppedDatabases {
            logger.warning("dropping database '\(name)' as it does not exist anymore or inactive auto-database")
        }
        for key in freedPools {
            logger.info("pool \(key) unused for pool_idle_timeout, freed")
        }
    }

    func removePool(_ pool: Pool) {
        poolsLock.withLock { if pools[pool.key] === pool { pools[pool.key] = nil } }
    }
}

/// An immutable config snapshot plus what every login derives from it.
final class ConfigSnapshot: Sendable {
    let config: ShoalConfig
    /// Lower-cased names of the tracked parameters (the varcache), computed once per config.
    let trackedNames: Set<String>
    let ignoredStartupParameters: Set<String>

    init(_ config: ShoalConfig) {
        self.config = config
        self.trackedNames = Set((ParameterSet.alwaysTracked + config.trackExtraParameters).map { $0.lowercased() })
        self.ignoredStartupParameters = Set(config.ignoreStartupParameters)
    }

    // ShoalConfig's methods, on the snapshot: a method called on `config` (a large struct in this class) was
    // handed a retained copy of the whole configuration — three per login, 0.85 % of Shoal's samples under
    // pgbench -S -C. These pass only the `[databases]` section.

    func isConsoleDatabase(_ name: String) -> Bool { ShoalConfig.isConsoleDatabase(name, databases: config.databases) }

    func database(named name: String) -> DatabaseEntry? { ShoalConfig.database(named: name, in: config.databases) }
}

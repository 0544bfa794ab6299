/// An immutable snapshot of the whole configuration. A reload builds a new one and swaps it in.
public struct ShoalConfig: Sendable {
    // MARK: Listeners
    public var listenAddr: [String] = []
    public var listenPort = 6432
    public var unixSocketDir = "/tmp"
    /// The Unix socket's permission bits and group (PgBouncer's unix_socket_mode, unix_socket_group).
    public var unixSocketMode = 0o777
    public var unixSocketGroup = ""
    /// Per source address: connections waiting to log in at once, and failed logins per minute (0 = no limit).
    public var maxPendingLoginsPerAddress = 0
    public var maxFailedLoginsPerMinute = 0
    /// This process's id among its peers (0: no peering), and the other processes of the fleet (`[peers]`):
    /// a CancelRequest for a client of another peer is forwarded there (PgBouncer's peering).
    public var peerID = 0
    public var peers: [Int: PeerEntry] = [:]
    /// Shoal: a DNS name whose addresses are every replica (a Kubernetes headless Service), re-resolved every
    /// 10 s; a CancelRequest none of this process's clients owns is sent to all of them, on listen_port.
    public var peersDNS = ""
    /// PBKDF2 rounds of the SCRAM verifiers Shoal derives (plaintext auth-file passwords, and the throwaway one
    /// of unknown users), PgBouncer's scram_iterations.
    public var scramIterations = 4096
    /// Seconds a logged-in client waits for a server before it is told so with a NOTICE (once per wait; 0 = never).
    public var queryWaitNotify = 5
    /// Sent to every client as a NOTICE once it is logged in (PgBouncer's login_notify_message).
    public var loginNotifyMessage = ""
    public var listenBacklog = 128

    // MARK: Authentication
    public var authType: AuthType = .md5
    public var authFile: String?
    /// auth_hba_file, and its rules as read when the config was loaded or SET (auth_type = hba only).
    public var authHbaFile: String?
    public var hbaRules: HBARules?
    public var authUser: String?
    public var authQuery = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
    public var authDbname: String?
    /// Shoal's own: seconds a secret found by auth_query, and a "no such user", are answered from memory (0, the
    /// default: every login asks, as PgBouncer does — a changed or revoked password counts at once).
    public var authQueryCacheTTL = 0.0
    public var authQueryNegativeCacheTTL = 0.0
    public var adminUsers: [String] = []
    public var statsUsers: [String] = []

    // MARK: Pooling
    public var poolMode: PoolMode = .session
    public var maxClientConn = 100
    public var defaultPoolSize = 20
    public var minPoolSize = 0
    public var reservePoolSize = 0
    public var reservePoolTimeout = 5.0
    public var maxDbConnections = 0
    public var maxUserConnections = 0
    public var maxDbClientConnections = 0
    public var maxUserClientConnections = 0
    public var serverResetQuery = "DISCARD ALL"
    public var serverResetQueryAlways = false
    public var serverCheckQuery = "<empty>"
    public var serverCheckDelay = 30.0
    public var serverLifetime = 3600.0
    public var serverIdleTimeout = 600.0
    /// A database created through `*` with no clients and no servers for this long is dropped (PgBouncer's
    /// autodb_idle_timeout), so names tried once do not keep pools for good.
    public var autodbIdleTimeout = 3600.0
    /// Any pool with no clients, no servers and nobody waiting for this long is freed (PgBouncer 1.25's
    /// pool_idle_timeout); 0 = never.
    public var poolIdleTimeout = 0.0
    /// server_fast_close: sessions whose server must close (RECONNECT, a changed entry) end between transactions.
    public var serverFastClose = false
    /// tcp_defer_accept (PgBouncer's default on Linux: on, 45 s): the kernel completes accept() only once the
    /// client's first bytes (its startup packet) arrive, so a connection costs one wakeup instead of two.
    public var tcpDeferAccept = true
    /// disable_pqexec: simple Query messages end the client; only the extended protocol is served.
    public var disablePqexec = false
    public var serverConnectTimeout = 15.0
    public var serverLoginRetry = 15.0
    public var serverRoundRobin = false
    public var clientLoginTimeout = 60.0
    public var queryTimeout = 0.0
    public var queryWaitTimeout = 120.0
    public var clientIdleTimeout = 0.0
    public var idleTransactionTimeout = 0.0
    /// A transaction open longer than this is ended by closing its client and server (0 = off; PgBouncer 1.25).
    public var transactionTimeout = 0.0
    public var ignoreStartupParameters: [String] = []
    public var trackExtraParameters: [String] = ["IntervalStyle"]
    public var maxPacketSize = 2_147_483_647
    public var applicationNameAddHost = false
    public var cancelWaitTimeout = 10.0

    // MARK: TCP
    public var tcpKeepalive = true
    public var tcpKeepidle = 0
    public var tcpKeepintvl = 0
    public var tcpKeepcnt = 0
    /// TCP_USER_TIMEOUT in milliseconds (0 = the kernel's default), as PgBouncer's tcp_user_timeout.
    public var tcpUserTimeout = 0
    /// SO_SNDBUF and SO_RCVBUF of every TCP connection, in bytes (0: the kernel's own sizing).
    public var tcpSocketBuffer = 0

    // MARK: Process and logging
    public var logfile: String?
    public var pidfile: String?
    public var logConnections = true
    public var logDisconnections = true
    public var logPoolerErrors = true
    public var logStats = true
    public var statsPeriod = 60
    public var verbose = 0

    // MARK: TLS
    public var serverTLSSSLMode = "prefer"
    public var serverTLSCAFile: String?
    public var serverTLSCertFile: String?
    public var serverTLSKeyFile: String?
    public var serverTLSProtocols: [String] = ["secure"]
    public var serverTLSCiphers = "default"
    public var clientTLSSSLMode = "disable"
    public var clientTLSCAFile: String?
    public var clientTLSCertFile: String?
    public var clientTLSKeyFile: String?
    public var clientTLSProtocols: [String] = ["secure"]
    public var clientTLSCiphers = "default"

    // MARK: Shoal extensions (keys PgBouncer does not have)
    /// Where /metrics, /healthz and /readyz are served; `*` is every address.
    public var metricsAddr = "*"
    /// 0 turns the HTTP endpoint off.
    public var metricsPort = 0
    /// Transaction/statement mode: named protocol-level prepared statements kept per client and prepared on each
    /// server connection as needed, up to this many per server connection (LRU); 0 turns it off (PgBouncer's key).
    public var maxPreparedStatements = 200
    /// Shoal's own: named statements one client may keep while max_prepared_statements tracks them (least
    /// recently used forgotten past it, with a byte ceiling beside it); 0 = no count limit.
    public var maxClientPreparedStatements = 10_000
    /// Transaction/statement mode: keep a client on its server connection while it holds session state there.
    public var pinSessionState = true
    /// Per pool: how many server connections pinned clients may hold; 0 = no cap beyond pool_size. Below
    /// pool_size it keeps servers free for clients without session state; past it, state-creating statements
    /// are refused.
    public var maxPinnedClients = 0
    /// A pin held longer than this is logged once with the statement that made it (0 = never).
    public var pinWarnTimeout = 60.0
    /// EventLoops (threads) serving connections; 0 = the CPUs this process may use, which honours a cgroup CPU
    /// limit (a Kubernetes pod limited to 1 CPU runs one loop). Only a restart changes it.
    public var workerThreads = 0
    /// pkt_buf: the most a client connection reads at once, hence the most it keeps as its receive buffer while
    /// idle (a receive buffer never shrinks once grown: up to 64 KB after one long statement without this bound).
    public var pktBuf = 4096
    /// cross_thread_reuse_delay (Shoal's key): seconds an idle server on another EventLoop must have idled before
    /// a client whose own loop has none uses it instead of dialing. See PoolSettings.
    public var crossThreadReuseDelay = 0.0
    /// SO_REUSEPORT on the TCP listeners (PgBouncer's key): other processes may listen on the same port, and
    /// Shoal opens one listener per EventLoop so each accepts its own connections. Only a restart changes it.
    public var soReuseport = false
    /// The EventLoop count `workerThreads` stands for.
    public func eventLoopCount(cpusAvailable: Int) -> Int { workerThreads > 0 ? workerThreads : max(1, cpusAvailable) }
    // Several hosts per database: routing, health checks, failover.
    /// A second listener whose clients are served by replicas under the same database names (Moodle's
    /// `readonly` dboptions take a host and port); 0 = off.
    public var readonlyListenPort = 0
    /// How often each host of a routed database is checked for health, role and lag (seconds; 0 = never).
    public var healthCheckPeriod = 2.0
    /// A check not answered in this time counts as failed.
    public var healthCheckTimeout = 3.0
    /// Consecutive failed checks before a host is marked down (a failed server connection marks it at once).
    public var healthCheckFailures = 3
    /// Who the checks log in as; nil = the database entry's `user`, else `auth_user`.
    public var healthCheckUser: String?
    /// A replica lagging more than this many seconds leaves the read rotation until it catches up; 0 = no limit.
    public var maxReplicaLag = 0.0
    /// Server connections all pools together may open to one host; 0 = no limit. With `peersDNS`, the whole
    /// fleet's (see `hostConnectionLimit`).
    public var maxHostConnections = 0

    /// This process's part of max_host_connections when the fleet is known (`peers_dns`: `replicas` addresses):
    /// the budget is the fleet's, split evenly and rounded down (at least one), so autoscaling out cannot
    /// multiply it past what the instance allows. Without discovery it is this process's own.
    public func hostConnectionLimit(replicas: Int) -> Int {
        guard maxHostConnections > 0, !peersDNS.isEmpty, replicas > 1 else { return maxHostConnections }
        return max(1, maxHostConnections / replicas)
    }
    /// Read the cluster's instances from `aurora_replica_status()` (per entry: `aurora_topology=on`). Off, a
    /// routed entry whose hosts have `aurora_version()` is found to be Aurora anyway (`aurora_topology=off` on
    /// the entry prevents that).
    public var auroraTopology = false
    /// An Aurora instance's host name, `?` standing for its `server_id`. Empty: derived from the entry's
    /// cluster endpoint (`x.cluster-ID.region.rds.amazonaws.com` → `?.ID.region.rds.amazonaws.com`).
    public var auroraInstanceHostPattern = ""

    /// `text` (PgBouncer's line format) or `json` (one object per line with the structured metadata).
    public var logFormat = "text"

    /// Values of PgBouncer keys Shoal accepts without acting on them, as written, for SHOW CONFIG.
    public var unsupportedSettings: [String: String] = [:]

    // MARK: Sections
    public var databases: [String: DatabaseEntry] = [:]
    public var users: [String: UserEntry] = [:]
    /// The file this snapshot was read from; a reload reads it again.
    public var configFile = ""

    public init() {}

    /// The admin console's virtual database: `pgbouncer`, and `shoal` unless a real database takes that name.
    public func isConsoleDatabase(_ name: String) -> Bool { Self.isConsoleDatabase(name, databases: databases) }

    /// The database entry for a client's database name, from the `*` fallback when not listed.
    public func database(named name: String) -> DatabaseEntry? { Self.database(named: name, in: databases) }

    // The same two on the `[databases]` section alone. A configuration held in a class (the runtime's snapshot)
    // asks these: calling a method on the whole struct there made the caller copy it — every string and
    // collection retained and released — to pass it as `self`, three times per login (even @inlinable).

    public static func isConsoleDatabase(_ name: String, databases: [String: DatabaseEntry]) -> Bool {
        name == "pgbouncer" || (name == "shoal" && databases["shoal"] == nil)
    }

    public static func database(named name: String, in databases: [String: DatabaseEntry]) -> DatabaseEntry? {
        if let entry = databases[name] { return entry }
        guard var fallback = databases["*"] else { return nil }
        fallback.name = name
        if fallback.dbname == nil { fallback.dbname = name }
        return fallback
    }
}

/// One `[peers]` line: `<id> = host=… [port=6432] [pool_size=N]`.
public struct PeerEntry: Sendable, Equatable {
    public var id: Int
    public var host: String
    public var port = 6432
    public var poolSize = -1

    public init(id: Int, host: String) {
        self.id = id
        self.host = host
    }
}

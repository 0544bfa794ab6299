import Configuration
import NIOConcurrencyHelpers
import Pooling
import PostgresWire

/// One pool per (database, user): the pure `PoolState` under a lock, plus what clients of the pool share —
/// the welcome parameters of its first server and the credentials for logging in to servers.
///
/// The lock is taken once per lease and once per release (per transaction), never per message.
final class Pool: @unchecked Sendable {
    let key: PoolKey
    private let lock = NIOLock()
    /// Guarded by `lock`.
    private var state: PoolState<ServerConnection, ClientConnection>
    private var _welcome: Welcome? = nil
    private var _database: DatabaseEntry
    private var _serverSecret: ServerLoginSecret = .unknown
    private var _turn = 0
    /// Traffic counters, one per EventLoop (same index as the runtime's loops), each written on its loop only.
    let shards: [PoolStatsShard]

    private var _routed: Bool

    init(key: PoolKey, database: DatabaseEntry, settings: PoolSettings, loopCount: Int, routed: Bool) {
        self.key = key
        self._database = database
        self._routed = routed
        self.state = PoolState(settings: settings)
        self.shards = (0..<max(1, loopCount)).map { _ in PoolStatsShard() }
    }

    func withState<T>(_ body: (inout PoolState<ServerConnection, ClientConnection>) -> T) -> T {
        lock.withLock { body(&state) }
    }

    var settings: PoolSettings { lock.withLock { state.settings } }
    var database: DatabaseEntry { lock.withLock { _database } }

    /// Which hosts this pool's servers may be on: the read-only listener's pools prefer replicas, other pools
    /// follow their entry's target_session_attrs (nil: `any`).
    var target: TargetSessionAttrs { target(of: database) }

    private func target(of database: DatabaseEntry) -> TargetSessionAttrs {
        if key.readOnly { return .preferStandby }
        return database.targetSessionAttrs ?? .any
    }

    /// Whether this pool chooses among hosts by health and role (several hosts, a target, or Aurora).
    var routed: Bool { lock.withLock { _routed } }

    /// Rotation among equally good hosts (load_balance_hosts=round-robin).
    func nextTurn() -> Int {
        lock.withLock {
            _turn &+= 1
            return _turn
        }
    }

    /// Applies a reloaded config to this pool.
    func update(database: DatabaseEntry, settings: PoolSettings, routed: Bool) {
        lock.withLock {
            _routed = routed
            _database = database
            state.settings = settings
            _linkOptions = nil
        }
    }

    private var _linkOptions: (snapshot: ConfigSnapshot, user: String, options: LinkStateMachine.SharedOptions)?

    /// The link options of a client logging in to this pool as `user`: built once per config and user rather
    /// than on every login (PHP connects per request), since building them reads a dozen settings, the user's
    /// entry and the pool's mode and target, each under a lock.
    func linkOptions(user: String, snapshot: ConfigSnapshot, statementNames: StatementNames) -> LinkStateMachine.SharedOptions {
        // One lock for the look-up, the pool's settings and the store: a RELOAD's `update` in between would
        // otherwise be overwritten by options built from the settings it replaced.
        lock.withLock {
            if let cached = _linkOptions, cached.snapshot === snapshot, cached.user == user { return cached.options }
            var options = Self.makeLinkOptions(user: user, snapshot: snapshot, mode: state.settings.mode,
                                               watchesReadOnly: _routed && target(of: _database).wantsWriterOnly,
                                               statementNames: statementNames)
            if key.dedicatedTo != nil {
                // A replication stream: one long command (START_REPLICATION) that no timeout may cut, and a
                // walsender that takes no reset query (its server closes after the client anyway).
                options.queryTimeout = 0
                options.idleTransactionTimeout = 0
                options.transactionTimeout = 0
                options.resetQueryOnRelease = nil
                options.resetQueryOnDisconnect = nil
            }
            let shared = LinkStateMachine.SharedOptions(options)
            _linkOptions = (snapshot, user, shared)
            return shared
        }
    }

    private static func makeLinkOptions(user: String, snapshot: ConfigSnapshot, mode: PoolMode, watchesReadOnly: Bool,
                                        statementNames: StatementNames) -> LinkStateMachine.Options {
        let config = snapshot.config
        let userEntry = config.users[user]
        var options = LinkStateMachine.Options(mode: mode, detectsSessionState: config.pinSessionState,
                                               preparedCapacity: config.maxPreparedStatements,
                                               watchesReadOnly: watchesReadOnly)
        options.queryTimeout = userEntry?.queryTimeout ?? config.queryTimeout
        options.idleTransactionTimeout = userEntry?.idleTransactionTimeout ?? config.idleTransactionTimeout
        options.clientIdleTimeout = userEntry?.clientIdleTimeout ?? config.clientIdleTimeout
        options.transactionTimeout = userEntry?.transactionTimeout ?? config.transactionTimeout
        options.pinWarnTimeout = config.pinWarnTimeout
        options.maxPinnedClients = config.maxPinnedClients
        if !config.serverResetQuery.isEmpty {
            if config.serverResetQueryAlways { options.resetQueryOnRelease = config.serverResetQuery }
            if config.serverResetQueryAlways || mode == .session { options.resetQueryOnDisconnect = config.serverResetQuery }
        }
        options.trackedNames = snapshot.trackedNames
        options.maxMessageLength = config.maxPacketSize
        options.statementNames = statementNames
        options.refusesSimpleQuery = config.disablePqexec
        options.clientStatementLimits = ClientStatements.Limits(count: config.maxClientPreparedStatements,
                                                                bytes: LinkStateMachine.heldStatementLimit)
        return options
    }

    /// ParameterStatus of the pool's first server login: what a new client is welcomed with. Its `facts` (the
    /// server-owned part) are the instance servers whose facts agree share.
    var welcome: Welcome? { lock.withLock { _welcome } }

    /// The first server login's parameters become the welcome; later logins leave it as it is.
    func learnWelcome(_ reported: [(String, String)], tracked: Set<String>) {
        lock.withLock {
            guard _welcome == nil else { return }
            _welcome = Welcome(reported: reported, tracked: tracked)
        }
    }

    /// What Shoal knows of the password for server logins in this pool, learned from the config or a client login.
    var serverSecret: ServerLoginSecret {
        get { lock.withLock { _serverSecret } }
        set { lock.withLock { _serverSecret = newValue } }
    }
}

enum ServerLoginSecret {
    case unknown
    case password(String)
    case md5Hash(String)
    case scramKeys(clientKey: [UInt8], serverKey: [UInt8])

    /// What an auth-file secret allows towards a server: a plain password or an md5 hash work as they are;
    /// a SCRAM verifier works only through a client's SCRAM login (pass-through), so it counts as unknown.
    init(authFileSecret secret: String?) {
        guard let secret, !secret.isEmpty else { self = .unknown; return }
        if MD5Password.isStoredHash(secret) { self = .md5Hash(secret) }
        else if SCRAM.Verifier(parsing: secret) != nil { self = .unknown }
        else { self = .password(secret) }
    }

    var loginSecret: ServerLoginMachine.Secret {
        switch self {
        case .unknown: return .none
        case .password(let password): return .password(password)
        case .md5Hash(let hash): return .md5Hash(hash)
        case .scramKeys(let clientKey, let serverKey): return .scramKeys(clientKey: clientKey, serverKey: serverKey)
        }
    }
}

/// max_pinned_clients, counted under the pool's lock.
extension Pool: PinSlots {
    func tryPin(limit: Int) -> Bool { withState { $0.tryPin(limit: limit) } }
    func pinHeld() { withState { $0.pinHeld() } }
    func unpinned() { withState { $0.unpinned() } }
}

import Configuration
import NIOConcurrencyHelpers
import NIOCore
import Pooling
import PostgresWire

/// auth_query: a user's secret looked up on the server, logged in as auth_user.
///
/// Lookups run on a few connections per target (host, database, auth_user) that stay open between lookups,
/// `AuthLookups.connectionsPerTarget` at most; more lookups at once wait their turn. So a burst of startup
/// packets with random user names costs at most that many backends, not one backend and one login each, and
/// the connections go through the same TLS as the pools' (server_tls_sslmode, verify-full honoured): the auth
/// user's login and the rows it reads never cross the network in clear when the servers get TLS. The user
/// name is a bound parameter, never spliced into the SQL.
final class AuthLookups: @unchecked Sendable {
    /// Open connections per target, each running one lookup at a time.
    static let connectionsPerTarget = 2

    enum Outcome {
        /// The secret (nil when the row's secret is NULL, e.g. an expired password).
        case found(String?)
        case noSuchUser
        case failed(String)
    }

    private struct Target: Hashable {
        var address: HostAddress
        var database: String
        var user: String
    }

    private struct Lookup {
        var sql: String
        var user: String
        var timeout: TimeAmount
        /// How long a found secret, and a "no such user", may be answered from the cache (0: not kept).
        var cacheFound: TimeAmount = .zero
        var cacheMissing: TimeAmount = .zero
        var finish: (Outcome) -> Void
        /// The client was answered already (its timeout, or it left): a lookup still queued is skipped.
        var answered: () -> Bool
    }

    private struct Connections {
        var idle: [HostCheckConnection] = []
        var open = 0
        var waiting: [Lookup] = []
    }

    /// Everything below lives on this loop.
    private let eventLoop: EventLoop
    private var targets: [Target: Connections] = [:]
    private var stopped = false

    /// auth_query_cache_ttl / auth_query_negative_cache_ttl: answers kept for a while, so a burst of logins of one
    /// user (or of one unknown name) costs one lookup. Bounded: past `cacheLimit` entries it starts again.
    private enum Cached { case found(String?), noSuchUser }
    private struct CacheKey: Hashable { var target: Target; var sql: String; var user: String }
    private var cache: [CacheKey: (answer: Cached, expires: NIODeadline)] = [:]
    static let cacheLimit = 10_000

    /// RELOAD forgets every cached answer (an operator's way to make a changed password count at once).
    func clearCache() { eventLoop.execute { [self] in cache = [:] } }

    init(eventLoop: EventLoop) { self.eventLoop = eventLoop }

    /// Looks `user` up for a client of `database`; `completion` is called once, on `clientLoop`.
    static func lookUp(user: String, database: DatabaseEntry, runtime: ShoalRuntime, on clientLoop: EventLoop,
                       completion: @escaping (Outcome) -> Void) {
        let config = runtime.config
        guard let authUser = database.authUser ?? config.authUser else { return completion(.noSuchUser) }
        // auth_dbname names a [databases] entry (PgBouncer's meaning): the query runs where that entry points.
        var target = database
        if let name = database.authDbname ?? config.authDbname {
            guard !config.isConsoleDatabase(name), let entry = config.database(named: name) else {
                return completion(.failed("authentication database \"\(name)\" is not configured"))
            }
            if runtime.lifecycle.withLockedValue({ $0.disabledDatabases.contains(name) }) {
                return completion(.failed("authentication database \"\(name)\" is disabled"))
            }
            target = entry
        }
        var secret = ServerLoginSecret(authFileSecret: runtime.userList.secrets[authUser]).loginSecret
        if case .none = secret, let password = target.password ?? database.password { secret = .password(password) }
        let tls = runtime.tls.withLockedValue { $0 }
        let login = HostCheckConnection.Login(
            user: authUser, database: target.dbname ?? target.name, secret: secret, tls: tls.forServers,
            tlsRequired: tls.serverMode != "prefer" && tls.serverMode != "allow", connectTimeout: config.serverConnectTimeout,
            applicationName: "shoal auth_query")
        // Several hosts: the writer, or any host up (a down first host must not stop logins during a failover).
        let address = runtime.hosts.lookupHost(for: target, config: config)
        // Called at most once, on the client's loop: the answer, or the timeout, whichever comes first.
        let answered = NIOLockedValueBox(false)
        let finish: (Outcome) -> Void = { outcome in
            guard answered.withLockedValue({ done in defer { done = true }; return !done }) else { return }
            clientLoop.execute { completion(outcome) }
        }
        clientLoop.scheduleTask(in: .milliseconds(Int64(config.serverConnectTimeout * 1000))) {
            finish(.failed("auth_query timeout"))
        }
        let lookups = runtime.authLookups
        lookups.eventLoop.execute {
            lookups.enqueue(Lookup(sql: database.authQuery ?? config.authQuery, user: user,
                                   timeout: .milliseconds(Int64(config.serverConnectTimeout * 1000)),
                                   cacheFound: .nanoseconds(Int64(config.authQueryCacheTTL * 1e9)),
                                   cacheMissing: .nanoseconds(Int64(config.authQueryNegativeCacheTTL * 1e9)),
                                   finish: finish, answered: { answered.withLockedValue { $0 } }),
                            target: Target(address: address, database: login.database, user: authUser), login: login)
        }
    }

    private func enqueue(_ lookup: Lookup, target: Target, login: HostCheckConnection.Login) {
        guard !stopped else { return lookup.finish(.failed("shutting down")) }
        if lookup.cacheFound > .zero || lookup.cacheMissing > .zero {
            let key = CacheKey(target: target, sql: lookup.sql, user: lookup.user)
            if let entry = cache[key] {
                if entry.expires > .now() {
                    switch entry.answer {
                    case .found(let secret): return lookup.finish(.found(secret))
                    case .noSuchUser: return lookup.finish(.noSuchUser)
                    }
                }
                cache[key] = nil
            }
        }
        var connections = targets[target] ?? Connections()
        if let connection = connections.idle.popLast() {
            targets[target] = connections
            return run(lookup, on: connection, target: target, login: login)
        }
        guard connections.open < Self.connectionsPerTarget else {
            connections.waiting.append(lookup)
            targets[target] = connections
            return
        }
        connections.open += 1
        targets[target] = connections
        var opened: HostCheckConnection?
        opened = HostCheckConnection.open(address: target.address, login: login, on: eventLoop,
                                          query: .bound(lookup.sql, [lookup.user])) { [self] result in
            done(lookup, result, connection: opened, target: target, login: login)
        }
        bound(lookup, on: opened!)
    }

    private func run(_ lookup: Lookup, on connection: HostCheckConnection, target: Target, login: HostCheckConnection.Login) {
        let started = connection.run(.bound(lookup.sql, [lookup.user])) { [self] result in
            done(lookup, result, connection: connection, target: target, login: login)
        }
        if started {
            bound(lookup, on: connection)
        } else {
            // Closed while idle (the server went away): take another, or open one.
            targets[target]?.open -= 1
            enqueue(lookup, target: target, login: login)
        }
    }

    /// A server that accepts and never answers must not hold a connection slot forever: the connection is
    /// abandoned after the lookup's timeout (which fails the lookup, if the client has not been answered yet).
    private func bound(_ lookup: Lookup, on connection: HostCheckConnection) {
        let request = connection.requestsStarted
        eventLoop.scheduleTask(in: lookup.timeout) { [weak connection] in
            if let connection, connection.stillRunning(request: request) { connection.abandon(reason: "auth_query timeout") }
        }
    }

    private func done(_ lookup: Lookup, _ result: Result<HostCheckConnection.Answer, HostCheckConnection.CheckFailure>,
                      connection: HostCheckConnection?, target: Target, login: HostCheckConnection.Login) {
        switch result {
        case .success(let answer):
            if let error = answer.error {
                lookup.finish(.failed("S: error in auth_query: \(error.message)"))
            } else if let row = answer.results.first?.first {
                let secret = row.count >= 2 ? row[1] : nil
                remember(.found(secret), for: lookup, target: target, ttl: lookup.cacheFound)
                lookup.finish(.found(secret))
            } else {
                remember(.noSuchUser, for: lookup, target: target, ttl: lookup.cacheMissing)
                lookup.finish(.noSuchUser)
            }
        case .failure(let failure):
            lookup.finish(.failed(failure.reason.hasPrefix("login failed")
                                  ? "S: error in auth_query login: \(failure.reason.dropFirst("login failed: ".count))"
                                  : "auth_query: \(failure.reason)"))
        }
        guard var connections = targets[target] else { return }
        if let connection, connection.isOpen, !stopped {
            connections.idle.append(connection)
        } else {
            connections.open -= 1
        }
        // The next lookup whose client still waits (timed-out ones are dropped, not run).
        var next: Lookup?
        while next == nil, !connections.waiting.isEmpty {
            let candidate = connections.waiting.removeFirst()
            if !candidate.answered() { next = candidate }
        }
        targets[target] = connections
        if let next { enqueue(next, target: target, login: login) }
    }

    private func remember(_ answer: Cached, for lookup: Lookup, target: Target, ttl: TimeAmount) {
        guard ttl > .zero else { return }
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[CacheKey(target: target, sql: lookup.sql, user: lookup.user)] = (answer, .now() + ttl)
    }

    /// Closes the idle connections and fails what waits (shutdown).
    func stop() {
        eventLoop.execute { [self] in
            stopped = true
            for (_, connections) in targets {
                for connection in connections.idle { connection.abandon(reason: "shutting down") }
                for lookup in connections.waiting { lookup.finish(.failed("shutting down")) }
            }
            targets = [:]
        }
    }
}

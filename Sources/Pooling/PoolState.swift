/// The pure state of one pool: which servers are idle, how many are lent out or being dialed, and who waits.
///
/// The glue runs it under a lock (a lease and a release per transaction, never per message) and performs the
/// actions it returns outside the lock. Servers and waiters are opaque references; `loop` is the index of the
/// EventLoop a server lives on, so a lease can prefer a server on the client's own loop and avoid a thread hop
/// per message. Time is passed in (`now`, nanoseconds of a monotonic clock) so tests drive it.
public struct PoolState<Server: AnyObject, Waiter: AnyObject> {
    public struct IdleServer {
        public var server: Server
        public var loop: Int
        public var createdAt: UInt64
        public var idleSince: UInt64
    }

    struct WaitingClient {
        var waiter: Waiter
        var loop: Int
        var since: UInt64
        /// Told it is queued (query_wait_notify), once per wait.
        var notified = false
    }

    public var settings: PoolSettings
    public private(set) var idle: [IdleServer] = []
    public private(set) var activeCount = 0
    public private(set) var connectingCount = 0
    /// One FIFO per EventLoop, so a released server can go to a waiter on its own loop (no cross-loop link).
    private var queues: [WaiterQueue] = []
    public private(set) var waitingCount = 0
    /// The last failed server login, answered to new clients for server_login_retry while no server is up.
    struct WaiterQueue {
        /// Served entries before `head` are nil until the array is compacted, so the queue does not keep
        /// clients that have gone alive.
        private var items: [WaitingClient?] = []
        private var head = 0

        func peek() -> WaitingClient? { head < items.count ? items[head] : nil }

        mutating func append(_ item: WaitingClient) { items.append(item) }

        mutating func popFirst() -> WaitingClient? {
            guard head < items.count else { return nil }
            let first = items[head]
            items[head] = nil
            head += 1
            if head == items.count {
                items.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 32 && head * 2 > items.count {
                items.removeFirst(head)
                head = 0
            }
            return first
        }

        mutating func remove(_ waiter: Waiter) -> Bool {
            guard let index = items[head...].firstIndex(where: { $0?.waiter === waiter }) else { return false }
            items.remove(at: index)
            return true
        }

        /// Waiters queued since before `cutoff` and not told yet: marked told, and returned.
        mutating func notifyQueuedBefore(_ cutoff: UInt64) -> [Waiter] {
            var due: [Waiter] = []
            for index in head..<items.count {
                guard let item = items[index], !item.notified, item.since < cutoff else { continue }
                items[index]!.notified = true
                due.append(item.waiter)
            }
            return due
        }

        mutating func drain() -> [WaitingClient] {
            defer { items = []; head = 0 }
            return items[head...].compactMap { $0 }
        }
    }

    public private(set) var loginFailure: (at: UInt64, message: String, code: String)? = nil
    /// When a dial last failed because the server was unavailable (refused, timed out, shutting down): dials
    /// wait server_login_retry from then, and waiters stay queued meanwhile.
    public private(set) var unavailableSince: UInt64? = nil
    /// PAUSE: clients queue, nothing is dialed, released servers close.
    public private(set) var paused = false
    /// Clients holding session state on a server connection (pinned to it) right now.
    public private(set) var pinnedCount = 0

    /// A linked client is about to create session state. Counts it if the pool's cap allows (`limit` 0: no cap
    /// beyond the pool's own size, since a pinned client holds a server).
    public mutating func tryPin(limit: Int) -> Bool {
        let cap = limit > 0 ? limit : settings.poolSize + settings.reservePoolSize
        guard pinnedCount < cap else { return false }
        pinnedCount += 1
        return true
    }

    /// Counts a pin the client already holds (state found by the probe), cap or not.
    public mutating func pinHeld() { pinnedCount += 1 }

    public mutating func unpinned() { pinnedCount = max(0, pinnedCount - 1) }

    /// Logged-in clients of this pool, with or without a server: a pool with none, no server and nobody
    /// waiting may be freed (pool_idle_timeout, autodb_idle_timeout).
    public private(set) var clientCount = 0
    public mutating func clientJoined() { clientCount += 1 }
    public mutating func clientLeft() { clientCount = max(0, clientCount - 1) }
    public var isUnused: Bool { clientCount == 0 && totalServers == 0 && waitingCount == 0 }

    /// Set while shutting down paused: a client that would queue is answered with this instead.
    public private(set) var refusal: String?
    /// RECONNECT: servers created before this instant close when released instead of being reused.
    public private(set) var closeBefore: UInt64 = 0

    public init(settings: PoolSettings) {
        self.settings = settings
    }

    public var totalServers: Int { idle.count + activeCount + connectingCount }

    /// Servers lent out that a RECONNECT condemned (made before `closeBefore`): they close at release and serve
    /// nobody after, so a failing login is not held back by them (PgBouncer: "unless a usable server exists").
    public private(set) var condemnedActiveCount = 0
    /// Lent-out servers that will serve again.
    var usableActiveCount: Int { activeCount - condemnedActiveCount }

    // MARK: Actions

    public enum LeaseAction {
        /// Link the client to this server now.
        case use(Server)
        /// The client was queued and a new server should be dialed on `loop`; it goes to the first waiter.
        case connectAndWait(loop: Int)
        /// The client was queued; a server will be handed over on release.
        case wait
        /// The client was queued, and this idle server, unused for server_check_delay, must answer
        /// server_check_query first (PgBouncer checks at reuse): then it is released as usual and goes to the
        /// first waiter; if it fails, it closes and a replacement is dialed.
        case checkAndWait(Server)
        /// Server logins have been failing recently; answer the client with this error.
        case fail(message: String, code: String)
    }

    public enum ReleaseAction {
        /// Give this server to this waiter (it may live on another loop).
        case handOver(Server, to: Waiter)
        /// The server is parked idle.
        case parked
        /// Close the server; if `connectFor` is set, dial a replacement on that loop for the waiters.
        case close(Server, connectFor: Int?)
    }

    public enum ConnectedAction {
        case handOver(Server, to: Waiter)
        case parked
        /// The server was dialed before a RECONNECT: close it; if `connectFor` is set, dial again on that loop.
        case discard(Server, connectFor: Int?)
    }

    // MARK: Events

    public mutating func leaseRequested(by waiter: Waiter, loop: Int, now: UInt64) -> LeaseAction {
        if paused {
            if let refusal { return .fail(message: refusal, code: "08P01") }
            enqueue(waiter, loop: loop, now: now)
            return .wait
        }
        if waitingCount == 0 {
            // Nobody queued ahead: an idle server, preferably on this loop.
            if let index = idle.lastIndex(where: { $0.loop == loop }) {
                return handOut(index, to: waiter, loop: loop, now: now)
            }
            if totalServers < settings.poolSize, let index = idleOnAnotherLoopToReuse(now: now) {
                // Room to dial, but an idle server elsewhere serves now, without a login (cross_thread_reuse_delay).
                return handOut(index, to: waiter, loop: loop, now: now)
            }
            if totalServers < settings.poolSize {
                if let failure = loginFailure, elapsed(since: failure.at, now: now) < seconds(settings.serverLoginRetry), usableActiveCount == 0, idle.isEmpty {
                    return .fail(message: "server login has been failing, cached error: \(failure.message) (server_login_retry)", code: "08P01")
                }
                if waitsForRetry(now: now) {
                    enqueue(waiter, loop: loop, now: now)
                    return .wait
                }
                enqueue(waiter, loop: loop, now: now)
                // A dial already under way that no waiter needs any more (its client was served by a released
                // server meanwhile) serves this client: no second login for one client's worth of demand.
                if connectingCount >= waitingCount { return .wait }
                connectingCount += 1
                return .connectAndWait(loop: loop)
            }
            if !idle.isEmpty {
                // The pool is full and the only idle servers live on other loops: use one rather than wait.
                return handOut(settings.serverRoundRobin ? 0 : idle.count - 1, to: waiter, loop: loop, now: now)
            }
        }
        if connectingCount >= waitingCount,
           let index = idle.lastIndex(where: { $0.loop == loop }) ?? idleOnAnotherLoopToReuse(now: now) {
            // Every waiter ahead has a dial coming, so an idle server on this loop (or one another loop has not
            // used for cross_thread_reuse_delay) takes nothing from them: it serves this client now rather than a
            // new login (the welcome's server, back idle while another first client still waits for its own, was
            // a third login for two clients).
            return handOut(index, to: waiter, loop: loop, now: now)
        }
        let mayDial = totalServers < settings.poolSize && !waitsForRetry(now: now)
        if !mayDial && connectingCount <= waitingCount, !idle.isEmpty {
            // Every waiter ahead has a dial coming (each preferred dialing on its own loop to taking this idle
            // server from another), no dial is left for this client, and the idle server would otherwise sit
            // there while it waits.
            return handOut(settings.serverRoundRobin ? 0 : idle.count - 1, to: waiter, loop: loop, now: now)
        }
        enqueue(waiter, loop: loop, now: now)
        if mayDial && connectingCount < waitingCount {
            connectingCount += 1
            return .connectAndWait(loop: loop)
        }
        return .wait
    }

    /// An idle server for `waiter`: at once, or after server_check_query when it has been idle for
    /// server_check_delay (then the client queues for it, and a check that fails costs a dial, not an error).
    private mutating func handOut(_ index: Int, to waiter: Waiter, loop: Int, now: UInt64) -> LeaseAction {
        let due = !settings.serverCheckQuery.isEmpty && elapsed(since: idle[index].idleSince, now: now) >= seconds(settings.serverCheckDelay)
        let server = takeIdle(at: index)
        guard due else { return .use(server) }
        enqueue(waiter, loop: loop, now: now)
        return .checkAndWait(server)
    }

    /// With nothing idle on the client's loop: the idle server (on another loop) to use rather than dial, if one
    /// has idled for cross_thread_reuse_delay — the most recently idle of those, as a lease picks (LIFO).
    private func idleOnAnotherLoopToReuse(now: UInt64) -> Int? {
        guard !idle.isEmpty else { return nil }
        let wanted = seconds(settings.crossThreadReuseDelay)
        if settings.serverRoundRobin { return elapsed(since: idle[0].idleSince, now: now) >= wanted ? 0 : nil }
        return idle.lastIndex { elapsed(since: $0.idleSince, now: now) >= wanted }
    }

    /// The server was unavailable less than server_login_retry ago: no new dial yet (the janitor retries).
    private func waitsForRetry(now: UInt64) -> Bool {
        guard let since = unavailableSince else { return false }
        return elapsed(since: since, now: now) < seconds(settings.serverLoginRetry)
    }

    /// A client is done with its server. `reusable` is false when the server's state is unknown or dirty.
    public mutating func released(_ server: Server, loop: Int, createdAt: UInt64, reusable: Bool, now: UInt64) -> ReleaseAction {
        activeCount -= 1
        if createdAt < closeBefore { condemnedActiveCount = max(0, condemnedActiveCount - 1) }
        // server_lifetime = 0 is PgBouncer's "use once, then close", not "no limit".
        let expired = settings.serverLifetime <= 0 || elapsed(since: createdAt, now: now) >= seconds(settings.serverLifetime)
        if !reusable || expired || paused || createdAt < closeBefore || totalServers >= settings.poolSize + settings.reservePoolSize + 1 {
            var connectFor: Int? = nil
            if !paused, let next = peekWaiter(), totalServers < settings.poolSize {
                connectingCount += 1
                connectFor = next.loop
            }
            return .close(server, connectFor: connectFor)
        }
        if let next = dequeueWaiter(preferringLoop: loop) {
            activeCount += 1
            return .handOver(server, to: next.waiter)
        }
        idle.append(IdleServer(server: server, loop: loop, createdAt: createdAt, idleSince: now))
        return .parked
    }

    public mutating func connected(_ server: Server, loop: Int, createdAt: UInt64, now: UInt64) -> ConnectedAction {
        connectingCount -= 1
        loginFailure = nil
        unavailableSince = nil
        if createdAt < closeBefore {
            var connectFor: Int? = nil
            if !paused, let next = peekWaiter(), totalServers < settings.poolSize, connectingCount < waitingCount {
                connectingCount += 1
                connectFor = next.loop
            }
            return .discard(server, connectFor: connectFor)
        }
        if !paused, let next = dequeueWaiter(preferringLoop: loop) {
            activeCount += 1
            return .handOver(server, to: next.waiter)
        }
        idle.append(IdleServer(server: server, loop: loop, createdAt: now, idleSince: now))
        return .parked
    }

    /// A dial or login failed. Returns the waiters that should get the error: all of them when no server is
    /// up or coming that could serve them (PgBouncer does the same).
    public mutating func connectFailed(message: String, code: String, now: UInt64) -> [Waiter] {
        connectingCount -= 1
        loginFailure = (now, message, code)
        guard usableActiveCount == 0, idle.isEmpty, connectingCount == 0 else { return [] }
        return drainWaiters()
    }

    /// A dial failed because the server is unavailable for now — connection refused or timed out, a TLS
    /// handshake that failed, "the database system is shutting down" (57P03) — as during every PostgreSQL
    /// restart. As in PgBouncer, the waiters stay queued (up to query_wait_timeout) and the pool dials again after
    /// server_login_retry, instead of failing them at once; idle servers on other loops serve them meanwhile.
    public mutating func connectFailedTransiently(now: UInt64) -> [(server: Server, waiter: Waiter)] {
        unavailableSince = now
        return connectDeferred()
    }

    /// A dial the pool asked for could not start (max_db_connections / max_user_connections /
    /// max_host_connections reached, or no host fits). The waiters stay queued and the janitor asks again —
    /// but idle servers on other loops serve them now: a lease prefers dialing on its own loop to taking a
    /// server from another, and with the dial refused that server would otherwise sit idle while they wait.
    public mutating func connectDeferred() -> [(server: Server, waiter: Waiter)] {
        connectingCount -= 1
        var matches: [(server: Server, waiter: Waiter)] = []
        while !paused, let last = idle.last, let next = dequeueWaiter(preferringLoop: last.loop) {
            matches.append((takeIdle(at: idle.count - 1), next.waiter))
        }
        return matches
    }

    /// An idle server died or was closed by the janitor.
    public mutating func idleServerClosed(_ server: Server) {
        idle.removeAll { $0.server === server }
    }

    /// A server that was lent out closed without being released. Returns a loop to dial a replacement on if
    /// clients are waiting.
    public mutating func activeServerClosed(createdAt: UInt64 = .max) -> Int? {
        activeCount -= 1
        if createdAt < closeBefore { condemnedActiveCount = max(0, condemnedActiveCount - 1) }
        if !paused, let next = peekWaiter(), totalServers < settings.poolSize, connectingCount < waitingCount {
            connectingCount += 1
            return next.loop
        }
        return nil
    }

    /// A waiting client went away (disconnect, timeout, cancel).
    @discardableResult
    public mutating func waiterLeft(_ waiter: Waiter) -> Bool {
        for loop in queues.indices where queues[loop].remove(waiter) {
            waitingCount -= 1
            return true
        }
        return false
    }

    public struct Maintenance {
        /// Waiters queued longer than query_wait_timeout.
        public var timedOut: [Waiter] = []
        /// Idle servers past server_idle_timeout or server_lifetime.
        public var close: [Server] = []
        /// Loops to dial new servers on (min_pool_size, reserve pool).
        public var connect: [Int] = []
        /// The waiter for whom a reserve-pool server is dialed (PgBouncer logs it on that client).
        public var reserveFor: Waiter?
        /// Waiters queued longer than query_wait_notify, each reported once per wait.
        public var queuedTooLong: [Waiter] = []
    }

    /// The janitor's periodic look.
    public mutating func maintain(now: UInt64) -> Maintenance {
        var result = Maintenance()
        if settings.queryWaitTimeout > 0 {
            let limit = seconds(settings.queryWaitTimeout)
            while let first = peekWaiter(), elapsed(since: first.since, now: now) >= limit {
                result.timedOut.append(dequeueWaiter(preferringLoop: first.loop)!.waiter)
            }
        }
        if settings.queryWaitNotify > 0, waitingCount > 0, now > seconds(settings.queryWaitNotify) {
            let cutoff = now - seconds(settings.queryWaitNotify)
            for loop in queues.indices { result.queuedTooLong += queues[loop].notifyQueuedBefore(cutoff) }
        }
        if paused {
            // Nothing new is dialed or reused while paused; idle servers that appeared meanwhile are closed.
            result.close = idle.map(\.server)
            idle = []
            return result
        }
        // Reserve pool: the oldest waiter has waited past reserve_pool_timeout.
        if let first = peekWaiter(), settings.reservePoolSize > 0,
           elapsed(since: first.since, now: now) >= seconds(settings.reservePoolTimeout),
           totalServers < settings.poolSize + settings.reservePoolSize, connectingCount < waitingCount {
            connectingCount += 1
            result.connect.append(first.loop)
            result.reserveFor = first.waiter
        }
        var kept: [IdleServer] = []
        for entry in idle {
            let tooOld = settings.serverLifetime > 0 && elapsed(since: entry.createdAt, now: now) >= seconds(settings.serverLifetime)
            let idleTooLong = settings.serverIdleTimeout > 0 && elapsed(since: entry.idleSince, now: now) >= seconds(settings.serverIdleTimeout)
                && idle.count - result.close.count + activeCount > settings.minPoolSize
            if tooOld || idleTooLong {
                result.close.append(entry.server)
            } else {
                kept.append(entry)
            }
        }
        idle = kept
        while totalServers < settings.minPoolSize {
            connectingCount += 1
            result.connect.append(0)
        }
        // Waiters with room in the pool but no dial under way (a dial was deferred by a shared limit).
        let retryAllowed = (loginFailure.map { elapsed(since: $0.at, now: now) >= seconds(settings.serverLoginRetry) } ?? true)
            && !waitsForRetry(now: now)
        if let first = peekWaiter(), totalServers < settings.poolSize, connectingCount == 0, retryAllowed {
            connectingCount += 1
            result.connect.append(first.loop)
        }
        return result
    }

    // MARK: Console commands

    /// PAUSE: from now on clients queue and released servers close. Returns the idle servers to close now.
    public mutating func pause() -> [Server] {
        paused = true
        defer { idle = [] }
        return idle.map(\.server)
    }

    /// SHUTDOWN WAIT_FOR_SERVERS: pause for good; queued clients and any that would queue are refused.
    /// Returns the idle servers to close and the waiters to answer with `message`.
    public mutating func shutDown(message: String) -> (close: [Server], refused: [Waiter]) {
        refusal = message
        return (pause(), drainWaiters())
    }

    /// Whether a PAUSE has taken effect: no server is lent out or logging in.
    public var pauseComplete: Bool { paused && activeCount == 0 && connectingCount == 0 }

    /// RESUME: queued clients get servers again. Returns the loops to dial on.
    public mutating func resume() -> [Int] {
        paused = false
        var loops: [Int] = []
        while let first = peekWaiter(), totalServers < settings.poolSize, connectingCount < waitingCount {
            connectingCount += 1
            loops.append(first.loop)
        }
        return loops
    }

    /// RECONNECT: every server older than `now` closes at its next release. Returns the idle ones to close now.
    public mutating func reconnect(now: UInt64) -> [Server] {
        closeBefore = now
        condemnedActiveCount = activeCount // every server lent out now was made before this instant
        defer { idle = [] }
        return idle.map(\.server)
    }

    /// How long the longest-waiting client has waited, in nanoseconds (0 when nobody waits).
    public func longestWait(now: UInt64) -> UInt64 {
        peekWaiter().map { elapsed(since: $0.since, now: now) } ?? 0
    }

    /// The idle server unused longest (of those `matching` picks), to close for another pool's sake.
    public mutating func takeOneIdle(matching: (Server) -> Bool = { _ in true }) -> Server? {
        guard let index = idle.firstIndex(where: { matching($0.server) }) else { return nil }
        return idle.remove(at: index).server
    }

    /// Takes out the idle servers `unwanted` picks (e.g. on a host the pool may no longer use), to close.
    public mutating func takeIdle(where unwanted: (Server) -> Bool) -> [Server] {
        var taken: [Server] = []
        idle.removeAll { entry in
            guard unwanted(entry.server) else { return false }
            taken.append(entry.server)
            return true
        }
        return taken
    }

    public mutating func drainWaiters() -> [Waiter] {
        var all: [WaitingClient] = []
        for loop in queues.indices { all += queues[loop].drain() }
        waitingCount = 0
        return all.sorted { $0.since < $1.since }.map(\.waiter)
    }

    // MARK: Internals

    private mutating func takeIdle(at index: Int) -> Server {
        let entry = idle.remove(at: index)
        activeCount += 1
        return entry.server
    }

    private mutating func enqueue(_ waiter: Waiter, loop: Int, now: UInt64) {
        while queues.count <= loop { queues.append(WaiterQueue()) }
        queues[loop].append(WaitingClient(waiter: waiter, loop: loop, since: now))
        waitingCount += 1
    }

    /// The longest-waiting client over all loops.
    private func peekWaiter() -> WaitingClient? {
        var oldest: WaitingClient? = nil
        for queue in queues {
            if let head = queue.peek(), oldest == nil || head.since < oldest!.since { oldest = head }
        }
        return oldest
    }

    /// How much longer than the local head another loop's head may have waited before it is served first.
    /// Bounded unfairness in exchange for links without a thread hop per message.
    static var localPreference: UInt64 { 5_000_000 } // 5 ms

    /// The next waiter: the head of `loop`'s queue, unless another loop's head has waited notably longer.
    private mutating func dequeueWaiter(preferringLoop loop: Int) -> WaitingClient? {
        guard waitingCount > 0, let oldest = peekWaiter() else { return nil }
        var chosen = oldest.loop
        if loop < queues.count, let local = queues[loop].peek(), local.since <= oldest.since &+ Self.localPreference {
            chosen = loop
        }
        waitingCount -= 1
        return queues[chosen].popFirst()
    }

    /// Time from `start` to `now`, 0 if `start` is later: callers read the clock before taking the pool's lock,
    /// so an event recorded by another thread meanwhile (a client queued after the janitor read the clock) may
    /// carry a later time. Wrapping around would make it look ancient — a waiter timed out at once, an idle
    /// server closed at once.
    private func elapsed(since start: UInt64, now: UInt64) -> UInt64 {
        now > start ? now - start : 0
    }

    private func seconds(_ value: Double) -> UInt64 {
        UInt64(value * 1_000_000_000)
    }
}

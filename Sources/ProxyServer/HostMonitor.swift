import Configuration
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Pooling
import PostgresWire

/// Health checks, roles and lag of every host of a routed database, and the routing decisions made from them.
///
/// The `HostTable` (pure) sits under a lock because pools on every loop consult it when they dial or release.
/// The checks themselves run on one EventLoop: one dedicated connection per host, a tick four times a second
/// that starts due checks and times out late ones. Any change a check or a failed server connection brings
/// is logged with its reason and makes the runtime look over its pools (idle servers on hosts a pool may no
/// longer use are closed; waiters get a dial to the host that now fits).
final class HostMonitor: @unchecked Sendable {
    private unowned let runtime: ShoalRuntime
    let eventLoop: EventLoop
    private let lock = NIOLock()
    /// Guarded by `lock`.
    private var table = HostTable()
    /// Aurora instances discovered per cluster (keyed by the entry's seed hosts, so that `*` and the databases
    /// it stands for share one topology). Guarded by `lock`.
    private var discovered: [String: [HostAddress]] = [:]
    /// Clusters found to be Aurora by their hosts having `aurora_version()` (entries that leave
    /// aurora_topology unset). Guarded by `lock`.
    private var detected: Set<String> = []
    /// Hosts whose lag comes from a topology rather than from their own replay position. Guarded by `lock`.
    private var topologyLagged: Set<HostAddress> = []
    /// The database entry each host's checks log in with. Guarded by `lock`.
    private var loginEntry: [HostAddress: DatabaseEntry] = [:]
    // Touched on `eventLoop` only.
    private var slots: [HostAddress: CheckSlot] = [:]
    private var task: RepeatedTask?
    private var warnedTopology: Set<String> = []
    private var warnedLogin: Set<HostAddress> = []

    private struct CheckSlot {
        var connection: HostCheckConnection?
        var startedAt: UInt64 = 0
        var inFlight = false
        var lastStarted: UInt64 = 0
        var requested = true
        var topologyFor: TopologySource?
    }

    /// A cluster whose topology a check reads: its key and how its instances are named.
    private struct TopologySource {
        var cluster: String
        var pattern: String
    }

    init(runtime: ShoalRuntime, eventLoop: EventLoop) {
        self.runtime = runtime
        self.eventLoop = eventLoop
    }

    // MARK: Configuration

    /// Which hosts to watch, from the config (and the Aurora instances found so far). Call at start and reload.
    func configure(_ config: ShoalConfig) {
        var wanted: [HostAddress: DatabaseEntry] = [:]
        var order: [HostAddress] = []
        for entry in config.databases.values.sorted(by: { $0.name < $1.name }) where isRouted(entry, config) {
            var addresses = entry.addresses(socketDirectory: config.unixSocketDir)
            if usesAurora(entry, config) {
                let key = clusterKey(entry, config)
                addresses += lock.withLock { discovered[key] ?? [] }
            }
            for address in addresses where wanted[address] == nil {
                wanted[address] = entry
                order.append(address)
            }
        }
        lock.withLock {
            table.maxReplicaLag = config.maxReplicaLag
            loginEntry = wanted
            table.retain(only: Set(order))
            _ = table.track(order)
        }
        eventLoop.execute {
            self.slots = self.slots.filter { address, slot in
                if wanted[address] == nil { slot.connection?.abandon(reason: "host no longer configured") }
                return wanted[address] != nil
            }
            for address in order where self.slots[address] == nil { self.slots[address] = CheckSlot() }
            self.tick()
        }
    }

    private func clusterKey(_ entry: DatabaseEntry, _ config: ShoalConfig) -> String {
        entry.addresses(socketDirectory: config.unixSocketDir).map(\.description).joined(separator: ",")
    }

    /// Routing asks for this entry's hosts to be watched: a target, Aurora, or the read-only listener serving
    /// the replicas of a host list.
    func isRouted(_ entry: DatabaseEntry, _ config: ShoalConfig) -> Bool {
        entry.isRouted || usesAurora(entry, config) || (config.readonlyListenPort > 0 && entry.hosts.count > 1)
    }

    private func usesAurora(_ entry: DatabaseEntry, _ config: ShoalConfig) -> Bool {
        if let setting = entry.auroraTopology { return setting }
        if config.auroraTopology { return true }
        guard entry.isRouted || (config.readonlyListenPort > 0 && entry.hosts.count > 1) else { return false }
        let key = clusterKey(entry, config)
        return lock.withLock { detected.contains(key) }
    }

    /// The instance host pattern of `entry`'s cluster: the configured one, else derived from its endpoint.
    private func instancePattern(_ entry: DatabaseEntry, _ config: ShoalConfig) -> String {
        if !config.auroraInstanceHostPattern.isEmpty { return config.auroraInstanceHostPattern }
        return entry.hosts.first.flatMap(AuroraEndpoints.instancePattern(forClusterHost:)) ?? "?"
    }

    func start() {
        task = eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(0), delay: .milliseconds(250)) { [weak self] _ in
            self?.tick()
        }
    }

    func stop() {
        task?.cancel()
        eventLoop.execute {
            for slot in self.slots.values { slot.connection?.abandon(reason: "shutting down") }
            self.slots = [:]
        }
    }

    // MARK: Routing (any loop)

    /// The hosts a pool of `entry` chooses among: the configured ones, plus an Aurora cluster's instances.
    func candidates(for entry: DatabaseEntry, config: ShoalConfig) -> [HostAddress] {
        let configured = entry.addresses(socketDirectory: config.unixSocketDir)
        guard usesAurora(entry, config) else { return configured }
        let key = clusterKey(entry, config)
        let instances = lock.withLock { discovered[key] ?? [] }
        // Once the instances are known, the seed (a cluster endpoint) is not used for pools: it would count
        // the writer twice under two names.
        return instances.isEmpty ? configured : instances
    }

    func choose(for pool: Pool, config: ShoalConfig) -> HostAddress? {
        let candidates = candidates(for: pool.database, config: config)
        let turn = pool.database.loadBalanceHosts == "disable" ? 0 : pool.nextTurn()
        return lock.withLock { table.choose(for: pool.target, among: candidates, turn: turn) }
    }

    func isUsable(_ address: HostAddress, for pool: Pool, config: ShoalConfig) -> Bool {
        let candidates = candidates(for: pool.database, config: config)
        return lock.withLock { table.isUsable(address, for: pool.target, among: candidates) }
    }

    /// Where a one-off lookup (auth_query) for `entry` goes: the writer if it is one of the entry's hosts, else
    /// the first host up, else the first host.
    func lookupHost(for entry: DatabaseEntry, config: ShoalConfig) -> HostAddress {
        let candidates = candidates(for: entry, config: config)
        guard isRouted(entry, config) else { return candidates[0] }
        return lock.withLock { table.preferredHost(among: candidates) } ?? candidates[0]
    }

    /// The hosts a pool may keep servers on right now (for closing its idle servers elsewhere without holding
    /// this lock under the pool's).
    func usableHosts(for pool: Pool, config: ShoalConfig) -> Set<HostAddress> {
        let candidates = candidates(for: pool.database, config: config)
        let target = pool.target
        return lock.withLock {
            Set(table.hosts.keys.filter { table.isUsable($0, for: target, among: candidates) })
        }
    }

    var generation: Int { lock.withLock { table.generation } }

    /// A server connection to `address` failed to connect, died, or refused a write: down at once, checked again now.
    func serverFailed(_ address: HostAddress, reason: String) {
        let events = lock.withLock { table.markDown(address, reason: reason, now: Date().timeIntervalSince1970) }
        report(events)
        eventLoop.execute {
            self.slots[address]?.requested = true
            self.tick()
        }
    }

    /// A server of a writer pool answered 25006 (read-only transaction). A client's own `SET TRANSACTION READ
    /// ONLY` does that too, so the host is not marked down on the word of one error: it is checked now, and a
    /// demoted writer is found within a round trip.
    func readOnlyRefusal(at address: HostAddress) {
        runtime.logger.info("host \(address) refused a write with 25006: checking its role now")
        eventLoop.execute {
            self.slots[address]?.requested = true
            self.tick()
        }
    }

    /// A server connection of a routed pool logged in (or, idle, reported a change) with `in_hot_standby`:
    /// the host's role as PostgreSQL states it. This is how hosts without health checks get a role at all.
    func roleReported(_ address: HostAddress, inRecovery: Bool) {
        report(lock.withLock { table.roleReported(address, inRecovery: inRecovery) })
    }

    /// SHOW HOSTS and /metrics.
    func snapshot() -> (hosts: [HostStatus], failovers: Int) {
        lock.withLock { (table.hosts.values.sorted { $0.address < $1.address }, table.failovers) }
    }

    // MARK: Checks (on `eventLoop`)

    /// Role; replay lag: none while the replica has replayed all it received (an idle primary sends
    /// nothing, so the last replayed commit's age alone would read as lag), else the age of that commit; and
    /// whether this is Aurora (`aurora_version()` exists).
    private static let checkQuery = """
        SELECT pg_catalog.pg_is_in_recovery(), CASE WHEN NOT pg_catalog.pg_is_in_recovery() \
        OR COALESCE(pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn(), true) THEN 0 \
        ELSE COALESCE(EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END, \
        pg_catalog.to_regproc('aurora_version') IS NOT NULL
        """
    /// Aurora's view of its instances; stale rows of deleted instances are skipped as AWS's drivers do.
    private static let topologyQuery = """
        SELECT server_id, session_id = 'MASTER_SESSION_ID', COALESCE(replica_lag_in_msec, 0) FROM aurora_replica_status() \
        WHERE session_id = 'MASTER_SESSION_ID' OR last_update_timestamp > pg_catalog.now() - interval '5 minutes'
        """

    private func tick() {
        let config = runtime.snapshot.config
        let now = NIODeadline.now().uptimeNanoseconds
        // While the writer is lost every host is checked on every tick (four a second), so the promoted one is
        // found within a quarter second rather than a whole period.
        let hunting = lock.withLock { table.writerLost }
        let period = hunting ? 200_000_000 : UInt64(config.healthCheckPeriod * 1e9)
        let timeout = UInt64(max(0.1, config.healthCheckTimeout) * 1e9)
        // Hosts without checks that went down are tried again by the pools after server_login_retry (nothing else
        // would find them back).
        let retried = lock.withLock { table.retryDown(before: Date().timeIntervalSince1970 - config.serverLoginRetry) }
        if !retried.isEmpty {
            for address in retried { runtime.logger.info("host \(address) has no health checks: trying it again after server_login_retry") }
            runtime.routingChanged()
        }
        var topologySources: [HostAddress: TopologySource]?
        for address in Array(slots.keys) {
            guard var slot = slots[address] else { continue }
            if slot.inFlight {
                if now &- slot.startedAt >= timeout {
                    slot.connection?.abandon(reason: "health check timeout")
                }
                continue
            }
            let due = slot.requested || (period > 0 && now &- slot.lastStarted >= period)
            guard due else { continue }
            slot.requested = false
            slot.inFlight = true
            slot.startedAt = now
            slot.lastStarted = now
            if topologySources == nil { topologySources = chooseTopologySources(config) }
            slot.topologyFor = topologySources?[address]
            slots[address] = slot
            startCheck(address, topologyFor: slot.topologyFor, config: config)
        }
    }

    /// For each Aurora cluster, the host that reads the topology this round: the writer if known, else any up host,
    /// else the first seed.
    private func chooseTopologySources(_ config: ShoalConfig) -> [HostAddress: TopologySource] {
        var sources: [HostAddress: TopologySource] = [:]
        for entry in config.databases.values where usesAurora(entry, config) {
            let key = clusterKey(entry, config)
            let candidates = entry.addresses(socketDirectory: config.unixSocketDir) + lock.withLock { discovered[key] ?? [] }
            let source = lock.withLock { table.preferredHost(among: candidates) }
            if let source, sources[source] == nil { sources[source] = TopologySource(cluster: key, pattern: instancePattern(entry, config)) }
        }
        return sources
    }

    private func startCheck(_ address: HostAddress, topologyFor: TopologySource?, config: ShoalConfig) {
        let query = topologyFor == nil ? Self.checkQuery : Self.checkQuery + ";" + Self.topologyQuery
        let started = NIODeadline.now().uptimeNanoseconds
        let finish: (Result<HostCheckConnection.Answer, HostCheckConnection.CheckFailure>) -> Void = { [weak self] result in
            self?.checkFinished(address, result: result, started: started, topologyFor: topologyFor)
        }
        if let connection = slots[address]?.connection, connection.isOpen, connection.run(.simple(query), completion: finish) {
            return
        }
        guard let login = checkLogin(for: address, config: config) else {
            return checkFinished(address, result: .failure(.init(reason: "no user to check with (set health_check_user)", refusedLogin: true)),
                                 started: started, topologyFor: nil)
        }
        slots[address]?.connection = HostCheckConnection.open(address: address, login: login, on: eventLoop, query: .simple(query), completion: finish)
    }

    private func checkLogin(for address: HostAddress, config: ShoalConfig) -> HostCheckConnection.Login? {
        guard let entry = lock.withLock({ loginEntry[address] }) else { return nil }
        guard let user = config.healthCheckUser ?? entry.user ?? entry.authUser ?? config.authUser else { return nil }
        let secret = runtime.initialServerSecret(database: entry, user: user).loginSecret
        let tls = runtime.tls.withLockedValue { $0 }
        // `*` stands for every database: its checks log in to `postgres`.
        let database = entry.dbname ?? (entry.name == "*" ? "postgres" : entry.name)
        return HostCheckConnection.Login(user: user, database: database, secret: secret,
                                         tls: tls.forServers, tlsRequired: tls.serverMode != "prefer" && tls.serverMode != "allow",
                                         connectTimeout: min(config.serverConnectTimeout, max(0.1, config.healthCheckTimeout)))
    }

    private func checkFinished(_ address: HostAddress, result: Result<HostCheckConnection.Answer, HostCheckConnection.CheckFailure>,
                               started: UInt64, topologyFor: TopologySource?) {
        guard slots[address]?.inFlight == true else { return }
        slots[address]?.inFlight = false
        let config = runtime.snapshot.config
        let latency = Double(NIODeadline.now().uptimeNanoseconds &- started) / 1e9
        let wallNow = Date().timeIntervalSince1970
        var events: [HostEvent] = []
        switch result {
        case .failure(let failure) where failure.refusedLogin:
            // The checks cannot run: the host keeps the state it had (hosts never checked stay usable by `any`
            // pools, as PgBouncer would use them; writer and replica targets wait for a role). Said once per host.
            slots[address]?.connection = nil
            if warnedLogin.insert(address).inserted {
                runtime.logger.warning("health checks of \(address) cannot run: \(failure.reason); its role is learned from the server connections pools open")
                lock.withLock { table.setLearnsFromServers(address, true) }
                runtime.routingChanged()
            }
        case .failure(let failure):
            if slots[address]?.connection?.isOpen == false { slots[address]?.connection = nil }
            events = lock.withLock { table.checkFailed(address, reason: failure.reason, limit: config.healthCheckFailures, now: wallNow) }
        case .success(let answer):
            guard let row = answer.results.first?.first, row.count >= 2 else {
                let reason = answer.error.map { "check query failed: \($0.message)" } ?? "check query returned no row"
                events = lock.withLock { table.checkFailed(address, reason: reason, limit: config.healthCheckFailures, now: wallNow) }
                break
            }
            if warnedLogin.remove(address) != nil { lock.withLock { table.setLearnsFromServers(address, false) } }
            let inRecovery = row[0] == "t"
            let lag = row[1].flatMap(Double.init)
            events = lock.withLock {
                table.checkSucceeded(address, inRecovery: inRecovery, lag: topologyLagged.contains(address) ? nil : lag,
                                     latency: latency, now: wallNow)
            }
            if row.count >= 3 && row[2] == "t" { auroraFound(on: address, config: config) }
            if let source = topologyFor {
                if answer.results.count >= 2 {
                    events += topologyReceived(answer.results[1], cluster: source.cluster, pattern: source.pattern, port: address.port, config: config)
                } else if let error = answer.error, !warnedTopology.contains(source.cluster) {
                    warnedTopology.insert(source.cluster)
                    runtime.logger.warning("aurora_topology for \(source.cluster): cannot read aurora_replica_status() on \(address): \(error.message)")
                }
            }
        }
        report(events)
    }

    /// A host has `aurora_version()`: the routed entries naming it that leave aurora_topology unset read the
    /// cluster's topology from now on.
    private func auroraFound(on address: HostAddress, config: ShoalConfig) {
        guard !config.auroraTopology else { return }
        var found: [String] = []
        for entry in config.databases.values where entry.auroraTopology == nil && isRouted(entry, config)
            && entry.addresses(socketDirectory: config.unixSocketDir).contains(address) {
            let key = clusterKey(entry, config)
            if lock.withLock({ detected.insert(key).inserted }) { found.append(key) }
        }
        guard !found.isEmpty else { return }
        for key in found { runtime.logger.info("aurora_topology detected for \(key): aurora_version() exists on \(address)") }
        configure(config)
    }

    /// Rows of aurora_replica_status(): (server_id, is writer, lag ms). New instances are tracked and checked
    /// at once; instances gone from the topology are dropped.
    private func topologyReceived(_ rows: [[String?]], cluster: String, pattern: String, port: Int, config: ShoalConfig) -> [HostEvent] {
        var instances: [(HostAddress, Double)] = []
        for row in rows where row.count >= 3 {
            guard let id = row[0], !id.isEmpty else { continue }
            let host = pattern.replacingOccurrences(of: "?", with: id)
            instances.append((HostAddress(host: host, port: port), (row[2].flatMap(Double.init) ?? 0) / 1000))
        }
        guard !instances.isEmpty else { return [] }
        let addresses = instances.map(\.0).sorted()
        let changed = lock.withLock { () -> Bool in
            let before = discovered[cluster] ?? []
            discovered[cluster] = addresses
            topologyLagged.formUnion(addresses)
            return before != addresses
        }
        var events: [HostEvent] = []
        if changed {
            runtime.logger.info("aurora_topology for \(cluster): instances \(addresses.map(\.description).joined(separator: ", "))")
            configure(config)
            runtime.routingChanged()
        }
        lock.withLock {
            for (address, lag) in instances { events += table.lagReported(address, lag: lag) }
        }
        return events
    }

    /// Logs every change with its reason and lets the pools react.
    private func report(_ events: [HostEvent]) {
        guard !events.isEmpty else { return }
        for event in events {
            switch event {
            case .down, .writerChanged, .lagging: runtime.logger.warning("\(event)")
            case .up, .roleChanged, .caughtUp: runtime.logger.info("\(event)")
            }
        }
        runtime.routingChanged()
    }
}

import Configuration

/// What Shoal believes about one backend host: role, health, lag. Written by health checks and by server
/// connections that fail; read whenever a routed pool dials.
public struct HostStatus: Sendable, Equatable {
    public enum Role: String, Sendable { case unknown, primary, replica }
    public enum Health: String, Sendable { case unknown, up, down }

    public var address: HostAddress
    public var role: Role = .unknown
    public var health: Health = .unknown
    /// Replay lag in seconds (replicas; 0 on the writer).
    public var lag: Double = 0
    /// Out of the read rotation because `lag` passed max_replica_lag.
    public var lagging = false
    /// Seconds since the epoch of the last finished check, and how long it took.
    public var lastCheck: Double?
    public var checkLatency: Double?
    public var consecutiveFailures = 0
    /// Times this host became the writer while another host was (or it had been a replica).
    public var promotions = 0
    /// Order in which hosts were seen becoming the writer: the newest wins over a stale one (0 = never).
    public var writerSequence = 0
    /// Why the last change of health or role happened.
    public var reason = ""
    /// Seconds since the epoch when it was last marked down.
    public var downSince: Double?

    public init(address: HostAddress) { self.address = address }
}

/// A change worth a log line: every role change and every host marked up or down, with the reason.
public enum HostEvent: Sendable, Equatable, CustomStringConvertible {
    case up(HostAddress, role: HostStatus.Role)
    case down(HostAddress, reason: String)
    case roleChanged(HostAddress, from: HostStatus.Role, to: HostStatus.Role)
    case writerChanged(from: HostAddress?, to: HostAddress)
    case lagging(HostAddress, lag: Double, limit: Double)
    case caughtUp(HostAddress, lag: Double)

    public var description: String {
        switch self {
        case .up(let address, let role): return "host \(address) is up (\(role.rawValue))"
        case .down(let address, let reason): return "host \(address) is down: \(reason)"
        case .roleChanged(let address, let from, let to): return "host \(address) changed role from \(from.rawValue) to \(to.rawValue)"
        case .writerChanged(let from, let to): return "failover: writer is now \(to)" + (from.map { " (was \($0))" } ?? "")
        case .lagging(let address, let lag, let limit):
            return "host \(address) leaves the read rotation: replica lag \(formatSeconds(lag)) > max_replica_lag \(formatSeconds(limit))"
        case .caughtUp(let address, let lag): return "host \(address) is back in the read rotation: replica lag \(formatSeconds(lag))"
        }
    }
}

private func formatSeconds(_ value: Double) -> String {
    let rounded = (value * 1000).rounded() / 1000
    return "\(rounded)s"
}

/// The state of every backend host Shoal routes to: a pure structure, kept under a lock by its owner.
///
/// Routing rules (`choose`): the writer is the up host that reports it is not in recovery, the newest one if
/// two do (after a promotion the old primary may still be running: nobody writes to it once the new one is
/// known). Replicas are up hosts in recovery whose lag is within max_replica_lag. Hosts never checked yet are
/// usable only by `any` pools, which is PgBouncer's behaviour for a host list.
public struct HostTable: Sendable {
    public private(set) var hosts: [HostAddress: HostStatus] = [:]
    /// Writer changes seen (promotions of another host while one was known), for SHOW HOSTS and metrics.
    public private(set) var failovers = 0
    /// Bumped on every change that can alter a routing decision, so readers can cache decisions.
    public private(set) var generation = 0
    private var writerSequence = 0
    public var maxReplicaLag: Double
    /// Hosts whose health checks cannot run (no user to log in as): their role is learned from the server
    /// connections pools open, as libpq learns it from the connection it opened (`in_hot_standby`, reported at
    /// login since PostgreSQL 14), and `choose` sends a pool to one of them to find out when none fits yet.
    public private(set) var learnsFromServers: Set<HostAddress> = []

    public init(maxReplicaLag: Double = 0) { self.maxReplicaLag = maxReplicaLag }

    // MARK: Membership

    /// Starts tracking these hosts (known ones keep their state). Returns the new ones, to check at once.
    public mutating func track(_ addresses: [HostAddress]) -> [HostAddress] {
        var added: [HostAddress] = []
        for address in addresses where hosts[address] == nil {
            hosts[address] = HostStatus(address: address)
            added.append(address)
        }
        if !added.isEmpty { generation &+= 1 }
        return added
    }

    /// Forgets hosts no longer named by any entry nor discovered in a topology.
    public mutating func retain(only addresses: Set<HostAddress>) {
        let before = hosts.count
        hosts = hosts.filter { addresses.contains($0.key) }
        if hosts.count != before { generation &+= 1 }
    }

    // MARK: Observations

    /// A check answered: `inRecovery` from pg_is_in_recovery(), `lag` in seconds when known.
    public mutating func checkSucceeded(_ address: HostAddress, inRecovery: Bool, lag: Double?, latency: Double, now: Double) -> [HostEvent] {
        guard var status = hosts[address] else { return [] }
        status.lastCheck = now
        status.checkLatency = latency
        status.consecutiveFailures = 0
        hosts[address] = status
        return observe(address, inRecovery: inRecovery, lag: lag, reason: "check succeeded")
    }

    /// A server connection to the host logged in and reported `in_hot_standby` (or changed it while open: a
    /// promotion reports `off` to every session): up, with that role.
    public mutating func roleReported(_ address: HostAddress, inRecovery: Bool) -> [HostEvent] {
        observe(address, inRecovery: inRecovery, lag: nil, reason: "a server connection reported in_hot_standby")
    }

    /// Whether the host's role comes from server connections (its checks cannot run).
    public mutating func setLearnsFromServers(_ address: HostAddress, _ learns: Bool) {
        let changed = learns ? learnsFromServers.insert(address).inserted : learnsFromServers.remove(address) != nil
        if changed { generation &+= 1 }
    }

    /// Hosts that learn from servers and have been down since before `cutoff`: their health becomes unknown, so
    /// a pool tries them again (nothing else would: no check runs). Returns them, for the log.
    public mutating func retryDown(before cutoff: Double) -> [HostAddress] {
        var retried: [HostAddress] = []
        for address in learnsFromServers {
            guard var status = hosts[address], status.health == .down, let since = status.downSince, since < cutoff else { continue }
            status.health = .unknown
            status.reason = "down since \(since); tried again"
            hosts[address] = status
            retried.append(address)
        }
        if !retried.isEmpty { generation &+= 1 }
        return retried
    }

    private mutating func observe(_ address: HostAddress, inRecovery: Bool, lag: Double?, reason: String) -> [HostEvent] {
        guard var status = hosts[address] else { return [] }
        var events: [HostEvent] = []
        let newRole: HostStatus.Role = inRecovery ? .replica : .primary
        if status.health != .up {
            status.health = .up
            status.reason = reason
            events.append(.up(address, role: newRole))
        }
        if status.role != newRole {
            let promoted = status.role == .replica
            if status.role != .unknown {
                events.append(.roleChanged(address, from: status.role, to: newRole))
                status.reason = "role changed to \(newRole.rawValue)"
            }
            status.role = newRole
            if newRole == .primary {
                // A writer move: another host was the writer before, or this one was a replica until now.
                let earlier = hosts.values.filter { $0.address != address && $0.writerSequence > 0 }
                    .max { $0.writerSequence < $1.writerSequence }
                if earlier != nil || promoted {
                    failovers += 1
                    status.promotions += 1
                    events.append(.writerChanged(from: earlier?.address, to: address))
                }
                writerSequence += 1
                status.writerSequence = writerSequence
            }
        }
        status.lag = inRecovery ? (lag ?? status.lag) : 0
        let lagging = inRecovery && maxReplicaLag > 0 && status.lag > maxReplicaLag
        if lagging != status.lagging {
            status.lagging = lagging
            events.append(lagging ? .lagging(address, lag: status.lag, limit: maxReplicaLag) : .caughtUp(address, lag: status.lag))
        }
        hosts[address] = status
        if !events.isEmpty { generation &+= 1 }
        return events
    }

    /// A check failed or timed out; the host goes down after `limit` failures in a row.
    public mutating func checkFailed(_ address: HostAddress, reason: String, limit: Int, now: Double) -> [HostEvent] {
        guard var status = hosts[address] else { return [] }
        status.lastCheck = now
        status.checkLatency = nil
        status.consecutiveFailures += 1
        hosts[address] = status
        guard status.consecutiveFailures >= max(1, limit) else { return [] }
        return markDown(address, reason: "\(status.consecutiveFailures) failed health checks, last: \(reason)", now: now)
    }

    /// A server connection to the host failed to connect or died: down at once, until a check says otherwise.
    public mutating func markDown(_ address: HostAddress, reason: String, now: Double = 0) -> [HostEvent] {
        guard var status = hosts[address], status.health != .down else { return [] }
        status.health = .down
        status.downSince = now
        status.reason = reason
        hosts[address] = status
        generation &+= 1
        return [.down(address, reason: reason)]
    }

    /// Lag reported by a topology source (Aurora's replica_lag_in_msec) rather than by the host itself.
    public mutating func lagReported(_ address: HostAddress, lag: Double) -> [HostEvent] {
        guard var status = hosts[address], status.role == .replica else { return [] }
        status.lag = lag
        var events: [HostEvent] = []
        let lagging = maxReplicaLag > 0 && lag > maxReplicaLag
        if lagging != status.lagging {
            status.lagging = lagging
            events.append(lagging ? .lagging(address, lag: lag, limit: maxReplicaLag) : .caughtUp(address, lag: lag))
            generation &+= 1
        }
        hosts[address] = status
        return events
    }

    // MARK: Routing

    /// The current writer: the host that most recently became primary, while it is up and still primary.
    /// An older primary never takes over again by itself (it may be the demoted side of a failover that is
    /// still running); only a check that sees it become primary anew does that.
    public var writer: HostAddress? {
        guard let newest = hosts.values.filter({ $0.writerSequence > 0 }).max(by: { $0.writerSequence < $1.writerSequence }),
              newest.health == .up, newest.role == .primary else { return nil }
        return newest.address
    }

    /// Where a one-off query goes among `candidates`: the writer if it is one, else the first host up, else the first.
    public func preferredHost(among candidates: [HostAddress]) -> HostAddress? {
        if let writer, candidates.contains(writer) { return writer }
        return candidates.first { hosts[$0]?.health == .up } ?? candidates.first
    }

    /// A writer was known and is gone (down or demoted) with no successor yet: a failover is under way.
    public var writerLost: Bool {
        writer == nil && hosts.values.contains { $0.writerSequence > 0 }
    }

    /// Whether a pool with `target` may keep a server on `address` (checked when servers are released).
    public func isUsable(_ address: HostAddress, for target: TargetSessionAttrs, among candidates: [HostAddress]) -> Bool {
        guard let status = hosts[address] else { return target == .any }
        switch target {
        case .any:
            return status.health != .down
        case .readWrite, .primary:
            return address == writer
        case .readOnly, .standby:
            return isReadable(status)
        case .preferStandby:
            if isReadable(status) { return true }
            return address == writer && !candidates.contains { hosts[$0].map(isReadable) ?? false }
        }
    }

    /// The host a new server connection of a pool should go to, or nil when none fits yet (the pool waits).
    /// `turn` rotates among equally good hosts (load_balance_hosts=round-robin); pass 0 to take the first.
    public func choose(for target: TargetSessionAttrs, among candidates: [HostAddress], turn: Int) -> HostAddress? {
        let usable: [HostAddress]
        switch target {
        case .any:
            usable = candidates.filter { hosts[$0]?.health != .down }
        case .readWrite, .primary:
            if let writer, candidates.contains(writer) { return writer }
            usable = []
        case .readOnly, .standby:
            usable = candidates.filter { hosts[$0].map(isReadable) ?? false }
        case .preferStandby:
            let replicas = candidates.filter { hosts[$0].map(isReadable) ?? false }
            if replicas.isEmpty, let writer, candidates.contains(writer) { return writer }
            usable = replicas
        }
        guard !usable.isEmpty else { return probe(for: target, among: candidates, turn: turn) }
        return usable[abs(turn % usable.count)]
    }

    /// No host fits by what is known: among hosts that learn their role from server connections, one to connect
    /// to and find out, as libpq walks a host list — one whose role is unknown; for a writer pool with none
    /// unknown, a replica (it may have been promoted since it was seen). The caller closes a connection that
    /// turns out not to fit, and the pool tries again on its next round.
    private func probe(for target: TargetSessionAttrs, among candidates: [HostAddress], turn: Int) -> HostAddress? {
        let open = candidates.filter { learnsFromServers.contains($0) && hosts[$0] != nil && hosts[$0]!.health != .down }
        let unknown = open.filter { hosts[$0]!.role == .unknown }
        let pick: [HostAddress]
        switch target {
        case .readWrite, .primary: pick = unknown.isEmpty ? open.filter { hosts[$0]!.role == .replica } : unknown
        case .readOnly, .standby, .preferStandby: pick = unknown
        case .any: pick = []
        }
        guard !pick.isEmpty else { return nil }
        return pick[abs(turn % pick.count)]
    }

    private func isReadable(_ status: HostStatus) -> Bool {
        status.health == .up && status.role == .replica && !status.lagging
    }
}

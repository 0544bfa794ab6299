import Configuration
import NIOConcurrencyHelpers
import Pooling

/// Server connections counted per database, per user and per backend host across pools, for
/// max_db_connections, max_user_connections and max_host_connections. Taken before a dial, given back when
/// that server closes (or never came up).
final class ConnectionBudget: @unchecked Sendable {
    private let lock = NIOLock()
    private var perDatabase: [String: Int] = [:]
    private var perUser: [String: Int] = [:]
    /// Per host, the connections each pool holds there: max_host_connections shares a host by these.
    private var perHost: [HostAddress: [PoolKey: Int]] = [:]

    struct Limits {
        var database: Int
        var user: Int
        var host: Int
    }

    enum Refusal {
        case databaseOrUser
        /// The host is full; `aboveFairShare` lists the pools holding more connections there than the asking
        /// pool, largest first, so an idle server of one of them can make room.
        case host(aboveFairShare: [PoolKey])
    }

    /// Takes one slot for a server of `pool` on `host` if every limit allows (0 = no limit).
    func tryAcquire(pool: PoolKey, host: HostAddress, limits: Limits) -> Refusal? {
        lock.withLock {
            let db = perDatabase[pool.database, default: 0]
            let us = perUser[pool.user, default: 0]
            if limits.database > 0 && db >= limits.database { return .databaseOrUser }
            if limits.user > 0 && us >= limits.user { return .databaseOrUser }
            let onHost = perHost[host, default: [:]]
            if limits.host > 0 && onHost.values.reduce(0, +) >= limits.host {
                let mine = onHost[pool, default: 0]
                let larger = onHost.filter { $0.key != pool && $0.value > mine }.sorted { $0.value > $1.value }.map(\.key)
                return .host(aboveFairShare: larger)
            }
            perDatabase[pool.database] = db + 1
            perUser[pool.user] = us + 1
            perHost[host, default: [:]][pool, default: 0] += 1
            return nil
        }
    }

    func release(pool: PoolKey, host: HostAddress) {
        lock.withLock {
            perDatabase[pool.database, default: 1] -= 1
            perUser[pool.user, default: 1] -= 1
            perHost[host, default: [:]][pool, default: 1] -= 1
            if perHost[host]?[pool] == 0 { perHost[host]?[pool] = nil }
        }
    }

    /// Server connections open (or opening) to `host`, all pools together.
    func connections(to host: HostAddress) -> Int {
        lock.withLock { perHost[host]?.values.reduce(0, +) ?? 0 }
    }
}

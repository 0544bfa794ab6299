import NIOCore
import Pooling

/// The connections living on one EventLoop, and counters kept per loop. Touched only on that loop, so neither
/// the accept path nor the forwarding path takes a lock for it; the admin console and /metrics read it by
/// running a closure on each loop (`ShoalRuntime.visitLoops`).
final class LoopRegistry {
    private(set) var clients: [ObjectIdentifier: ClientConnection] = [:]
    private(set) var servers: [ObjectIdentifier: ServerConnection] = [:]
    /// Failed client logins on this loop (wrong password, unknown user, console access refused).
    var authFailures: UInt64 = 0

    func add(_ client: ClientConnection) { clients[ObjectIdentifier(client)] = client }
    func remove(_ client: ClientConnection) { clients[ObjectIdentifier(client)] = nil }
    func add(_ server: ServerConnection) { servers[ObjectIdentifier(server)] = server }
    func remove(_ server: ServerConnection) { servers[ObjectIdentifier(server)] = nil }
}

/// One pool's traffic counters on one EventLoop. Written by the connections of that loop only.
final class PoolStatsShard {
    var counters = TrafficCounters()
}

extension ShoalRuntime {
    /// Runs `body` on every EventLoop with that loop's registry and index; the results come back in loop order.
    func visitLoops<T: Sendable>(_ body: @escaping @Sendable (LoopRegistry, Int) -> T) -> EventLoopFuture<[T]> {
        let futures = loops.indices.map { index in
            loops[index].submit { [registries] in body(registries[index], index) }
        }
        return EventLoopFuture.whenAllSucceed(futures, on: loops[0])
    }

    /// Traffic totals per pool, summed over every loop's shard (a replication client's own pool counts in its
    /// shared pool's).
    func trafficTotals() -> EventLoopFuture<[PoolKey: TrafficCounters]> {
        let pools = allPools
        return visitLoops { _, index in
            pools.map { ($0.key, $0.shards[index].counters) }
        }.map { perLoop in
            var totals: [PoolKey: TrafficCounters] = [:]
            for loop in perLoop {
                for (key, counters) in loop { totals[key.shared, default: TrafficCounters()].add(counters) }
            }
            return totals
        }
    }
}

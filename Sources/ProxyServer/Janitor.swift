import NIOCore
import Pooling

/// The periodic look over every pool (about three times a second, like PgBouncer's): waiters past
/// query_wait_timeout, idle servers past their lifetime or idle timeout, min_pool_size and the reserve pool.
final class Janitor: @unchecked Sendable {
    private let runtime: ShoalRuntime
    private var task: RepeatedTask?
    /// Pools with no clients, servers or waiters, and since when (autodb_idle_timeout, pool_idle_timeout); loop 0 only.
    private var poolsUnusedSince: [PoolKey: UInt64] = [:]

    init(runtime: ShoalRuntime) { self.runtime = runtime }

    func start() {
        task = runtime.loops[0].scheduleRepeatedTask(initialDelay: .milliseconds(333), delay: .milliseconds(333)) { [self, runtime] _ in
            let now = NIODeadline.now().uptimeNanoseconds
            for pool in runtime.allPools { Janitor.maintain(pool, runtime: runtime, now: now) }
            runtime.freeUnusedPools(now: now, unusedSince: &poolsUnusedSince)
        }
    }

    /// One pool's look: also run at once when routing changes, so waiters get a dial to the host that now fits.
    static func maintain(_ pool: Pool, runtime: ShoalRuntime, now: UInt64) {
        let work = pool.withState { $0.maintain(now: now) }
        for waiter in work.timedOut {
            waiter.eventLoop.execute { waiter.waitTimedOut() }
        }
        for waiter in work.queuedTooLong {
            waiter.eventLoop.execute { waiter.queuedTooLong() }
        }
        for server in work.close {
            server.close(reason: "server idle timeout or lifetime")
        }
        if let waiter = work.reserveFor {
            waiter.eventLoop.execute { waiter.logger.warning("taking connection from reserve_pool") }
        }
        for loop in work.connect {
            ServerConnection.dial(pool: pool, runtime: runtime, on: runtime.loops[loop])
        }
    }

    func stop() { task?.cancel() }
}

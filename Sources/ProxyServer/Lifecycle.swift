import AdminConsole
import NIOCore
import Pooling

/// What the console and the signals have asked of the whole pooler.
struct LifecycleState {
    /// Global PAUSE (console or SIGUSR1).
    var pausedAll = false
    /// SUSPEND: paused, and the listeners stop accepting.
    var suspended = false
    var pausedDatabases: Set<String> = []
    var disabledDatabases: Set<String> = []
    var shutdown: AdminCommand.ShutdownMode? = nil

    func isPaused(database: String) -> Bool {
        pausedAll || suspended || pausedDatabases.contains(database) || shutdown == .waitForServers
    }

    /// The login error for a non-console client, if logins to `database` are refused now.
    ///
    /// During SHUTDOWN WAIT_FOR_CLIENTS (SIGTERM) a client that came in over TCP is served: it got through a
    /// listener that is closed or closing, so it is one of the clients being waited for. PgBouncer refuses its
    /// login, and in a rolling restart with so_reuseport those are the connections that fail — the ones the kernel
    /// handed to the old process just before its listener closed. The Unix socket stays open for the console,
    /// so a login there is refused as PgBouncer refuses it.
    func loginRefusal(database: String, overTCP: Bool) -> String? {
        if let shutdown, !(shutdown == .waitForClients && overTCP) { return "pooler is shutting down" }
        if disabledDatabases.contains(database) { return "database \"\(database)\" is disabled" }
        return nil
    }
}

// MARK: - Operations behind the console commands and the signals

extension ShoalRuntime {
    /// Pools of `database`, or all pools when nil.
    func pools(of database: String?) -> [Pool] {
        allPools.filter { database == nil || $0.key.database == database }
    }

    /// PAUSE: pools stop lending servers and close the idle ones; the future completes once no server is
    /// lent out any more (each client's transaction has ended), as PgBouncer answers PAUSE only then.
    func pause(database: String?) -> EventLoopFuture<Void> {
        for pool in pools(of: database) {
            for server in pool.withState({ $0.pause() }) { server.close(reason: "pause mode") }
        }
        return poll(every: .milliseconds(50)) { [self] in
            loops[0].makeSucceededFuture(pools(of: database).allSatisfy { pool in
                let (done, leftovers) = pool.withState { state -> (Bool, [ServerConnection]) in
                    let extra = state.paused ? state.pause() : []
                    return (state.pauseComplete, extra)
                }
                for server in leftovers { server.close(reason: "pause mode") }
                return done
            })
        }
    }

    /// RESUME: queued clients get servers again.
    func resume(database: String?) {
        let stillPaused = lifecycle.withLockedValue { $0 }
        for pool in pools(of: database) where !stillPaused.isPaused(database: pool.key.database) {
            for loop in pool.withState({ $0.resume() }) {
                ServerConnection.dial(pool: pool, runtime: self, on: loops[loop])
            }
        }
    }

    /// RECONNECT: servers close at their next release; idle ones now.
    func reconnect(pool: Pool) {
        let now = NIODeadline.now().uptimeNanoseconds
        for server in pool.withState({ $0.reconnect(now: now) }) { server.close(reason: "reconnect") }
        guard snapshot.config.serverFastClose else { return }
        // Sessions idle between transactions end now; the others at their transaction's end (serverDataReceived).
        for (index, loop) in loops.enumerated() {
            loop.execute { [registries] in
                for client in registries[index].clients.values where client.pool === pool { client.endSessionIfServerMustClose() }
            }
        }
    }

    /// KILL: every client and server of the pool goes now.
    func kill(pool: Pool, reason: String) {
        let key = pool.key
        for (index, loop) in loops.enumerated() {
            loop.execute { [registries] in
                for client in registries[index].clients.values where client.pool === pool {
                    client.fatal(reason)
                }
                for server in registries[index].servers.values where server.pool.key == key {
                    server.close(reason: reason)
                }
            }
        }
        for server in pool.withState({ $0.pause() }) { server.close(reason: reason) }
    }

    /// Completes when no server older than its pool's last RECONNECT is left (WAIT_CLOSE).
    func waitClose(database: String?) -> EventLoopFuture<Void> {
        poll(every: .milliseconds(100)) { [self] in
            visitLoops { registry, _ in
                registry.servers.values.contains { server in
                    (database == nil || server.pool.key.database == database) && server.closeNeeded
                }
            }.map { !$0.contains(true) }
        }
    }

    /// Completes once `check` answers true, asking again every `interval`. The one waiting loop behind
    /// PAUSE, WAIT_CLOSE and the WAIT_FOR_* shutdowns.
    func poll(every interval: TimeAmount, _ check: @escaping () -> EventLoopFuture<Bool>) -> EventLoopFuture<Void> {
        let loop = loops[0]
        let promise = loop.makePromise(of: Void.self)
        func attempt() {
            check().hop(to: loop).whenComplete { result in
                if case .success(true) = result {
                    promise.succeed(())
                } else {
                    loop.scheduleTask(in: interval) { attempt() }
                }
            }
        }
        loop.execute { attempt() }
        return promise.futureResult
    }

    /// Finds a client by the id SHOW CLIENTS printed and closes it with `admin forced disconnect`.
    func killClient(id: Int) -> EventLoopFuture<Bool> {
        visitLoops { registry, _ in
            guard let client = registry.clients.values.first(where: { $0.id == id }) else { return false }
            client.fatal("admin forced disconnect")
            return true
        }.map { $0.contains(true) }
    }

    /// A console session closed. SUSPEND with no console left to RESUME it would never end: resume, as PgBouncer does.
    func consoleSessionEnded() {
        let remaining = consoleSessions.withLockedValue { $0 -= 1; return $0 }
        guard remaining == 0, lifecycle.withLockedValue({ $0.suspended }) else { return }
        logger.warning("admin disconnected during SUSPEND, resuming")
        controller?.resumeAll()
    }

    /// Counts logged-in clients (not the console sessions) and server connections, for WAIT_FOR_* shutdowns.
    func connectionCounts() -> EventLoopFuture<(clients: Int, servers: Int)> {
        visitLoops { registry, _ in
            (registry.clients.values.filter { !$0.isConsole && $0.state != .closed }.count, registry.servers.count)
        }.map { counts in
            (counts.reduce(0) { $0 + $1.0 }, counts.reduce(0) { $0 + $1.1 })
        }
    }
}

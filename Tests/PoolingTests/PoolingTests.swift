import NIOCore
import Pooling
import PostgresWire
import Testing

final class FakeServer {}
final class FakeClient {}

@Suite struct TransactionTrackerTests {
    @Test func simpleQueryReleasesAtIdleReadyForQuery() {
        var tracker = TransactionTracker()
        tracker.clientSent(type: FrontendMessage.query)
        #expect(!tracker.isReleasable)
        #expect(rfq(&tracker, .idle))
    }

    @Test func transactionKeepsTheLink() {
        var tracker = TransactionTracker()
        tracker.clientSent(type: FrontendMessage.query)
        #expect(!rfq(&tracker, .inTransaction))
        tracker.clientSent(type: FrontendMessage.query)
        #expect(!rfq(&tracker, .failed))
        tracker.clientSent(type: FrontendMessage.query)
        #expect(rfq(&tracker, .idle))
    }

    @Test func pipelineWaitsForTheLastReadyForQuery() {
        var tracker = TransactionTracker()
        for _ in 0..<3 {
            for type in [FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.execute, FrontendMessage.sync] {
                tracker.clientSent(type: type)
            }
        }
        #expect(!rfq(&tracker, .idle))
        #expect(!rfq(&tracker, .idle))
        #expect(rfq(&tracker, .idle))
    }

    @Test func halfSentBatchKeepsTheLink() {
        var tracker = TransactionTracker()
        tracker.clientSent(type: FrontendMessage.query)
        tracker.clientSent(type: FrontendMessage.parse)
        tracker.clientSent(type: FrontendMessage.bind)
        #expect(!rfq(&tracker, .idle))
        tracker.clientSent(type: FrontendMessage.execute)
        tracker.clientSent(type: FrontendMessage.sync)
        #expect(rfq(&tracker, .idle))
    }

    @Test func extendedCopyInForgetsTheIgnoredSync() {
        // libpq: Parse/Bind/Execute/Sync, then CopyData…, CopyDone and a second Sync. The server ignores the first.
        var tracker = TransactionTracker()
        for type in [FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.execute, FrontendMessage.sync] {
            tracker.clientSent(type: type)
        }
        tracker.copyInStarted()
        tracker.clientSent(type: FrontendMessage.copyData)
        tracker.clientSent(type: FrontendMessage.copyDone)
        tracker.clientSent(type: FrontendMessage.sync)
        #expect(rfq(&tracker, .idle))
    }

    @Test func simpleCopyInKeepsItsQuery() {
        var tracker = TransactionTracker()
        tracker.clientSent(type: FrontendMessage.query)
        tracker.copyInStarted()
        tracker.clientSent(type: FrontendMessage.copyData)
        tracker.clientSent(type: FrontendMessage.copyDone)
        #expect(rfq(&tracker, .idle))
    }

    @Test func aServerInCopyIsNeverReleasable() {
        // The extended COPY's Sync is forgotten at CopyInResponse: the count alone says "free" while in copy-in.
        var tracker = TransactionTracker()
        for type in [FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.execute, FrontendMessage.sync] {
            tracker.clientSent(type: type)
        }
        tracker.copyInStarted()
        #expect(tracker.pendingReadyForQuery == 0)
        #expect(!tracker.isReleasable)
        tracker.commandEnded()
        #expect(tracker.isReleasable)
        // COPY TO STDOUT: not free from CopyOutResponse until its CommandComplete.
        tracker.clientSent(type: FrontendMessage.query)
        tracker.copyOutStarted()
        tracker.commandEnded()
        #expect(!tracker.isReleasable)
        #expect(rfq(&tracker, .idle))
    }
}

@Suite struct SettingsLedgerTests {
    typealias Change = StatementEffects.SettingChange
    let path: Change = .set(name: "search_path", value: "x")
    let reset: Change = .reset(name: "search_path")

    @Test func anAutocommitSetIsConfirmedAtItsReadyForQuery() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        #expect(ledger.readyForQueryReceived(.idle) == .init(confirmed: [path]))
        #expect(ledger.isEmpty)
    }

    @Test func aFailedSetIsNeverConfirmed() {
        var ledger = SettingsLedger()
        ledger.sent(.set(name: "work_mem", value: "'not_a_size'"), unitsAhead: 0)
        ledger.errorReceived()
        #expect(ledger.readyForQueryReceived(.idle) == .init(uncertain: [.set(name: "work_mem", value: "'not_a_size'")]))
    }

    @Test func aPipelinedSetWaitsForItsOwnUnit() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 2)
        ledger.errorReceived() // the first unit's error is not the SET's
        #expect(ledger.readyForQueryReceived(.idle).isEmpty)
        #expect(ledger.readyForQueryReceived(.idle).isEmpty)
        #expect(ledger.readyForQueryReceived(.idle) == .init(confirmed: [path]))
    }

    @Test func aSetInsideABlockWaitsForCommit() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        #expect(ledger.readyForQueryReceived(.inTransaction).isEmpty)
        #expect(ledger.inBlockCount == 1)
        #expect(ledger.readyForQueryReceived(.idle) == .init(confirmed: [path]))
    }

    @Test func aRolledBackResetLeavesTheSettingUncertain() {
        // SET search_path = x; BEGIN; RESET search_path; ROLLBACK — the server still has x.
        var ledger = SettingsLedger()
        ledger.sent(reset, unitsAhead: 0)
        #expect(ledger.readyForQueryReceived(.inTransaction).isEmpty)
        ledger.rollbackCompleted()
        #expect(ledger.readyForQueryReceived(.idle) == .init(uncertain: [reset]))
    }

    @Test func aRollbackToSavepointMakesTheBlockUncertain() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        #expect(ledger.readyForQueryReceived(.inTransaction).isEmpty)
        ledger.rollbackCompleted() // ROLLBACK TO SAVEPOINT s
        #expect(ledger.readyForQueryReceived(.inTransaction).isEmpty)
        #expect(ledger.readyForQueryReceived(.idle) == .init(uncertain: [path]))
    }

    @Test func aFailedBlockGivesUpItsSettings() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        #expect(ledger.readyForQueryReceived(.inTransaction).isEmpty)
        ledger.errorReceived()
        #expect(ledger.readyForQueryReceived(.failed) == .init(uncertain: [path]))
        #expect(ledger.isEmpty)
    }

    @Test func aSetInOneQueryWithItsOwnRollbackIsUncertain() {
        // BEGIN; SET …; ROLLBACK in one Query: ReadyForQuery says idle, the tag says ROLLBACK.
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        ledger.rollbackCompleted()
        #expect(ledger.readyForQueryReceived(.idle) == .init(uncertain: [path]))
    }

    @Test func anIgnoredCopySyncMovesTheChangeToTheNextUnit() {
        var ledger = SettingsLedger()
        ledger.sent(path, unitsAhead: 0)
        ledger.sent(reset, unitsAhead: 1)
        ledger.unitDropped(pendingAfter: 0)
        #expect(ledger.readyForQueryReceived(.idle) == .init(confirmed: [path, reset]))
    }

    @Test func parameterSetMarksUncertainNamesForReset() {
        var client = ParameterSet(), server = ParameterSet()
        client.setSession("search_path", rawValue: "x")
        server.apply(.set(name: "search_path", value: "x"))
        #expect(client.setStatement(from: server) == nil)
        server.markUncertain(.reset(name: "search_path"))
        #expect(server.session["search_path"] == ParameterSet.unknownValue)
        #expect(client.setStatement(from: server) == "SET search_path = x;")
        #expect(ParameterSet().setStatement(from: server) == "RESET search_path;")
    }
}

@Suite struct PoolStateTests {
    let second: UInt64 = 1_000_000_000

    @Test func dialsUpToPoolSizeThenQueuesInArrivalOrder() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2))
        let clients = (0..<4).map { _ in FakeClient() }
        guard case .connectAndWait(loop: 0) = pool.leaseRequested(by: clients[0], loop: 0, now: 0) else { Issue.record("want dial"); return }
        guard case .connectAndWait(loop: 1) = pool.leaseRequested(by: clients[1], loop: 1, now: 0) else { Issue.record("want dial"); return }
        guard case .wait = pool.leaseRequested(by: clients[2], loop: 0, now: 0) else { Issue.record("want wait"); return }
        guard case .wait = pool.leaseRequested(by: clients[3], loop: 0, now: 0) else { Issue.record("want wait"); return }
        let servers = [FakeServer(), FakeServer()]
        guard case .handOver(_, let first) = pool.connected(servers[0], loop: 0, createdAt: 0, now: 1) else { Issue.record("want hand-over"); return }
        #expect(first === clients[0])
        guard case .handOver(_, let secondClient) = pool.connected(servers[1], loop: 1, createdAt: 0, now: 1) else { Issue.record("want hand-over"); return }
        #expect(secondClient === clients[1])
        guard case .handOver(_, let third) = pool.released(servers[0], loop: 0, createdAt: 1, reusable: true, now: 2) else { Issue.record("want hand-over"); return }
        #expect(third === clients[2])
        #expect(pool.waitingCount == 1)
    }

    /// A pool whose one server, `server`, was dialed on `loop`, used and released: idle there.
    func poolWithIdleServer(_ server: FakeServer, on loop: Int, poolSize: Int, crossThreadReuseDelay: Double = 0) -> PoolState<FakeServer, FakeClient> {
        var settings = PoolSettings(poolSize: poolSize)
        settings.crossThreadReuseDelay = crossThreadReuseDelay
        var pool = PoolState<FakeServer, FakeClient>(settings: settings)
        _ = pool.leaseRequested(by: FakeClient(), loop: loop, now: 0)
        _ = pool.connected(server, loop: loop, createdAt: 0, now: 0)
        _ = pool.released(server, loop: loop, createdAt: 0, reusable: true, now: 1)
        return pool
    }

    /// server_check_query at reuse (PgBouncer's rule): a server idle for server_check_delay is checked before a
    /// client gets it; the client queues meanwhile and the checked server comes back through the release.
    @Test func aServerIdleForTheCheckDelayIsCheckedBeforeReuse() {
        let a = FakeServer()
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2, serverCheckDelay: 30, serverCheckQuery: "select 1"))
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(a, loop: 0, createdAt: 0, now: 0)
        _ = pool.released(a, loop: 0, createdAt: 0, reusable: true, now: 1 * second)
        // Idle 10 s: used as it is.
        guard case .use(let used) = pool.leaseRequested(by: FakeClient(), loop: 0, now: 11 * second), used === a else { Issue.record("want use"); return }
        _ = pool.released(a, loop: 0, createdAt: 0, reusable: true, now: 12 * second)
        // The janitor leaves idle servers alone, however long they idle.
        #expect(pool.maintain(now: 100 * second).close.isEmpty && pool.idle.count == 1)
        // Idle 88 s: checked first, the client queued for it.
        let client = FakeClient()
        guard case .checkAndWait(let checked) = pool.leaseRequested(by: client, loop: 0, now: 100 * second), checked === a else {
            Issue.record("want check"); return
        }
        #expect(pool.waitingCount == 1 && pool.idle.isEmpty && pool.activeCount == 1)
        guard case .handOver(let server, let waiter) = pool.released(a, loop: 0, createdAt: 0, reusable: true, now: 100 * second),
              server === a, waiter === client else { Issue.record("want hand-over after the check"); return }
        // Without a check query nothing is checked.
        var unchecked = poolWithIdleServer(a, on: 0, poolSize: 1)
        guard case .use = unchecked.leaseRequested(by: FakeClient(), loop: 0, now: 1000 * second) else { Issue.record("want use"); return }
    }

    /// issue 16: after RECONNECT, a login that fails (a changed password) fails the waiters even while an old
    /// server is still lent out: that server closes at its release and will serve nobody (it used to make them
    /// wait for it, up to query_wait_timeout).
    @Test func aFailedLoginAfterReconnectIsNotHeldBackByCondemnedServers() {
        let old = FakeServer()
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2))
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(old, loop: 0, createdAt: 0, now: 0) // lent to its client, mid-transaction
        _ = pool.reconnect(now: 10)
        let waiter = FakeClient()
        guard case .connectAndWait = pool.leaseRequested(by: waiter, loop: 0, now: 11) else { Issue.record("want dial"); return }
        let failed = pool.connectFailed(message: "password authentication failed", code: "28P01", now: 12)
        #expect(failed.count == 1 && failed.first === waiter)
        // Without the RECONNECT, a usable server lent out still keeps the waiters (it will come back).
        var kept = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2))
        _ = kept.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = kept.connected(FakeServer(), loop: 0, createdAt: 0, now: 0)
        _ = kept.leaseRequested(by: FakeClient(), loop: 0, now: 11)
        #expect(kept.connectFailed(message: "x", code: "28P01", now: 12).isEmpty)
        // The condemned server's release closes it, and the count follows.
        guard case .close = pool.released(old, loop: 0, createdAt: 0, reusable: true, now: 13) else { Issue.record("want close"); return }
        #expect(pool.condemnedActiveCount == 0 && pool.activeCount == 0)
    }

    /// issue 16: two first clients on two loops cost two logins, not three. The first one's welcome server goes
    /// to the second (still waiting for its own dial); the first one's query then waits for that dial, which no
    /// waiter needs any more, instead of starting a third login.
    @Test func aDialNoWaiterNeedsServesTheNextClient() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 20))
        let first = FakeClient(), second = FakeClient()
        guard case .connectAndWait(loop: 0) = pool.leaseRequested(by: first, loop: 0, now: 0) else { Issue.record("want dial"); return }
        guard case .connectAndWait(loop: 1) = pool.leaseRequested(by: second, loop: 1, now: 0) else { Issue.record("want dial"); return }
        let a = FakeServer(), b = FakeServer()
        guard case .handOver(_, let welcomed) = pool.connected(a, loop: 0, createdAt: 0, now: 1), welcomed === first else { Issue.record("want hand-over"); return }
        guard case .handOver(_, let next) = pool.released(a, loop: 0, createdAt: 0, reusable: true, now: 2), next === second else {
            Issue.record("want the released server for the second client"); return
        }
        guard case .wait = pool.leaseRequested(by: first, loop: 0, now: 3) else { Issue.record("want to wait for the dial under way"); return }
        #expect(pool.totalServers == 2)
        guard case .handOver(_, let served) = pool.connected(b, loop: 1, createdAt: 0, now: 4), served === first else { Issue.record("want hand-over"); return }
        // An idle server on the client's loop is used while the waiters ahead all have dials coming (with each
        // loop keeping to its own servers, so that the client on loop 1 dials).
        var ownLoops = PoolSettings(poolSize: 20)
        ownLoops.crossThreadReuseDelay = 60
        var busy = PoolState<FakeServer, FakeClient>(settings: ownLoops)
        let c = FakeServer()
        _ = busy.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = busy.connected(c, loop: 0, createdAt: 0, now: 0)
        _ = busy.released(c, loop: 0, createdAt: 0, reusable: true, now: 1)
        _ = busy.leaseRequested(by: FakeClient(), loop: 1, now: 2) // dials on its own loop, waits
        guard case .use(let used) = busy.leaseRequested(by: FakeClient(), loop: 0, now: 3), used === c else { Issue.record("want the idle server"); return }
    }

    /// issue 16: with room in the pool, an idle server on another loop is used before a new login (PgBouncer's
    /// count of servers); cross_thread_reuse_delay keeps a loop to its own servers unless the other loop's has
    /// idled that long.
    @Test func anIdleServerOnAnotherLoopIsUsedBeforeDialing() {
        let a = FakeServer()
        var pool = poolWithIdleServer(a, on: 0, poolSize: 20)
        guard case .use(let used) = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2), used === a else { Issue.record("want use"); return }
        #expect(pool.totalServers == 1)
        // Nothing idle anywhere: a dial on the client's loop.
        guard case .connectAndWait(loop: 1) = pool.leaseRequested(by: FakeClient(), loop: 1, now: 3) else { Issue.record("want dial"); return }

        var delayed = poolWithIdleServer(a, on: 0, poolSize: 20, crossThreadReuseDelay: 5)
        guard case .connectAndWait(loop: 1) = delayed.leaseRequested(by: FakeClient(), loop: 1, now: 3 * second) else {
            Issue.record("idle 3 s, less than the delay: want a dial on loop 1"); return
        }
        guard case .use(let late) = delayed.leaseRequested(by: FakeClient(), loop: 1, now: 7 * second), late === a else {
            Issue.record("idle 6 s: want the server on loop 0"); return
        }
        // The own loop's server still comes first, however long the other has idled.
        var both = poolWithIdleServer(a, on: 0, poolSize: 20)
        let b = FakeServer()
        _ = both.leaseRequested(by: FakeClient(), loop: 0, now: 2)
        _ = both.leaseRequested(by: FakeClient(), loop: 1, now: 2)
        guard case .handOver = both.connected(b, loop: 1, createdAt: 2, now: 2) else { Issue.record("want hand-over"); return }
        _ = both.released(a, loop: 0, createdAt: 0, reusable: true, now: 3)
        _ = both.released(b, loop: 1, createdAt: 2, reusable: true, now: 4)
        guard case .use(let own) = both.leaseRequested(by: FakeClient(), loop: 0, now: 100 * second), own === a else { Issue.record("want loop 0's"); return }
    }

    @Test func aRefusedDialLetsAnIdleServerOnAnotherLoopServeTheWaiter() {
        // The lease prefers dialing on its own loop; when a shared limit refuses that dial, the idle server on
        // the other loop must serve the client now (it used to wait for server_check_delay to free it).
        let a = FakeServer()
        var pool = poolWithIdleServer(a, on: 1, poolSize: 4, crossThreadReuseDelay: 60)
        let client = FakeClient()
        guard case .connectAndWait(loop: 0) = pool.leaseRequested(by: client, loop: 0, now: 2) else { Issue.record("want dial"); return }
        let served = pool.connectDeferred()
        #expect(served.count == 1 && served.first?.server === a && served.first?.waiter === client)
        #expect(pool.waitingCount == 0)
    }

    @Test func aFullPoolServesTheClientWithoutADialFromAnIdleServerOnAnotherLoop() {
        // One server idle on loop 0; two clients on loop 1 each dial rather than take it, which fills the pool.
        // The third client has no dial coming: it must get the idle server instead of waiting for a release.
        let a = FakeServer()
        var pool = poolWithIdleServer(a, on: 0, poolSize: 3, crossThreadReuseDelay: 60)
        guard case .connectAndWait(loop: 1) = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2) else { Issue.record("want dial"); return }
        guard case .connectAndWait(loop: 1) = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2) else { Issue.record("want dial"); return }
        guard case .use(let chosen) = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2) else { Issue.record("want use"); return }
        #expect(chosen === a)
        #expect(pool.waitingCount == 2 && pool.totalServers == 3)
        // With the pool full and nothing idle, the next one queues.
        guard case .wait = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2) else { Issue.record("want wait"); return }
    }

    @Test func aClockReadBeforeAWaiterQueuedDoesNotTimeItOut() {
        // The janitor reads the clock, then takes each pool's lock; a client may queue in between.
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1, queryWaitTimeout: 60))
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 10 * second)
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 10 * second)
        #expect(pool.maintain(now: 10 * second - 1).timedOut.isEmpty)
        #expect(pool.maintain(now: 71 * second).timedOut.count == 2)
    }

    @Test func prefersAnIdleServerOnTheClientsLoop() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2))
        let a = FakeServer(), b = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.leaseRequested(by: FakeClient(), loop: 1, now: 0)
        _ = pool.connected(a, loop: 0, createdAt: 0, now: 0)
        _ = pool.connected(b, loop: 1, createdAt: 0, now: 0)
        _ = pool.released(a, loop: 0, createdAt: 0, reusable: true, now: 1)
        _ = pool.released(b, loop: 1, createdAt: 0, reusable: true, now: 1)
        guard case .use(let chosen) = pool.leaseRequested(by: FakeClient(), loop: 0, now: 2) else { Issue.record("want use"); return }
        #expect(chosen === a)
        guard case .use(let other) = pool.leaseRequested(by: FakeClient(), loop: 0, now: 2) else { Issue.record("want use"); return }
        #expect(other === b) // full pool: a server on another loop beats waiting
    }

    @Test func anUnavailableServerKeepsWaitersQueuedAndIsDialedAgainAfterTheRetryDelay() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2, queryWaitTimeout: 30, serverLoginRetry: 2))
        guard case .connectAndWait = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0) else { Issue.record("want dial"); return }
        #expect(pool.connectFailedTransiently(now: second).isEmpty)
        // Nobody is failed; a newcomer queues without a dial of its own while the retry delay runs.
        guard case .wait = pool.leaseRequested(by: FakeClient(), loop: 0, now: second + 1) else { Issue.record("want wait"); return }
        #expect(pool.maintain(now: 2 * second).connect.isEmpty)
        let retry = pool.maintain(now: 3 * second + 1)
        #expect(retry.connect == [0])
        #expect(retry.timedOut.isEmpty)
        // Once a server logs in, dials are immediate again.
        guard case .handOver = pool.connected(FakeServer(), loop: 0, createdAt: 4 * second, now: 4 * second) else { Issue.record("want hand-over"); return }
        #expect(pool.unavailableSince == nil)
    }

    @Test func waitersTimeOutAndLoginFailuresAreShared() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1, queryWaitTimeout: 5, serverLoginRetry: 15))
        let a = FakeClient(), b = FakeClient()
        _ = pool.leaseRequested(by: a, loop: 0, now: 0)
        _ = pool.leaseRequested(by: b, loop: 0, now: 0)
        let failed = pool.connectFailed(message: "connect failed", code: "08006", now: second)
        #expect(failed.count == 2)
        guard case .fail(let message, _) = pool.leaseRequested(by: FakeClient(), loop: 0, now: 2 * second) else { Issue.record("want fail"); return }
        #expect(message.contains("server login has been failing"))
        guard case .connectAndWait = pool.leaseRequested(by: FakeClient(), loop: 0, now: 20 * second) else { Issue.record("want retry"); return }
        let late = FakeClient()
        _ = pool.leaseRequested(by: late, loop: 0, now: 20 * second)
        let work = pool.maintain(now: 26 * second)
        #expect(work.timedOut.count == 2)
    }

    @Test func dirtyOrExpiredServersAreClosedAndReplacedForWaiters() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1, serverLifetime: 10))
        let server = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        _ = pool.leaseRequested(by: FakeClient(), loop: 1, now: 0)
        guard case .close(let closed, let connectFor) = pool.released(server, loop: 0, createdAt: 0, reusable: false, now: second) else {
            Issue.record("want close"); return
        }
        #expect(closed === server && connectFor == 1)
    }

    @Test func serverLifetimeZeroMeansUseOnce() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1, serverLifetime: 0))
        let server = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        guard case .close(let closed, _) = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 1) else {
            Issue.record("a server was kept with server_lifetime = 0"); return
        }
        #expect(closed === server)
    }

    @Test func idleTimeoutKeepsMinPoolSize() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 3, minPoolSize: 1, serverIdleTimeout: 10))
        let servers = (0..<3).map { _ in FakeServer() }
        for server in servers {
            _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
            _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        }
        for server in servers { _ = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 0) }
        let work = pool.maintain(now: 11 * second)
        #expect(work.close.count == 2)
        #expect(pool.idle.count == 1)
    }
}

@Suite struct ParameterAndOptionsTests {
    @Test func setStatementCoversOnlyDifferences() {
        var client = ParameterSet()
        client.set("TimeZone", "Europe/Paris")
        client.set("application_name", "it's")
        client.set("client_encoding", "UTF8")
        var server = ParameterSet()
        server.set("TimeZone", "UTC")
        server.set("client_encoding", "utf8")
        #expect(client.setStatement(from: server) == "SET application_name='it''s';SET TimeZone='Europe/Paris';")
        #expect(client.setStatement(from: client) == nil)
    }

    /// A server's set takes a client's storage only when the two are equal to the letter; then the comparison on
    /// the next link is an identity check, and either side changing stays its own (value semantics).
    @Test func aServerSharesAClientsStorageOnlyWhenEqualToTheLetter() {
        var client = ParameterSet()
        client.set("client_encoding", "UTF8")
        client.set("TimeZone", "UTC")
        var server = ParameterSet()
        server.set("TimeZone", "UTC")
        server.set("client_encoding", "utf8") // equal but for case: no SET needed, and no sharing either
        #expect(client.setStatement(from: server) == nil)
        server.shareStorage(ifEqualTo: client)
        #expect(!server.sharesStorage(with: client))
        #expect(server["client_encoding"] == "utf8", "the server's confirmed spelling stays")

        server.set("client_encoding", "UTF8")
        #expect(!server.sharesStorage(with: client))
        server.shareStorage(ifEqualTo: client)
        #expect(server.sharesStorage(with: client) && server.equalsToTheLetter(client))
        #expect(client.setStatement(from: server) == nil)
        // The client changes a setting: its storage is its own again and the difference is found.
        client.set("TimeZone", "Europe/Paris")
        #expect(!server.sharesStorage(with: client))
        #expect(server["TimeZone"] == "UTC")
        #expect(client.setStatement(from: server) == "SET TimeZone='Europe/Paris';")
        // A session setting on one side only also differs.
        var withSession = server
        withSession.setSession("search_path", rawValue: "x")
        #expect(!withSession.sharesStorage(with: server) && !withSession.equalsToTheLetter(server))
        #expect(server.setStatement(from: withSession) == "RESET search_path;")
    }

    /// `difference` answers in one pass what a link asks: besides the statement (`setStatement` is its first half),
    /// whether the two sets are equal to the letter — as `equalsToTheLetter`, entry by entry, says.
    @Test func aLinksOnePassAgreesWithBothQuestions() {
        func set(_ pairs: [(String, String)], session: [(String, String)] = []) -> ParameterSet {
            var result = ParameterSet()
            for (name, value) in pairs { result.set(name, value) }
            for (name, value) in session { result.setSession(name, rawValue: value) }
            return result
        }
        let base = [("client_encoding", "UTF8"), ("TimeZone", "UTC")]
        let cases: [(ParameterSet, ParameterSet)] = [
            (set(base), set(base)),
            (set(base), set([("client_encoding", "utf8"), ("TimeZone", "UTC")])),
            (set(base), set([("Client_Encoding", "UTF8"), ("TimeZone", "UTC")])),
            (set(base), set([("client_encoding", "UTF8")])),
            (set([("client_encoding", "UTF8")]), set(base)),
            (set(base), set([("client_encoding", "UTF8"), ("TimeZone", "Europe/Paris")])),
            (set(base, session: [("search_path", "x")]), set(base)),
            (set(base), set(base, session: [("search_path", "x")])),
        ]
        for (client, server) in cases {
            let difference = client.difference(from: server)
            #expect(difference.toTheLetter == client.equalsToTheLetter(server), "\(client.values.keys.sorted()) against \(server.values.keys.sorted())")
        }
        #expect(set(base).difference(from: set(base)).toTheLetter)
        #expect(!set(base).difference(from: set([("client_encoding", "utf8"), ("TimeZone", "UTC")])).toTheLetter)
    }

    @Test func parsesMoodleOptions() throws {
        let settings = try StartupOptions.parse("--client_encoding=utf8 --standard_conforming_strings=on -c search_path=a\\ b -cTimeZone=UTC")
        #expect(settings.map(\.0) == ["client_encoding", "standard_conforming_strings", "search_path", "TimeZone"])
        #expect(settings.map(\.1) == ["utf8", "on", "a b", "UTC"])
        #expect(throws: StartupOptions.ParseError.self) { try StartupOptions.parse("-d 5") }
        #expect(throws: StartupOptions.ParseError.self) { try StartupOptions.parse("-c") }
    }
}

/// `#expect` cannot call a mutating method on its argument directly.
func rfq(_ tracker: inout TransactionTracker, _ status: TransactionStatus) -> Bool {
    tracker.readyForQueryReceived(status)
}

@Suite struct WaiterFairnessTests {
    let millisecond: UInt64 = 1_000_000

    /// A released server goes to a waiter on its own loop unless one elsewhere has waited over 5 ms longer.
    @Test func localWaiterFirstWithinTheFairnessBound() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1))
        let server = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        let remote = FakeClient(), local = FakeClient(), remoteLater = FakeClient()
        _ = pool.leaseRequested(by: remote, loop: 1, now: 1 * millisecond)
        _ = pool.leaseRequested(by: local, loop: 0, now: 3 * millisecond)
        _ = pool.leaseRequested(by: remoteLater, loop: 1, now: 20 * millisecond)
        guard case .handOver(_, let first) = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 21 * millisecond) else {
            Issue.record("want hand-over"); return
        }
        #expect(first === local) // 2 ms younger than the remote head: the local one wins
        guard case .handOver(_, let second) = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 22 * millisecond) else {
            Issue.record("want hand-over"); return
        }
        #expect(second === remote) // nothing local left: the oldest anywhere
        #expect(pool.waitingCount == 1)
        let left = pool.waiterLeft(remoteLater)
        #expect(left)
        #expect(pool.waitingCount == 0)
    }

    @Test func oldWaiterElsewhereBeatsTheLocalOne() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1))
        let server = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        let remote = FakeClient(), local = FakeClient()
        _ = pool.leaseRequested(by: remote, loop: 1, now: 1 * millisecond)
        _ = pool.leaseRequested(by: local, loop: 0, now: 10 * millisecond)
        guard case .handOver(_, let first) = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 11 * millisecond) else {
            Issue.record("want hand-over"); return
        }
        #expect(first === remote)
    }
}

@Suite struct PoolConsoleStateTests {
    @Test func pauseQueuesClientsClosesReleasedServersAndResumeDials() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 2))
        let lent = FakeServer(), idle = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(lent, loop: 0, createdAt: 0, now: 0)
        _ = pool.connected(idle, loop: 0, createdAt: 0, now: 0)
        _ = pool.released(idle, loop: 0, createdAt: 0, reusable: true, now: 1)
        let closed = pool.pause()
        #expect(closed.count == 1 && closed[0] === idle)
        #expect(!pool.pauseComplete) // `lent` is still in a transaction
        guard case .wait = pool.leaseRequested(by: FakeClient(), loop: 1, now: 2) else { Issue.record("want wait"); return }
        guard case .close(let server, nil) = pool.released(lent, loop: 0, createdAt: 0, reusable: true, now: 3) else {
            Issue.record("want close without a dial"); return
        }
        #expect(server === lent && pool.pauseComplete)
        #expect(pool.maintain(now: 4).connect.isEmpty) // nothing is dialed while paused
        #expect(pool.resume() == [1]) // one dial for the one queued client, on its loop
    }

    @Test func reconnectRetiresOlderServersAtRelease() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1))
        let old = FakeServer()
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        _ = pool.connected(old, loop: 0, createdAt: 5, now: 5)
        #expect(pool.reconnect(now: 10).isEmpty)
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 11)
        guard case .close(_, let connectFor) = pool.released(old, loop: 0, createdAt: 5, reusable: true, now: 12) else {
            Issue.record("want close"); return
        }
        #expect(connectFor == 0) // the waiter gets a fresh server
        guard case .handOver = pool.connected(FakeServer(), loop: 0, createdAt: 12, now: 13) else { Issue.record("want hand-over"); return }
    }

    @Test func shutdownRefusesWhoWouldQueue() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 1))
        _ = pool.leaseRequested(by: FakeClient(), loop: 0, now: 0)
        let (_, refused) = pool.shutDown(message: "server shutting down")
        #expect(refused.count == 1)
        guard case .fail(let message, _) = pool.leaseRequested(by: FakeClient(), loop: 0, now: 1) else { Issue.record("want fail"); return }
        #expect(message == "server shutting down")
    }
}

@Suite struct SessionStateScannerTests {
    func scan(_ sql: String) -> StatementEffects { SessionStateScanner.scan(sql) }

    @Test func moodlePatterns() {
        #expect(scan("DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM mdl_user WHERE id > $1").creates == .heldCursor)
        #expect(scan("declare c cursor for select 1").creates.isEmpty) // without HOLD it ends with the transaction
        #expect(scan("FETCH 100000 FROM crs1").isEmpty)
        #expect(scan("CLOSE crs1").mayRelease)
        #expect(scan("SELECT pg_try_advisory_lock(1, 2)").creates == .advisoryLock)
        #expect(scan("select PG_ADVISORY_LOCK_SHARED(7) as locked").creates == .advisoryLock)
        #expect(scan("SELECT pg_advisory_xact_lock(1)").isEmpty) // transaction-scoped
        #expect(scan("SELECT pg_advisory_unlock(1, 2)").mayRelease)
        #expect(scan("select pg_advisory_unlock_all()").mayRelease)
        #expect(scan("CREATE TEMPORARY TABLE mdl_temp_x (id int)").creates == .tempTable)
        #expect(scan("create global temp table t (i int)").creates == .tempTable)
        #expect(scan("CREATE TABLE t (i int)").isEmpty)
        #expect(scan("DROP TABLE mdl_temp_x").mayRelease)
        #expect(scan("PREPARE q AS SELECT 1").creates == .preparedStatement)
        #expect(scan("PREPARE TRANSACTION 'x'").isEmpty)
        #expect(scan("LISTEN jobs").creates == .listen)
        #expect(scan("SELECT 'pg_advisory_lock(1)' AS text").isEmpty == false) // errs towards noticing; the probe decides
    }

    @Test func sessionSettings() {
        #expect(scan("SET statement_timeout = 5000").settings == [.set(name: "statement_timeout", value: "5000")])
        #expect(scan("set SESSION search_path TO public, extensions").settings == [.set(name: "search_path", value: "public, extensions")])
        #expect(scan("SET LOCAL statement_timeout = 1").settings.isEmpty)
        #expect(scan("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").settings.isEmpty)
        #expect(scan("RESET statement_timeout; RESET ALL").settings == [.reset(name: "statement_timeout"), .resetAll])
        #expect(scan("DISCARD ALL").settings == [.resetAll])
        #expect(scan("SET myapp.user_id = '42'").settings == [.set(name: "myapp.user_id", value: "'42'")])
        #expect(scan("SELECT set_config('search_path', 'x', false)").opaqueSetting)
        #expect(scan("select SET_CONFIG($1, $2, $3)").opaqueSetting)
        #expect(scan("SELECT set_config('app.user', format('%s', 'a,b'), false), 1").opaqueSetting)
        #expect(!scan("SELECT set_config('statement_timeout', '5s', true)").opaqueSetting)
        #expect(!scan("SELECT set_config('a', 'b',  TRUE )").opaqueSetting)
        #expect(!scan("SELECT my_set_config_log(1)").opaqueSetting)
    }

    @Test func statementsQuotesAndComments() {
        let effects = scan("BEGIN; /* ; */ SELECT ';DECLARE x CURSOR WITH HOLD FOR'; -- LISTEN x;\nDECLARE c2 CURSOR WITH HOLD FOR SELECT $$;$$; COMMIT")
        #expect(effects.creates == .heldCursor)
        #expect(scan("select $tag$ CREATE TEMP TABLE $tag$").creates.isEmpty)
        #expect(scan("").isEmpty && scan(";;").isEmpty)
    }

    @Test func varcacheResetsWhatTheLastClientSet() {
        var first = ParameterSet()
        first.setSession("statement_timeout", rawValue: "5000")
        var server = ParameterSet()
        #expect(first.setStatement(from: server) == "SET statement_timeout = 5000;")
        server.adoptSession(of: first)
        let second = ParameterSet()
        #expect(second.setStatement(from: server) == "RESET statement_timeout;")
        #expect(first.setStatement(from: server) == nil)
    }

    @Test func pinCapIsCounted() {
        var pool = PoolState<FakeServer, FakeClient>(settings: PoolSettings(poolSize: 4))
        let firstThree = (0..<3).map { _ in pool.tryPin(limit: 3) }
        #expect(firstThree == [true, true, true])
        let fourth = pool.tryPin(limit: 3)
        #expect(!fourth)
        pool.unpinned()
        let again = pool.tryPin(limit: 3)
        #expect(again)
        let upToPoolSize = [pool.tryPin(limit: 0), pool.tryPin(limit: 0)] // 0: the pool size is the cap
        #expect(upToPoolSize == [true, false])
    }
}

@Suite struct PreparedStatementRewriteTests {
    func parseBody(_ name: String, _ sql: String) -> ByteBuffer {
        var body = ByteBuffer()
        body.writeCString(name); body.writeCString(sql); body.writeInteger(Int16(0))
        return body
    }

    func bindBody(_ statement: String) -> ByteBuffer {
        var body = ByteBuffer()
        body.writeCString(""); body.writeCString(statement)
        body.writeInteger(Int16(0)); body.writeInteger(Int16(0)); body.writeInteger(Int16(0))
        return body
    }

    func messages(_ rewrite: ClientStatements.Rewrite) -> [(UInt8, String)] {
        guard case .replace(let buffers, _) = rewrite else { return [] }
        return buffers.map { buffer in
            var buffer = buffer
            let type = buffer.readInteger(as: UInt8.self)!
            _ = buffer.readInteger(as: Int32.self)
            if type == FrontendMessage.bind { _ = buffer.readNullTerminatedString() }
            if type == FrontendMessage.close || type == FrontendMessage.describe { _ = buffer.readInteger(as: UInt8.self) }
            return (type, buffer.readNullTerminatedString() ?? "")
        }
    }

    @Test func namesAreMappedAndPreparedWhereMissing() {
        let names = StatementNames()
        var client = ClientStatements()
        var first = ServerStatements(), second = ServerStatements()
        let parse = client.rewrite(type: FrontendMessage.parse, body: parseBody("q", "SELECT $1"), batch: 0, server: &first, names: names, capacity: 10)
        #expect(messages(parse).map(\.1) == ["shoal_1"])
        // The client moves to a server that lacks it: Shoal prepares it there first, and that answer is dropped.
        let bind = client.rewrite(type: FrontendMessage.bind, body: bindBody("q"), batch: 3, server: &second, names: names, capacity: 10)
        #expect(messages(bind).map(\.0) == [FrontendMessage.parse, FrontendMessage.bind])
        #expect(messages(bind).map(\.1) == ["shoal_1", "shoal_1"])
        guard case .replace(_, let expecting) = bind else { Issue.record("want replace"); return }
        #expect(expecting == [ExpectedResponse(type: UInt8(ascii: "1"), drop: true, batch: 3, serverName: "shoal_1", clientName: nil)])
        // Another client with the same text shares the server name; where it exists, its Parse goes unnamed.
        var other = ClientStatements()
        let again = other.rewrite(type: FrontendMessage.parse, body: parseBody("mine", "SELECT $1"), batch: 0, server: &second, names: names, capacity: 10)
        #expect(messages(again).map(\.1) == [""])
        #expect(client.rewrite(type: FrontendMessage.bind, body: bindBody(""), batch: 0, server: &first, names: names, capacity: 10) == .forward)
    }

    @Test func lruEvictsWithAnInjectedClose() {
        let names = StatementNames()
        var client = ClientStatements()
        var server = ServerStatements()
        for index in 0..<3 {
            _ = client.rewrite(type: FrontendMessage.parse, body: parseBody("s\(index)", "SELECT \(index)"), batch: 0, server: &server, names: names, capacity: 2)
        }
        #expect(server.count == 2 && !server.contains("shoal_1"))
    }

    /// issue 15: a client's own table is bounded by count and by bytes, least recently used out; a forgotten
    /// name is forwarded as sent (PostgreSQL then says it does not exist), never mapped to another statement.
    @Test func aClientsStatementsAreBoundedLeastRecentlyUsedOut() {
        let names = StatementNames()
        var client = ClientStatements()
        var server = ServerStatements()
        let limits = ClientStatements.Limits(count: 3, bytes: 1 << 20)
        func parse(_ name: String, _ sql: String) {
            _ = client.rewrite(type: FrontendMessage.parse, body: parseBody(name, sql), batch: 0, server: &server, names: names,
                               capacity: 100, limits: limits)
        }
        for index in 0..<3 { parse("s\(index)", "SELECT \(index)") }
        // s0 used again: s1 is now the least recently used.
        #expect(messages(client.rewrite(type: FrontendMessage.bind, body: bindBody("s0"), batch: 0, server: &server, names: names,
                                        capacity: 100, limits: limits)).last?.1 == "shoal_1")
        parse("s3", "SELECT 3")
        #expect(Set(client.statements.keys) == ["s0", "s2", "s3"] && client.evicted == 1)
        #expect(client.rewrite(type: FrontendMessage.bind, body: bindBody("s1"), batch: 0, server: &server, names: names,
                               capacity: 100, limits: limits) == .forward)
        // The byte ceiling alone: one long definition pushes the older ones out, and never itself.
        let long = String(repeating: "x", count: 1 << 20)
        parse("big", "SELECT '\(long)'")
        #expect(Array(client.statements.keys) == ["big"] && client.definitionBytes > 1 << 20)
        // Close and DEALLOCATE ALL give the bytes back.
        _ = client.rewrite(type: FrontendMessage.close, body: { var b = ByteBuffer(); b.writeInteger(UInt8(ascii: "S")); b.writeCString("big"); return b }(),
                           batch: 0, server: &server, names: names, capacity: 100, limits: limits)
        #expect(client.statements.isEmpty && client.definitionBytes == 0)
    }

    @Test func expectationsDropOursAndAnErrorCancelsTheBatch() {
        var expectations = ResponseExpectations()
        expectations.append([ExpectedResponse(type: UInt8(ascii: "1"), drop: true, batch: 0, serverName: "shoal_1", clientName: nil),
                             ExpectedResponse(type: UInt8(ascii: "1"), drop: false, batch: 0, serverName: "shoal_2", clientName: "b")])
        #expect(expectations.completed(type: UInt8(ascii: "1")) == .drop)
        let cancelled = expectations.errorReceived()
        #expect(cancelled.map(\.clientName) == ["b"])
        expectations.readyForQueryReceived()
        #expect(expectations.isEmpty && expectations.answered == 1)
    }
}

extension ClientStatements.Rewrite: Equatable {
    public static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.forward, .forward): return true
        default: return false
        }
    }
}

@Suite struct LoginLimitsTests {
    @Test func pendingLoginsPerAddressAreCappedAndReleased() {
        var limits = LoginLimits(maxPendingPerAddress: 2)
        #expect(limits.connectionAccepted(from: "10.0.0.1", nowSeconds: 0) == nil)
        #expect(limits.connectionAccepted(from: "10.0.0.1", nowSeconds: 0) == nil)
        #expect(limits.connectionAccepted(from: "10.0.0.1", nowSeconds: 0) == .tooManyPending(limit: 2))
        #expect(limits.connectionAccepted(from: "10.0.0.2", nowSeconds: 0) == nil, "another address is not affected")
        limits.loginEnded(from: "10.0.0.1")
        #expect(limits.connectionAccepted(from: "10.0.0.1", nowSeconds: 0) == nil)
        #expect(limits.pendingCount(from: "10.0.0.1") == 2)
    }

    @Test func failedLoginsPerMinuteTurnAnAddressAwayUntilTheMinuteTurns() {
        var limits = LoginLimits(maxFailuresPerMinute: 3)
        for _ in 0..<3 {
            #expect(limits.connectionAccepted(from: "a", nowSeconds: 120) == nil)
            limits.loginFailed(from: "a", nowSeconds: 121)
            limits.loginEnded(from: "a")
        }
        #expect(limits.connectionAccepted(from: "a", nowSeconds: 150) == .tooManyFailures(limit: 3))
        #expect(limits.connectionAccepted(from: "b", nowSeconds: 150) == nil)
        #expect(limits.connectionAccepted(from: "a", nowSeconds: 180) == nil, "a new minute")
        var unlimited = LoginLimits()
        for _ in 0..<1000 { #expect(unlimited.connectionAccepted(from: "a", nowSeconds: 0) == nil, "off by default") }
    }
}

@Suite struct PeerCancelKeyTests {
    @Test func peerIdAndTTLSitWherePgBouncerPutsThem() {
        let key = PeerCancelKey(processID: Int32(bitPattern: 0xFFFF_FFFF), secretKey: Int32(bitPattern: 0xFFFF_FFFF)).stamped(peerID: 0x1234)
        // Bytes 0-3: 0x7F, 0x34, 0x12, 0xFF (top bit clear, peer id little-endian); byte 7's low bits: 3.
        #expect(UInt32(bitPattern: key.processID) == 0x7F34_12FF)
        #expect(key.processID > 0)
        #expect(key.peerID == 0x1234 && key.ttl == 3)
        let once = key.forwarded()!
        #expect(once.ttl == 2 && once.peerID == 0x1234 && once.identity == key.identity)
        #expect(once.forwarded()!.forwarded()!.forwarded() == nil, "dropped when the TTL is spent")
        #expect(key.broadcast().ttl == 0 && key.broadcast().identity == key.identity)
        #expect(PeerCancelKey(processID: 5, secretKey: 9).peerID == 0)
    }
}

@Suite struct WelcomeTests {
    let reported = [("application_name", ""), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"), ("server_version", "15.18"),
                    ("TimeZone", "UTC"), ("standard_conforming_strings", "on")]
    let tracked: Set<String> = ["client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"]

    @Test func aClientThatChoseNothingGetsTheServersTrackedValues() {
        let welcome = Welcome(reported: reported, tracked: tracked)
        let parameters = welcome.welcomedParameters(client: ParameterSet(), tracked: tracked)
        #expect(parameters["TimeZone"] == "UTC" && parameters["client_encoding"] == "UTF8" && parameters["application_name"] == "")
        #expect(parameters["server_version"] == nil, "server-owned, not tracked")
    }

    @Test func theClientsOwnChoicesStayAndSpellingsFollowTheServer() {
        var client = ParameterSet()
        client.set("application_name", "moodle")
        client.set("client_encoding", "utf8")
        client.set("TimeZone", "Europe/Paris")
        let welcome = Welcome(reported: reported, tracked: tracked)
        let parameters = welcome.welcomedParameters(client: client, tracked: tracked)
        #expect(parameters["application_name"] == "moodle")
        #expect(parameters["client_encoding"] == "UTF8", "the same value spelled differently takes the server's spelling")
        #expect(parameters["timezone"] == "Europe/Paris")
        #expect(parameters["DateStyle"] == "ISO, MDY")
        // After a RELOAD that tracks another name, the slow path gives the same answer plus the new name.
        var more = tracked
        more.insert("server_version")
        let reloaded = welcome.welcomedParameters(client: client, tracked: more)
        #expect(reloaded["application_name"] == "moodle" && reloaded["client_encoding"] == "UTF8" && reloaded["timezone"] == "Europe/Paris")
        #expect(reloaded["server_version"] == "15.18")
        #expect(reloaded == { var copy = parameters; copy.set("server_version", "15.18"); return copy }())
    }

    /// Clients that send the same startup parameters get the same welcomed set, storage included (so servers can
    /// share it too); a client with other parameters gets its own, and a name spelled otherwise is not the same.
    @Test func clientsWithTheSameParametersShareOneWelcomedSet() {
        let welcome = Welcome(reported: reported, tracked: tracked)
        func client(_ name: String, _ value: String) -> ParameterSet { var set = ParameterSet(); set.set(name, value); return set }
        let first = welcome.welcomedParameters(client: client("application_name", "moodle"), tracked: tracked)
        let second = welcome.welcomedParameters(client: client("application_name", "moodle"), tracked: tracked)
        #expect(first.sharesStorage(with: second))
        let other = welcome.welcomedParameters(client: client("application_name", "pgbench"), tracked: tracked)
        #expect(!other.sharesStorage(with: first) && other["application_name"] == "pgbench")
        let third = welcome.welcomedParameters(client: client("application_name", "moodle"), tracked: tracked)
        #expect(third == first && third["application_name"] == "moodle")
        let spelledOtherwise = welcome.welcomedParameters(client: client("Application_Name", "moodle"), tracked: tracked)
        #expect(spelledOtherwise == third)
        #expect(!spelledOtherwise.sharesStorage(with: third), "a name spelled otherwise gets a set of its own")
        #expect(welcome.welcomedParameters(client: ParameterSet(), tracked: tracked)["application_name"] == "")
    }

    /// The welcome's ParameterStatus bytes come mostly from a copy encoded once per pool: they must equal
    /// encoding every entry with the welcomed value, whatever the client chose and whether the tracked names
    /// changed since (a RELOAD).
    @Test func theWelcomeBytesEqualEncodingEveryEntry() {
        let welcome = Welcome(reported: reported, tracked: tracked)
        var chooser = ParameterSet()
        chooser.set("application_name", "moodle")
        chooser.set("TimeZone", "Europe/Paris")
        var sameSpelledOtherwise = ParameterSet()
        sameSpelledOtherwise.set("client_encoding", "utf8")
        var untracked = ParameterSet()
        untracked.set("search_path", "public")
        var more = tracked
        more.insert("server_version")
        for client in [ParameterSet(), chooser, sameSpelledOtherwise, untracked] {
            for names in [tracked, more] {
                let welcomed = welcome.welcomedParameters(client: client, tracked: names)
                var expected = ByteBuffer()
                for entry in welcome.entries {
                    expected.writeParameterStatus(name: entry.name, value: welcomed.value(forKey: entry.key) ?? entry.value)
                }
                var written = ByteBuffer()
                welcome.writeStatus(into: &written, client: client, welcomed: welcomed, tracked: names)
                #expect(written == expected, "client \(client.values.keys.sorted()), tracked \(names.count)")
            }
        }
        var out = ByteBuffer()
        welcome.writeStatus(into: &out, client: chooser, welcomed: welcome.welcomedParameters(client: chooser, tracked: tracked), tracked: tracked)
        #expect(String(buffer: out).contains("moodle") && String(buffer: out).contains("Europe/Paris"))
    }
}

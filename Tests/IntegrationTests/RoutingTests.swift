import CLibPQ
import Configuration
import Foundation
import Testing

/// Several hosts per database against a real primary and streaming replicas: health checks, the read-only
/// route, lag, failover under write load, Aurora's topology function, and max_host_connections.
@Suite(.serialized) struct RoutingTests {
    /// Shoal in front of `cluster`: one `postgres` entry naming every node, checks every second.
    static func shoal(for hosts: [String], port: Int, target: TargetSessionAttrs?, readonlyPort: Int = 0,
                      _ more: @escaping (inout ShoalConfig) -> Void = { _ in }) async throws -> ShoalInstance {
        try await ShoalInstance { config in
            var entry = DatabaseEntry(name: "postgres")
            entry.hosts = hosts
            entry.ports = [port]
            entry.dbname = "postgres"
            entry.targetSessionAttrs = target
            config.databases = ["postgres": entry]
            config.defaultPoolSize = 4
            config.readonlyListenPort = readonlyPort
            config.healthCheckPeriod = 1
            config.healthCheckTimeout = 1
            config.healthCheckFailures = 2
            config.healthCheckUser = "postgres"
            config.adminUsers = ["postgres"]
            config.queryWaitTimeout = 30
            more(&config)
        }
    }

    /// SHOW HOSTS as host → (role, state, in_rotation).
    static func hosts(_ shoal: ShoalInstance) throws -> [String: (role: String, state: String, inRotation: Bool)] {
        let lines = try shoal.console("SHOW HOSTS").stdout.split(separator: "\n").dropFirst().filter { !$0.hasPrefix("(") }
        var table: [String: (String, String, Bool)] = [:]
        for line in lines {
            let fields = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard fields.count >= 6 else { continue }
            table[fields[0]] = (fields[2], fields[3], fields[5] == "1")
        }
        return table
    }

    /// Which node answered each of `clients` × `rounds` reads made at once through `port`.
    static func readAddresses(port: Int, clients: Int = 4, rounds: Int = 5) async throws -> (addresses: [String], errors: [String]) {
        let calls = (0..<clients).map { _ in
            background { () -> ([String], [String]) in
                var seen: [String] = []
                var errors: [String] = []
                let connection = try PQConnection("host=127.0.0.1 port=\(port) user=postgres dbname=postgres password=\(TestPostgres.password)")
                for _ in 0..<rounds {
                    do {
                        if let address = try connection.scalar("SELECT host(inet_server_addr()) FROM pg_sleep(0.05)") { seen.append(address) }
                    } catch {
                        errors.append("\(error)")
                    }
                }
                return (seen, errors)
            }
        }
        var addresses: [String] = []
        var errors: [String] = []
        for call in calls {
            let (seen, failed) = try await call.value()
            addresses += seen
            errors += failed
        }
        return (addresses, errors)
    }

    @Test func readOnlyRouteSpreadsOverHealthyReplicasAndLeavesLaggingOnes() async throws {
        let cluster = try ReplicatedCluster(name: "reads", firstOctet: 11)
        defer { cluster.stopAll() }
        let readonlyPort = freePort()
        let shoal = try await Self.shoal(for: cluster.hosts, port: cluster.port, target: .readWrite, readonlyPort: readonlyPort) {
            $0.maxReplicaLag = 1
        }
        defer { Task { await shoal.stop() } }
        try waitUntil("all three hosts are up") {
            let hosts = try Self.hosts(shoal)
            return hosts["127.0.0.11"]?.role == "primary" && hosts["127.0.0.12"]?.state == "up" && hosts["127.0.0.13"]?.state == "up"
        }
        // Writes go to the writer; the read-only listener serves the same database name from both replicas.
        let writer = try PQConnection(shoal.conninfo)
        #expect(try writer.scalar("SELECT host(inet_server_addr())") == "127.0.0.11")
        try writer.query("CREATE TABLE marks (n int)")
        let spread = try await Self.readAddresses(port: readonlyPort)
        #expect(spread.errors.isEmpty, "\(spread.errors)")
        #expect(Set(spread.addresses) == ["127.0.0.12", "127.0.0.13"], "\(spread.addresses)")

        // A cancel goes to the host the statement runs on (a replica here, not the first host of the entry).
        let sleeper = try PQConnection("host=127.0.0.1 port=\(readonlyPort) user=postgres dbname=postgres password=\(TestPostgres.password)")
        let sleeping = background { () -> String? in
            do { _ = try sleeper.query("SELECT pg_sleep(20)"); return nil } catch let error as PQError { return error.sqlState }
        }
        usleep(500_000)
        #expect(sleeper.cancel())
        #expect(try await sleeping.value() == "57014")

        // One replica stops: reads go on on the other; only statements in flight may fail.
        try cluster.replicas[0].stop()
        try waitUntil("the stopped replica is marked down") { try Self.hosts(shoal)["127.0.0.12"]?.state == "down" }
        let afterStop = try await Self.readAddresses(port: readonlyPort)
        #expect(afterStop.errors.isEmpty, "\(afterStop.errors)")
        #expect(Set(afterStop.addresses) == ["127.0.0.13"], "\(afterStop.addresses)")

        // Back, then made to lag: out of the read rotation past max_replica_lag, back in once it replays again.
        try cluster.replicas[0].start()
        try waitUntil("the replica is back") { try Self.hosts(shoal)["127.0.0.12"]?.inRotation == true }
        try cluster.replicas[0].psql("SELECT pg_wal_replay_pause()")
        try waitUntil("the paused replica lags past max_replica_lag") {
            try writer.query("INSERT INTO marks VALUES (1)")
            return try Self.hosts(shoal)["127.0.0.12"]?.inRotation == false
        }
        let whileLagging = try await Self.readAddresses(port: readonlyPort)
        #expect(whileLagging.errors.isEmpty, "\(whileLagging.errors)")
        #expect(Set(whileLagging.addresses) == ["127.0.0.13"], "\(whileLagging.addresses)")
        try cluster.replicas[0].psql("SELECT pg_wal_replay_resume()")
        try waitUntil("the replica catches up") { try Self.hosts(shoal)["127.0.0.12"]?.inRotation == true }
        #expect(try String(contentsOfFile: shoal.logPath, encoding: .utf8).contains("host 127.0.0.12:\(cluster.port) leaves the read rotation"))
    }

    /// What the writers saw during a failover.
    struct FailoverOutcome {
        var acknowledged: Set<Int> = []
        var failed: [Int: String] = [:]
        /// From the `pg_ctl promote` command to the first write acknowledged through Shoal.
        var firstWriteAfterPromotion: TimeInterval?
        /// From the primary's stop command to that write: the outage clients saw.
        var outage: TimeInterval?
        var onNewPrimary: [Int] = []
    }

    /// Numbered inserts through Shoal from four clients while the primary stops (`stopMode`) and the first
    /// replica is promoted.
    /// `checks: false` leaves Shoal no user to run health checks with (the usual case when the auth file holds
    /// SCRAM secrets): roles then come only from the server connections pools open.
    static func failover(_ cluster: ReplicatedCluster, stopMode: String, checks: Bool = true) async throws -> FailoverOutcome {
        let shoal = try await shoal(for: cluster.hosts, port: cluster.port, target: .readWrite) { config in
            if !checks { config.healthCheckUser = nil }
        }
        defer { Task { await shoal.stop() } }
        // No primary key: a statement replayed by the pooler would show as a duplicate row, not be refused.
        try cluster.primary.psql("CREATE TABLE numbered (n int)")
        if !checks { _ = try PQConnection(shoal.conninfo).scalar("SELECT 1") }
        try waitUntil("the writer is known") { try Self.hosts(shoal)[cluster.primary.address]?.role == "primary" }
        let lock = NSLock()
        var outcome = FailoverOutcome()
        var next = 0
        var stop = false
        var promotedAt: Date?
        var stoppedAt = Date()
        let writers = (0..<4).map { _ in
            background {
                var connection = try PQConnection(shoal.conninfo)
                while true {
                    lock.lock()
                    if stop { lock.unlock(); return }
                    next += 1
                    let n = next
                    lock.unlock()
                    do {
                        try connection.query("INSERT INTO numbered VALUES (\(n))")
                        let now = Date()
                        lock.lock()
                        outcome.acknowledged.insert(n)
                        if let promotedAt, outcome.firstWriteAfterPromotion == nil {
                            outcome.firstWriteAfterPromotion = now.timeIntervalSince(promotedAt)
                            outcome.outage = now.timeIntervalSince(stoppedAt)
                        }
                        lock.unlock()
                    } catch {
                        lock.lock()
                        let state = (error as? PQError)?.sqlState ?? "none"
                        outcome.failed[n] = "SQLSTATE \(state): \(error)"
                        lock.unlock()
                        if let reconnected = try? PQConnection(shoal.conninfo) { connection = reconnected }
                        usleep(20_000)
                    }
                }
            }
        }
        usleep(700_000)
        lock.withLock { stoppedAt = Date() }
        try cluster.primary.stop(mode: stopMode)
        lock.withLock { promotedAt = Date() }
        try cluster.replicas[0].promote()
        try waitUntil("writes flow again", timeout: 60) {
            lock.withLock { outcome.firstWriteAfterPromotion != nil }
        }
        usleep(500_000)
        lock.withLock { stop = true }
        for writer in writers { try await writer.value() }
        let rows = try cluster.replicas[0].psql("SELECT n FROM numbered ORDER BY n")
        outcome.onNewPrimary = rows.split(separator: "\n").compactMap { Int($0) }
        let log = (try? String(contentsOfFile: shoal.logPath, encoding: .utf8)) ?? ""
        #expect(log.contains("failover: writer is now \(cluster.replicas[0].address):\(cluster.port)"), "\(log.suffix(3000))")
        return outcome
    }

    static func check(_ outcome: FailoverOutcome, _ label: String) {
        let onNew = Set(outcome.onNewPrimary)
        let lost = outcome.acknowledged.subtracting(onNew)
        #expect(lost.isEmpty, "\(label): acknowledged commits missing on the new primary: \(lost.sorted())")
        #expect(onNew.count == outcome.onNewPrimary.count, "\(label): duplicated rows")
        let committedButReportedFailed = onNew.intersection(outcome.failed.keys)
        let codes = Dictionary(grouping: outcome.failed.values.map { message in
            String(message.prefix(while: { $0 != ":" }))
        }, by: { $0 }).mapValues(\.count)
        print("""
            \(label): first write \(String(format: "%.2f", outcome.firstWriteAfterPromotion ?? -1)) s after the promote command \
            (\(String(format: "%.2f", outcome.outage ?? -1)) s after the stop command); \
            \(outcome.acknowledged.count) acknowledged, \(lost.count) lost, \(outcome.failed.count) errors \(codes), \
            \(committedButReportedFailed.count) committed but reported failed
            """)
        for (n, message) in outcome.failed.sorted(by: { $0.key < $1.key }).prefix(6) { print("  row \(n): \(message.prefix(300))") }
        #expect(outcome.firstWriteAfterPromotion != nil)
    }

    @Test func writesFollowThePromotedReplica() async throws {
        let cluster = try ReplicatedCluster(name: "failover", firstOctet: 21)
        defer { cluster.stopAll() }
        Self.check(try await Self.failover(cluster, stopMode: "fast"), "failover (fast stop, async replication)")
    }

    /// issue 17: target_session_attrs=read-write with no user for health checks serves, and follows a failover,
    /// by learning each host's role from the connections it opens (in_hot_standby at login), as libpq does.
    @Test func writesFollowThePromotedReplicaWithoutHealthChecks() async throws {
        let cluster = try ReplicatedCluster(name: "nochecks", firstOctet: 81)
        defer { cluster.stopAll() }
        let outcome = try await Self.failover(cluster, stopMode: "fast", checks: false)
        Self.check(outcome, "failover without health checks (fast stop, async replication)")
    }

    @Test func synchronousReplicationLosesNoCommitOnACrash() async throws {
        let cluster = try ReplicatedCluster(name: "syncfail", firstOctet: 41, synchronous: true)
        defer { cluster.stopAll() }
        Self.check(try await Self.failover(cluster, stopMode: "immediate"), "failover (immediate stop, synchronous replication)")
    }

    /// Moodle's failover drill: the primary stops, its replica is promoted, clients of both ports (connected
    /// before and after) go on without an error, and each is told the in_hot_standby of the host its
    /// statements run on (Shoal never replays in_hot_standby, and sends the new value when it differs).
    @Test func clientsSeeTheirHostsRoleThroughAPromotion() async throws {
        let cluster = try ReplicatedCluster(name: "roles", replicas: 1, firstOctet: 61)
        defer { cluster.stopAll() }
        let readonlyPort = freePort()
        let shoal = try await Self.shoal(for: cluster.hosts, port: cluster.port, target: .readWrite, readonlyPort: readonlyPort)
        defer { Task { await shoal.stop() } }
        try waitUntil("the roles are known") {
            let hosts = try Self.hosts(shoal)
            return hosts["127.0.0.61"]?.role == "primary" && hosts["127.0.0.62"]?.state == "up"
        }
        let readOnly = "host=127.0.0.1 port=\(readonlyPort) user=postgres dbname=postgres password=\(TestPostgres.password)"
        var mismatches: [String] = []
        func check(_ connection: PQConnection, _ label: String) throws {
            let recovery = try connection.scalar("SELECT pg_is_in_recovery()")
            let told = PQparameterStatus(connection.handle, "in_hot_standby").map { String(cString: $0) } ?? "(none)"
            if told != (recovery == "t" ? "on" : "off") {
                mismatches.append("\(label): ran with pg_is_in_recovery() = \(recovery ?? "?"), told in_hot_standby = \(told)")
            }
        }
        let writerBefore = try PQConnection(shoal.conninfo), readerBefore = try PQConnection(readOnly)
        try check(writerBefore, "writer client before")
        try check(readerBefore, "read-only client before")
        #expect(try readerBefore.scalar("SELECT host(inet_server_addr())") == "127.0.0.62")
        try cluster.primary.stop(mode: "fast")
        try cluster.replicas[0].promote()
        try waitUntil("the promotion is seen") { try Self.hosts(shoal)["127.0.0.62"]?.role == "primary" }
        for round in 0..<3 {
            try check(writerBefore, "writer client from before, round \(round)")
            try check(readerBefore, "read-only client from before, round \(round)")
            try check(try PQConnection(shoal.conninfo), "new writer client, round \(round)")
            try check(try PQConnection(readOnly), "new read-only client, round \(round)")
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
        #expect(!shoal.log.contains("cannot be changed"), "\(shoal.log.suffix(2000))")
    }

    @Test func aReplicaPromotedBesideARunningPrimaryTakesTheWrites() async throws {
        let cluster = try ReplicatedCluster(name: "splitbrain", replicas: 1, firstOctet: 51)
        defer { cluster.stopAll() }
        let shoal = try await Self.shoal(for: cluster.hosts, port: cluster.port, target: .readWrite)
        defer { Task { await shoal.stop() } }
        try waitUntil("the writer is known") { try Self.hosts(shoal)["127.0.0.51"]?.role == "primary" }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("SELECT host(inet_server_addr())") == "127.0.0.51")
        // A session-pooling Shoal too: a session keeps its server between transactions.
        let sessions = try await Self.shoal(for: cluster.hosts, port: cluster.port, target: .readWrite) { $0.poolMode = .session }
        defer { Task { await sessions.stop() } }
        try waitUntil("the session Shoal knows the writer") { try Self.hosts(sessions)["127.0.0.51"]?.role == "primary" }
        let session = try PQConnection(sessions.conninfo)
        #expect(try session.scalar("SELECT host(inet_server_addr())") == "127.0.0.51")
        // The old primary keeps running (a demotion not yet done, or a split brain): once Shoal sees the
        // promotion, nobody writes to it, and its idle servers close.
        try cluster.replicas[0].promote()
        try waitUntil("the promotion is seen") { try Self.hosts(shoal)["127.0.0.52"]?.role == "primary" }
        // The idle session on the old primary was ended; reconnecting lands on the new one.
        try waitUntil("the session on the old primary is ended", timeout: 5) {
            !(try sessions.console("SHOW SERVERS").stdout.contains("|127.0.0.51|"))
        }
        #expect(throws: PQError.self) { try session.query("CREATE TABLE written_to_the_old_primary (n int)") }
        #expect(try PQConnection(sessions.conninfo).scalar("SELECT host(inet_server_addr())") == "127.0.0.52")
        #expect(try cluster.primary.psql("SELECT to_regclass('written_to_the_old_primary') IS NULL") == "t")
        #expect(try client.scalar("SELECT host(inet_server_addr())") == "127.0.0.52")
        let fresh = try PQConnection(shoal.conninfo)
        #expect(try fresh.scalar("SELECT host(inet_server_addr())") == "127.0.0.52")
        try waitUntil("no server left on the old primary", timeout: 5) {
            !(try shoal.console("SHOW SERVERS").stdout.contains("|127.0.0.51|"))
        }
        let log = try String(contentsOfFile: shoal.logPath, encoding: .utf8)
        #expect(log.contains("failover: writer is now 127.0.0.52:\(cluster.port) (was 127.0.0.51:\(cluster.port))"), "\(log.suffix(2000))")
        // A write refused as read-only (25006) makes Shoal check that host's role at once.
        try fresh.query("SET default_transaction_read_only = on")
        #expect(throws: PQError.self) { try fresh.query("CREATE TABLE refused (n int)") }
        try waitUntil("the refusal is logged", timeout: 5) {
            (try String(contentsOfFile: shoal.logPath, encoding: .utf8)).contains("refused a write with 25006: checking its role now")
        }
        #expect(try Self.hosts(shoal)["127.0.0.52"]?.role == "primary")
    }

    @Test func auroraTopologyFindsInstancesAndFollowsANewReader() async throws {
        let cluster = try ReplicatedCluster(name: "aurora", replicas: 1, firstOctet: 31)
        defer { cluster.stopAll() }
        let readonlyPort = freePort()
        // Aurora has aurora_version(): with it, aurora_topology need not be switched on (it is detected).
        try cluster.primary.psql("CREATE FUNCTION aurora_version() RETURNS text LANGUAGE sql AS $$ SELECT '15.4.0' $$")
        // The entry names only the "cluster endpoint" (here the writer); the instances come from the topology.
        let shoal = try await Self.shoal(for: [cluster.primary.address], port: cluster.port, target: .readWrite, readonlyPort: readonlyPort) {
            $0.auroraInstanceHostPattern = "127.0.0.?"
        }
        defer { Task { await shoal.stop() } }
        try waitUntil("the topology's reader is found and up") { try Self.hosts(shoal)["127.0.0.32"]?.state == "up" }
        #expect(try Self.hosts(shoal)["127.0.0.31"]?.role == "primary")
        let before = try await Self.readAddresses(port: readonlyPort)
        #expect(Set(before.addresses) == ["127.0.0.32"] && before.errors.isEmpty, "\(before)")

        try cluster.addReplica()
        try waitUntil("the new reader is found without a reload") { try Self.hosts(shoal)["127.0.0.33"]?.inRotation == true }
        _ = try shoal.console("RECONNECT postgres")
        var reached = false
        for _ in 0..<30 where !reached {
            reached = Set(try await Self.readAddresses(port: readonlyPort).addresses).contains("127.0.0.33")
        }
        #expect(reached, "reads never reached the new reader")
        let after = try await Self.readAddresses(port: readonlyPort, clients: 4, rounds: 6)
        #expect(Set(after.addresses).isSubset(of: ["127.0.0.32", "127.0.0.33"]) && after.errors.isEmpty, "\(after)")
        let log = try String(contentsOfFile: shoal.logPath, encoding: .utf8)
        #expect(log.contains("aurora_topology detected for 127.0.0.31:\(cluster.port): aurora_version() exists"), "\(log.suffix(2000))")
        #expect(log.contains("aurora_topology for 127.0.0.31:\(cluster.port): instances"))
    }

    /// issue 16: PgBouncer's own multi-host entry (no target_session_attrs, no Aurora) opens no health-check
    /// connections, even with a check user configured, and takes its hosts in turn (load_balance_hosts).
    @Test func aPgBouncerHostListOpensNoCheckConnectionsAndTakesHostsInTurn() async throws {
        let shoal = try await ShoalInstance { config in
            var entry = DatabaseEntry(name: "postgres")
            entry.hosts = ["127.0.0.1", "localhost"]
            entry.ports = [TestPostgres.shared.port]
            entry.dbname = "postgres"
            config.databases = ["postgres": entry]
            config.healthCheckPeriod = 0.2
            config.healthCheckUser = "postgres"
            config.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let first = try PQConnection(shoal.conninfo)
        let second = try PQConnection(shoal.conninfo)
        try first.query("BEGIN")
        try second.query("BEGIN")
        #expect(try first.scalar("SELECT 'served'") == "served")
        #expect(try second.scalar("SELECT 'served'") == "served")
        let console = try PQConnection(shoal.consoleConninfo())
        let servers = try console.query("SHOW SERVERS")
        #expect(Set(servers.map { $0[5] }) == ["127.0.0.1", "localhost"], "\(servers)")
        usleep(600_000)
        #expect(try Self.hosts(shoal).isEmpty, "no host is watched")
        let log = try String(contentsOfFile: shoal.logPath, encoding: .utf8)
        #expect(!log.contains("health check"), "\(log.suffix(1500))")
        try first.query("COMMIT")
        try second.query("COMMIT")
    }

    @Test func maxHostConnectionsHoldsAcrossDatabasesAsLoadShifts() async throws {
        let postgres = try TestPostgres(name: "hostcap")
        let shoal = try await ShoalInstance { config in
            config.databases = [:]
            for index in 1...6 {
                var entry = DatabaseEntry(name: "dept\(index)")
                entry.hosts = ["127.0.0.1"]
                entry.ports = [postgres.port]
                entry.dbname = "postgres"
                config.databases[entry.name] = entry
            }
            config.defaultPoolSize = 4
            config.maxHostConnections = 4
            config.adminUsers = ["postgres"]
            config.queryWaitTimeout = 60
        }
        defer { Task { await shoal.stop() } }
        var peak = 0
        let sampling = background { () -> Int in
            var highest = 0
            for _ in 0..<60 {
                let count = Int((try? postgres.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name <> 'psql'")) ?? "0") ?? 0
                highest = max(highest, count)
                usleep(100_000)
            }
            return highest
        }
        let started = Date()
        for phase in [[1, 2, 3], [4, 5, 6]] {
            let loads = phase.flatMap { index in
                (0..<3).map { _ in
                    background { () -> Int in
                        let connection = try PQConnection("host=127.0.0.1 port=\(shoal.port) user=postgres dbname=dept\(index) password=\(TestPostgres.password)")
                        for _ in 0..<10 { _ = try connection.scalar("SELECT pg_sleep(0.02)") }
                        return 10
                    }
                }
            }
            var done = 0
            for load in loads { done += try await load.value() }
            #expect(done == phase.count * 30)
        }
        // 180 requests of 20 ms on four connections: seconds. A client left waiting beside an idle server of
        // its own pool (served only when server_check_delay freed it, 30 s) made this take minutes.
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 60, "the shifting load took \(elapsed) s (a liveness bound, not a speed one)")
        peak = try await sampling.value()
        #expect(peak > 0 && peak <= 4, "peak server connections \(peak)")
        let hosts = try shoal.console("SHOW SERVERS").stdout
        #expect(hosts.split(separator: "\n").filter { $0.hasPrefix("S|") }.count <= 4, "\(hosts)")
    }
}


import AdminConsole
import Configuration
import Foundation
import NIOCore
import Pooling

/// Carries out console commands against the live runtime. SHOW reads the connections where they live (one
/// visit of each EventLoop), so its figures are the pool state itself, not a copy that drifts.
struct AdminExecutor {
    let runtime: ShoalRuntime
    let access: AdminSession.Access

    /// Parameters drivers SET or SHOW on connect; the console accepts and ignores them as PgBouncer does.
    static let fakeParameters: Set<String> = ["client_encoding", "default_transaction_isolation", "standard_conforming_strings",
                                              "datestyle", "timezone", "application_name", "extra_float_digits"]

    static let shoalVersion = "0.2.0"

    func run(_ command: AdminCommand) -> EventLoopFuture<AdminReply> {
        let loop = runtime.loops[0]
        switch command {
        case .show(let subject):
            return show(subject)
        case .pause(let database):
            return pause(database)
        case .resume(let database):
            return loop.makeSucceededFuture(resume(database))
        case .suspend:
            return suspend()
        case .disable(let database), .enable(let database):
            if case .disable = command { return loop.makeSucceededFuture(setDisabled(database, true)) }
            return loop.makeSucceededFuture(setDisabled(database, false))
        case .reconnect(let database):
            if let error = checkDatabase(database, verb: "reconnect") { return loop.makeSucceededFuture(.error(error)) }
            issued(command, database)
            for pool in runtime.pools(of: database) { runtime.reconnect(pool: pool) }
            return loop.makeSucceededFuture(.done(tag: "RECONNECT"))
        case .kill(let database):
            return loop.makeSucceededFuture(kill(database))
        case .killClient(let id):
            guard let number = Int(id) else { return loop.makeSucceededFuture(.error(AdminError("invalid client pointer supplied"))) }
            return runtime.killClient(id: number).map { found in
                found ? .done(tag: "KILL_CLIENT") : .error(AdminError("client not found"))
            }
        case .waitClose(let database):
            if let database, runtime.config.isConsoleDatabase(database) {
                return loop.makeSucceededFuture(.error(AdminError("cannot wait in admin db: \(database)")))
            }
            issued(command, database)
            return runtime.waitClose(database: database).map { .done(tag: "WAIT_CLOSE") }
        case .reload:
            runtime.logger.info("RELOAD command issued")
            let reloaded = runtime.controller?.reload() ?? false
            return loop.makeSucceededFuture(reloaded ? .done(tag: "RELOAD")
                : .error(AdminError("RELOAD failed, see logs for additional details", code: "F0000")))
        case .set(let key, let value):
            return loop.makeSucceededFuture(set(key, value))
        case .shutdown(let mode):
            runtime.logger.info("\(command.logName) command issued")
            let controller = runtime.controller
            if mode == .immediate {
                controller?.requestShutdown(.immediate)
                return loop.makeSucceededFuture(.silent)
            }
            // The shutdown is in force before the reply (a RESUME right after it is refused, as in PgBouncer); its
            // work starts once the reply is out, so the console session itself never holds it up.
            let alreadyShuttingDown = controller?.beginShutdown(mode) ?? false
            loop.scheduleTask(in: .milliseconds(20)) { controller?.carryOutShutdown(mode, alreadyShuttingDown: alreadyShuttingDown) }
            return loop.makeSucceededFuture(.done(tag: "SHUTDOWN"))
        }
    }

    // MARK: SHOW

    private func show(_ subject: String) -> EventLoopFuture<AdminReply> {
        let loop = runtime.loops[0]
        let config = runtime.config
        switch subject {
        case "help":
            return loop.makeSucceededFuture(.help(ShowTables.help))
        case "version":
            return loop.makeSucceededFuture(.table(ShowTables.version(shoal: Self.shoalVersion)))
        case "config":
            return loop.makeSucceededFuture(.table(ShowTables.config(ConfigLoader.settings(of: config))))
        case "state":
            let state = runtime.lifecycle.withLockedValue { $0 }
            return loop.makeSucceededFuture(.table(ShowTables.state(active: !(state.pausedAll || state.suspended),
                                                                    paused: state.pausedAll, suspended: state.suspended)))
        case "fds":
            guard access == .admin else { return loop.makeSucceededFuture(.error(AdminError("admin access needed"))) }
            return loop.makeSucceededFuture(.table(ShowTables.fds()))
        case "peers":
            var table = ResultTable("peer_id:i host port:i pool_size:i")
            for peer in config.peers.values.sorted(by: { $0.id < $1.id }) where peer.id != config.peerID {
                table.append(["\(peer.id)", peer.host, "\(peer.port)", "\(peer.poolSize < 0 ? config.defaultPoolSize : peer.poolSize)"])
            }
            return loop.makeSucceededFuture(.table(table))
        case "peer_pools":
            return loop.makeSucceededFuture(.table(ResultTable("peer_id:i cl_active_cancel_req:i cl_waiting_cancel_req:i sv_active_cancel:i sv_login:i")))
        case "hosts":
            let known = runtime.hosts.snapshot()
            return loop.makeSucceededFuture(.table(ShowTables.hosts(known.hosts, connections: runtime.budget.connections(to:))))
        case "dns_hosts":
            return loop.makeSucceededFuture(.table(ResultTable("hostname ttl:I addrs")))
        case "dns_zones":
            return loop.makeSucceededFuture(.table(ResultTable("zonename serial:I count:i")))
        case "stats", "stats_totals", "stats_averages", "totals":
            return runtime.trafficTotals().map { [runtime] totals in
                var byDatabase: [String: TrafficCounters] = [:]
                var all = TrafficCounters()
                for (key, counters) in totals {
                    byDatabase[key.database, default: TrafficCounters()].add(counters)
                    all.add(counters)
                }
                let averages = runtime.statsAverages.withLockedValue { $0 }
                switch subject {
                case "stats": return .table(ShowTables.stats(totals: byDatabase, averages: averages))
                case "stats_totals": return .table(ShowTables.statsTotals(byDatabase))
                case "stats_averages": return .table(ShowTables.statsAverages(databases: Array(byDatabase.keys), averages: averages))
                default:
                    var sum = [UInt64](repeating: 0, count: 12)
                    for values in averages.values { for index in sum.indices where index < values.count { sum[index] &+= values[index] } }
                    return .table(ShowTables.totals(all, averages: sum))
                }
            }
        case "pools", "clients", "servers", "sockets", "active_sockets", "lists", "mem", "databases", "users":
            return runtime.consoleSnapshot().map { [runtime] snapshot in
                switch subject {
                case "pools": return .table(ShowTables.pools(snapshot.pools))
                case "clients": return .table(ShowTables.connections(snapshot.clients))
                case "servers": return .table(ShowTables.connections(snapshot.servers))
                case "sockets", "active_sockets":
                    return .table(ShowTables.sockets(subject == "sockets" ? snapshot.clients + snapshot.servers : []))
                case "lists": return .table(ShowTables.lists(Self.listCounts(snapshot, config: config, runtime: runtime)))
                case "mem": return .table(ShowTables.mem(clients: snapshot.clients.count, servers: snapshot.servers.count, pools: snapshot.pools.count))
                case "databases": return .table(ShowTables.databases(config: config, usage: Self.databaseUsage(snapshot, runtime: runtime)))
                default: return .table(ShowTables.users(config: config, names: Array(runtime.userList.secrets.keys), usage: Self.userUsage(snapshot)))
                }
            }
        default:
            if let table = ShowTables.fakeParameter(subject) { return loop.makeSucceededFuture(.table(table)) }
            return loop.makeSucceededFuture(.error(AdminError("invalid command 'SHOW \(subject)', use SHOW HELP;")))
        }
    }

    private static func listCounts(_ snapshot: ConsoleSnapshot, config: ShoalConfig, runtime: ShoalRuntime) -> ShowTables.ListCounts {
        var counts = ShowTables.ListCounts()
        counts.databases = config.databases.keys.filter { $0 != "*" }.count + 1
        counts.users = Set(runtime.userList.secrets.keys).union(config.users.keys).union(snapshot.pools.map(\.key.user)).count
        counts.pools = snapshot.pools.count
        counts.usedClients = snapshot.clients.count
        counts.usedServers = snapshot.servers.count
        return counts
    }

    private static func databaseUsage(_ snapshot: ConsoleSnapshot, runtime: ShoalRuntime) -> [String: ShowTables.DatabaseUsage] {
        let state = runtime.lifecycle.withLockedValue { $0 }
        var usage: [String: ShowTables.DatabaseUsage] = [:]
        for pool in snapshot.pools { usage[pool.key.database, default: .init()].paused = state.isPaused(database: pool.key.database) }
        for server in snapshot.servers { usage[server.database, default: .init()].currentConnections += 1 }
        for client in snapshot.clients { usage[client.database, default: .init()].currentClientConnections += 1 }
        for name in state.pausedDatabases { usage[name, default: .init()].paused = true }
        for name in state.disabledDatabases { usage[name, default: .init()].disabled = true }
        return usage
    }

    private static func userUsage(_ snapshot: ConsoleSnapshot) -> [String: ShowTables.UserUsage] {
        var usage: [String: ShowTables.UserUsage] = [:]
        for server in snapshot.servers { usage[server.user, default: .init()].currentConnections += 1 }
        for client in snapshot.clients { usage[client.user, default: .init()].currentClientConnections += 1 }
        return usage
    }

    // MARK: Control

    /// The error for a command naming a database that is the console's or unknown.
    private func checkDatabase(_ database: String?, verb: String) -> AdminError? {
        guard let database else { return nil }
        if runtime.config.isConsoleDatabase(database) { return AdminError("cannot \(verb) admin db: \(database)") }
        if runtime.config.databases[database] == nil && runtime.pools(of: database).isEmpty {
            return AdminError("no such database: \(database)")
        }
        return nil
    }

    private func issued(_ command: AdminCommand, _ database: String?) {
        if let database {
            runtime.logger.info("\(command.logName) '\(database)' command issued")
        } else {
            runtime.logger.info("\(command.logName) command issued")
        }
    }

    private func pause(_ database: String?) -> EventLoopFuture<AdminReply> {
        let loop = runtime.loops[0]
        if let error = checkDatabase(database, verb: "pause") { return loop.makeSucceededFuture(.error(error)) }
        let refused = runtime.lifecycle.withLockedValue { state -> AdminError? in
            if state.pausedAll || state.suspended { return AdminError("already suspended/paused") }
            if let database { state.pausedDatabases.insert(database) } else { state.pausedAll = true }
            return nil
        }
        if let refused { return loop.makeSucceededFuture(.error(refused)) }
        issued(.pause(database: database), database)
        return runtime.pause(database: database).map { .done(tag: "PAUSE") }
    }

    private func resume(_ database: String?) -> AdminReply {
        let refused = runtime.lifecycle.withLockedValue { state -> AdminError? in
            if state.shutdown != nil { return AdminError("pooler is shutting down") }
            if let database {
                guard state.pausedDatabases.remove(database) != nil else { return AdminError("database \(database) is not paused") }
                return nil
            }
            guard state.pausedAll || state.suspended else { return AdminError("pooler is not paused/suspended") }
            state.pausedAll = false
            state.suspended = false
            return nil
        }
        if let refused { return .error(refused) }
        issued(.resume(database: database), database)
        if database == nil { runtime.controller?.setAccepting(true) }
        runtime.resume(database: database)
        return .done(tag: "RESUME")
    }

    private func suspend() -> EventLoopFuture<AdminReply> {
        let loop = runtime.loops[0]
        let refused = runtime.lifecycle.withLockedValue { state -> AdminError? in
            if state.pausedAll || state.suspended { return AdminError("already suspended/paused") }
            if !state.pausedDatabases.isEmpty { return AdminError("cannot suspend with paused databases") }
            state.suspended = true
            return nil
        }
        if let refused { return loop.makeSucceededFuture(.error(refused)) }
        runtime.logger.info("SUSPEND command issued")
        // Shoal has no online restart to hand sockets to: SUSPEND stops accepting and lets every server go idle;
        // clients stay connected and their next request waits for RESUME.
        runtime.controller?.setAccepting(false)
        return runtime.pause(database: nil).map { .done(tag: "SUSPEND") }
    }

    private func setDisabled(_ database: String, _ disabled: Bool) -> AdminReply {
        if let error = checkDatabase(database, verb: disabled ? "disable" : "enable") { return .error(error) }
        runtime.lifecycle.withLockedValue { state in
            if disabled { state.disabledDatabases.insert(database) } else { state.disabledDatabases.remove(database) }
        }
        issued(disabled ? .disable(database: database) : .enable(database: database), database)
        return .done(tag: disabled ? "DISABLE" : "ENABLE")
    }

    private func kill(_ database: String?) -> AdminReply {
        if let error = checkDatabase(database, verb: "kill") { return .error(error) }
        let targets = database.map { [$0] } ?? Array(Set(runtime.allPools.map(\.key.database)).union(runtime.config.databases.keys.filter { $0 != "*" }))
        let refused = runtime.lifecycle.withLockedValue { state -> AdminError? in
            if state.pausedAll || state.suspended { return AdminError("already suspended/paused") }
            state.pausedDatabases.formUnion(targets)
            return nil
        }
        if let refused { return .error(refused) }
        issued(.kill(database: database), database)
        for pool in runtime.pools(of: database) { runtime.kill(pool: pool, reason: "database removed") }
        return .done(tag: "KILL")
    }

    private func set(_ key: String, _ value: String) -> AdminReply {
        if Self.fakeParameters.contains(key.lowercased()) { return .done(tag: "SET", notices: ["SET ignored"]) }
        var config = runtime.config
        do {
            try ConfigLoader.set(key, to: value, in: &config)
        } catch {
            runtime.logger.warning("\(error)")
            return .error(AdminError("SET failed"))
        }
        var notices: [String] = []
        if key.lowercased().hasPrefix("client_tls") || key.lowercased().hasPrefix("server_tls"),
           let problem = runtime.reloadTLS(config) {
            notices.append(problem)
        }
        runtime.apply(config: config, userList: runtime.userList)
        runtime.logger.info("SET \(key) = \(value)")
        return .done(tag: "SET", notices: notices)
    }
}

// MARK: - Gathering

extension ShoalRuntime {
    /// Every logged-in client and every server, read on their own loops, and the pools they add up to.
    func consoleSnapshot() -> EventLoopFuture<ConsoleSnapshot> {
        let pools = allPools
        return visitLoops { registry, _ in
            let nowWall = Date()
            let nowMono = NIODeadline.now().uptimeNanoseconds
            let clients = registry.clients.values.compactMap { $0.consoleRow(nowWall: nowWall, nowMono: nowMono) }
            let servers = registry.servers.values.compactMap { $0.consoleRow(nowWall: nowWall, nowMono: nowMono) }
            return (clients, servers, registry.authFailures)
        }.map { perLoop in
            let clients = perLoop.flatMap(\.0)
            let servers = perLoop.flatMap(\.1)
            let now = NIODeadline.now().uptimeNanoseconds
            var infos: [PoolKey: PoolInfo] = [:]
            // A replication client's dedicated pool is counted in the shared pool's row (one row per database and
            // user, so exporters' series stay unique).
            for pool in pools.sorted(by: { ($0.key.dedicatedTo ?? -1) < ($1.key.dedicatedTo ?? -1) }) {
                if pool.key.dedicatedTo != nil && infos[pool.key.shared] != nil { continue }
                let settings = pool.settings
                let database = pool.database
                var info = PoolInfo(key: pool.key.shared, mode: settings.mode.rawValue)
                info.loadBalanceHosts = database.hosts.count > 1 ? (database.loadBalanceHosts ?? "round-robin") : nil
                let (wait, paused) = pool.withState { ($0.longestWait(now: now), $0.paused) }
                info.maxWaitMicros = wait / 1000
                info.paused = paused
                infos[pool.key.shared] = info
            }
            for row in clients + servers {
                guard let key = row.poolKey else { continue }
                infos[key.shared]?.count(row)
            }
            return ConsoleSnapshot(clients: clients, servers: servers, pools: Array(infos.values),
                                   authFailures: perLoop.reduce(0) { $0 &+ $1.2 })
        }
    }
}

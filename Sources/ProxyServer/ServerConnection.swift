import AdminConsole
import Configuration
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Pooling
import PostgresWire

/// One connection from Shoal to a PostgreSQL server.
///
/// Threading: the handler's own fields (`context`, `client`, login state) live on the server channel's
/// EventLoop and every entry point from elsewhere hops there. `session` is this loop's while the server is
/// idle or resetting; a client reads it once when the pool hands the server over (under the pool's lock) and
/// works on its own copy, which comes back through this loop at release (`giveBack`).
final class ServerConnection: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case connecting
        /// SSLRequest sent; waiting for the server's one-byte answer.
        case requestingTLS
        /// 'S' received; the TLS handshake is under way.
        case handshakingTLS
        case loggingIn(ServerLoginMachine)
        /// Running the database's connect_query after login; its errors are only logged, as in PgBouncer.
        case connectQuery(ServerLoginMachine)
        /// Lent to a client or idle in the pool.
        case ready
        /// Running server_reset_query / server_check_query; released to the pool at its ReadyForQuery.
        case resetting
        case closed
    }

    let id: Int
    let pool: Pool
    let runtime: ShoalRuntime
    let eventLoop: EventLoop
    let loopIndex: Int
    let createdAt: UInt64
    private var context: ChannelHandlerContext?
    private var state: State = .connecting
    private var scanner = FrameScanner()
    private var loginScanner = FrameScanner(maxMessageLength: 1 << 20)
    /// The client this server is lent to; touched on this loop only.
    private var client: ClientConnection?
    private var readPaused = false
    /// This server holds a max_db_connections / max_user_connections slot until it closes.
    private var holdsBudget = true
    private var readPending = false
    var logger: Logger
    /// Parameters, prepared statements and reported facts as this server has them. See the threading note above.
    var session = ServerSession()
    private(set) var backendKey: (processID: Int32, secretKey: Int32)?
    let address: String
    /// The backend this server is on (one of its database entry's hosts).
    let hostAddress: HostAddress
    /// Its pool routes by host health and role (read once: a reload that changes routing reconnects servers).
    private let routed: Bool
    /// The host table's generation when `hostUsable` was decided (same threading rule as `session`: whoever holds the server).
    private var routingGeneration = -1
    private var hostUsable = true
    private var remoteHost: String { hostAddress.host }
    private var remotePort: Int { hostAddress.port }
    private var localHost = "unix"
    private var localPort = 0
    // TLS towards the server: the context and mode chosen at connect, what was negotiated.
    private var tlsContext: NIOSSLContext?
    private var tlsMode = "disable"
    private var tlsDescription: String?
    private var tlsServerEndPoint: [UInt8]?

    init(pool: Pool, runtime: ShoalRuntime, eventLoop: EventLoop, hostAddress: HostAddress) {
        self.hostAddress = hostAddress
        self.routed = pool.routed
        self.id = runtime.makeConnectionID()
        self.pool = pool
        self.runtime = runtime
        self.eventLoop = eventLoop
        self.loopIndex = runtime.loopIndex(of: eventLoop)
        self.createdAt = NIODeadline.now().uptimeNanoseconds
        self.address = hostAddress.description
        var logger = runtime.logger
        logger[metadataKey: "prefix"] = "S-\(id): \(pool.key.displayDatabase)/\(pool.key.user)@\(address)"
        logger[metadataKey: "server"] = "\(id)"
        logger[metadataKey: "addr"] = "\(address)"
        logger[metadataKey: "pool"] = "\(pool.key)"
        self.logger = logger
    }

    // MARK: Dialing

    /// Dials a new server for `pool` on `eventLoop`; the result goes through the pool to its first waiter.
    static func dial(pool: Pool, runtime: ShoalRuntime, on eventLoop: EventLoop) {
        let config = runtime.snapshot.config
        let database = pool.database
        let hostAddress: HostAddress
        if pool.routed {
            // No host fits yet (no writer known during a failover, no healthy replica): the waiters stay queued up
            // to query_wait_timeout; the next routing change or janitor round dials again.
            guard let chosen = runtime.hosts.choose(for: pool, config: config) else { return deferDial(pool: pool) }
            hostAddress = chosen
        } else {
            // A plain host list, as PgBouncer uses it: hosts in turn (load_balance_hosts = round-robin, the
            // default), or always the first (disable). A host that fails is passed by the next dial in turn.
            let addresses = database.addresses(socketDirectory: config.unixSocketDir)
            hostAddress = addresses.count == 1 || database.loadBalanceHosts == "disable" ? addresses[0]
                : addresses[abs(pool.nextTurn() % addresses.count)]
        }
        let limits = ConnectionBudget.Limits(
            database: database.maxDbConnections ?? config.maxDbConnections,
            user: config.users[pool.key.user]?.maxUserConnections ?? config.maxUserConnections,
            host: config.hostConnectionLimit(replicas: config.peersDNS.isEmpty ? 0 : runtime.peers.discovered.count))
        if let refusal = runtime.budget.tryAcquire(pool: pool.key, host: hostAddress, limits: limits) {
            // Make room by closing an idle server of another pool sharing the limit, as PgBouncer evicts; the
            // janitor retries this pool's dial shortly.
            deferDial(pool: pool)
            switch refusal {
            case .databaseOrUser: runtime.evictIdleServer(sharingWith: pool)
            case .host(let larger):
                // max_host_connections: room for a pool holding fewer connections there.
                let pools = larger.compactMap(runtime.existingPool)
                runtime.evictIdleServer(fromFirstOf: pools, on: hostAddress, reason: "evicted for max_host_connections")
            }
            return
        }
        let host = hostAddress.host
        let port = hostAddress.port
        let isUnix = hostAddress.isUnixSocket
        let server = ServerConnection(pool: pool, runtime: runtime, eventLoop: eventLoop, hostAddress: hostAddress)
        let address = server.address
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(config.serverConnectTimeout * 1000)))
            .channelOption(.autoRead, value: true)
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if !isUnix { try TCPTuning.apply(to: channel, config: config) }
                    try channel.pipeline.syncOperations.addHandler(server)
                }
            }
        let connected = isUnix
            ? bootstrap.connect(unixDomainSocketPath: "\(host)/.s.PGSQL.\(port)")
            : bootstrap.connect(host: host, port: port)
        connected.whenFailure { error in
            server.loginFailed(message: "connect failed", code: "08006", logLine: "sbuf_connect failed to connect to \(address): \(error)")
        }
        // A server that connects but never finishes its login is bounded by server_connect_timeout too.
        eventLoop.scheduleTask(in: .milliseconds(Int64(config.serverConnectTimeout * 1000))) {
            switch server.state {
            case .requestingTLS, .handshakingTLS, .loggingIn, .connectQuery:
                server.loginFailed(message: "connect timeout", code: "08006", logLine: "server connect timeout")
                server.context?.close(promise: nil)
            case .connecting, .ready, .resetting, .closed:
                break
            }
        }
    }

    /// The pool's dial did not happen now: its waiters stay queued, and idle servers it has on other loops
    /// serve them meanwhile.
    static func deferDial(pool: Pool) {
        for (server, waiter) in pool.withState({ $0.connectDeferred() }) { waiter.assign(server) }
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        runtime.registries[loopIndex].add(self)
        if let local = context.channel.localAddress, local.protocol != .unix {
            localHost = local.ipAddress ?? "?"
            localPort = local.port ?? 0
        }
        if runtime.snapshot.config.logConnections {
            // PgBouncer names the local end of a TCP connection (which port to look for in pg_stat_activity).
            logger.info(localPort > 0 ? "new connection to server (from \(localHost):\(localPort))" : "new connection to server")
        }
        let tls = runtime.tls.withLockedValue { $0 }
        // As libpq and PgBouncer: TLS over TCP only, never on a Unix socket.
        if !remoteHost.hasPrefix("/"), let tlsContext = tls.forServers {
            self.tlsContext = tlsContext
            tlsMode = tls.serverMode
            state = .requestingTLS
            var request = context.channel.allocator.buffer(capacity: 8)
            request.writeSSLRequest()
            context.writeAndFlush(wrapOutboundOut(request), promise: nil)
            return
        }
        startLogin(context: context)
    }

    /// Sends the startup packet (through TLS when it was negotiated) and starts answering authentication.
    private func startLogin(context: ChannelHandlerContext) {
        state = .loggingIn(ServerLoginMachine(user: pool.database.user ?? pool.key.user, secret: pool.serverSecret.loginSecret,
                                              tlsServerEndPoint: tlsServerEndPoint))
        var startup = context.channel.allocator.buffer(capacity: 128)
        let database = pool.database
        var parameters: [(String, String)] = [("user", database.user ?? pool.key.user), ("database", database.dbname ?? pool.key.database)]
        parameters.append(contentsOf: database.startupParameters.map { key, value in
            (key == "datestyle" ? "DateStyle" : key == "timezone" ? "TimeZone" : key, value)
        })
        startup.writeStartupMessage(parameters: parameters)
        context.writeAndFlush(wrapOutboundOut(startup), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        switch state {
        case .ready:
            if let client {
                if client.eventLoop === eventLoop {
                    client.serverDataReceived(buffer, from: self, flush: false)
                } else {
                    client.eventLoop.execute { client.serverDataReceived(buffer, from: self, flush: true) }
                }
            } else {
                // An idle server speaking unprompted: a notice, a reported change (in_hot_standby at a
                // promotion), or a FATAL before it goes away. The close follows a FATAL.
                var visitor = IdleServerVisitor()
                let scanned = (try? scanner.scan(buffer, visitor: &visitor)) != nil
                if let message = visitor.fatal { logger.info("server sent while idle: \(message)") }
                if !scanned || visitor.unsolicited || !scanner.atBoundary {
                    // Anything else, a bad frame, or half a message: the next client would read it as the start
                    // of its answer. PgBouncer's words for a server that is not clean.
                    if pool.withState({ $0.takeOneIdle { $0 === self } }) != nil { close(reason: "idle server got dirty") }
                    return
                }
                // A promotion reports in_hot_standby = off to every session. A client may be leasing this
                // server on another loop right now, so its fields are not rewritten here: taken out of the idle
                // list under the pool lock, it closes, and the pool's next login reports the host as it is.
                let changed = visitor.parameterUpdates.first { name, value in
                    ParameterSet.serverOwned.contains(name.lowercased()) && session.facts?.reports(name, value) == false
                }
                if let (name, value) = changed {
                    if routed && name.lowercased() == "in_hot_standby" { runtime.hosts.roleReported(hostAddress, inRecovery: value == "on") }
                    if pool.withState({ $0.takeOneIdle { $0 === self } }) != nil { close(reason: "server reported \(name) = \(value) while idle") }
                }
            }
        case .loggingIn(var login):
            var visitor = LoginVisitor()
            do {
                _ = try loginScanner.scan(buffer, visitor: &visitor)
            } catch {
                loginFailed(message: "server login failed: bad packet", code: "08P01", logLine: "bad packet from server")
                context.close(promise: nil)
                return
            }
            for (type, body) in visitor.messages {
                switch login.messageReceived(type: type, body: body) {
                case .wait:
                    continue
                case .send(let bytes):
                    context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
                case .fail(let message, let code):
                    state = .closed
                    // PgBouncer's line keeps the server's severity; Shoal's own reasons already read "server login failed: …".
                    let logLine = login.refusedWithSeverity.map { "server login failed: \($0) \(message)" } ?? message
                    loginFailed(message: message, code: code, logLine: logLine)
                    context.close(promise: nil)
                    return
                case .ready:
                    if let query = pool.database.connectQuery {
                        state = .connectQuery(login)
                        var buffer = context.channel.allocator.buffer(capacity: query.utf8.count + 6)
                        buffer.writeQuery(query)
                        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
                    } else {
                        loginSucceeded(login)
                    }
                    return
                }
            }
            state = .loggingIn(login)
        case .requestingTLS:
            tlsAnswerReceived(buffer, context: context)
        case .handshakingTLS:
            break // NIOSSL consumes the handshake; nothing reaches here before it completes
        case .connectQuery(let login):
            var visitor = ResetVisitor()
            _ = try? scanner.scan(buffer, visitor: &visitor)
            if visitor.failed { logger.error("error while executing connect_query") }
            if visitor.ready { loginSucceeded(login) }
        case .resetting:
            var visitor = ResetVisitor()
            _ = try? scanner.scan(buffer, visitor: &visitor)
            // DISCARD ALL / RESET ALL move reported parameters back to the server's defaults: keep the
            // varcache's picture of this server true, or the next client's SETs would be skipped.
            for (name, value) in visitor.parameterUpdates { session.reported(name, value) }
            if visitor.failed {
                logger.warning("server reset or check query failed")
                close(reason: "reset or check query failed")
                lentServerGone()
                return
            }
            if visitor.ready {
                state = .ready
                returnToPool(reusable: true)
            }
        case .connecting, .closed:
            break
        }
    }

    // MARK: TLS towards the server

    private func tlsAnswerReceived(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        switch buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) {
        case UInt8(ascii: "S"):
            guard buffer.readableBytes == 1, let tlsContext else {
                return loginFailedAndClose("server login failed: server sent unencrypted data after SSL response")
            }
            // SNI and the name check take a host name; for an IP literal NIOSSL checks the certificate's IP
            // addresses against the peer address instead.
            do {
                let handler = try NIOSSLClientHandler(context: tlsContext, serverHostname: hostAddress.isIPLiteral ? nil : remoteHost)
                try context.pipeline.syncOperations.addHandler(handler, position: .first)
                state = .handshakingTLS
            } catch {
                loginFailedAndClose("server login failed: TLS setup failed: \(error)")
            }
        case UInt8(ascii: "N") where tlsMode == "prefer":
            startLogin(context: context)
        case UInt8(ascii: "N"):
            loginFailedAndClose("server login failed: server does not support SSL, but SSL was required")
        default:
            loginFailedAndClose("server login failed: bad SSL response")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakingTLS = state, let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
            tlsDescription = handler?.tlsVersion.map(ClientConnection.describe) ?? "TLS"
            if let der = try? handler?.peerCertificate?.toDERBytes() {
                tlsServerEndPoint = TLSServerEndPoint.bindingData(certificateDER: der)
            }
            if runtime.snapshot.config.logConnections { logger.info("SSL established: \(tlsDescription ?? "TLS")") }
            startLogin(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func loginFailedAndClose(_ message: String) {
        loginFailed(message: message, code: "08P01", logLine: message)
        context?.close(promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let client, client.eventLoop === eventLoop {
            client.flushToClient()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        runtime.registries[loopIndex].remove(self)
        releaseBudget()
        let previous = state
        state = .closed
        self.context = nil
        switch previous {
        case .connecting, .requestingTLS, .handshakingTLS, .loggingIn, .connectQuery:
            loginFailed(message: "server closed the connection during login", code: "08006", logLine: "server closed during login")
        case .resetting:
            // Lent to the reset/check query: the pool counts it active.
            lentServerGone()
            if runtime.snapshot.config.logDisconnections {
                logger.info("closing because: server conn crashed? (age=\(ageSeconds)s)")
            }
        case .ready:
            if let client {
                self.client = nil
                let server = self
                client.eventLoop.execute { client.linkedServerClosed(server) }
            } else {
                pool.withState { $0.idleServerClosed(self) }
            }
            if routed { runtime.hosts.serverFailed(hostAddress, reason: "server connection closed by the server") }
            if runtime.snapshot.config.logDisconnections {
                logger.info("closing because: server conn crashed? (age=\(ageSeconds)s)")
            }
        case .closed:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        switch state {
        case .requestingTLS, .handshakingTLS:
            // A certificate that fails verification, a protocol mismatch: say so to the queued clients.
            let reason = TLSFailureText.describe(error, host: remoteHost)
            loginFailed(message: "server login failed: TLS handshake failed: \(reason)", code: "08006",
                        logLine: "server login failed: TLS handshake failed: \(reason)")
        case .connecting, .loggingIn, .connectQuery, .ready, .resetting, .closed:
            logger.debug("server connection error: \(error)")
        }
        context.close(promise: nil)
    }

    /// Backpressure towards the client: while this server cannot take more, its client is not read.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard let client else { return }
        let writable = context.channel.isWritable
        if client.eventLoop === eventLoop {
            client.serverWritabilityChanged(writable, from: self)
        } else {
            client.eventLoop.execute { client.serverWritabilityChanged(writable, from: self) }
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: Login outcome

    private func loginSucceeded(_ login: ServerLoginMachine) {
        state = .ready
        if let mechanism = login.saslMechanism, mechanism.hasSuffix("-PLUS"), runtime.snapshot.config.logConnections {
            logger.info("server login with \(mechanism) (channel binding tls-server-end-point)")
        }
        pool.shards[loopIndex].counters.serverConnects &+= 1
        backendKey = login.backendKey
        if routed {
            // The host's role as PostgreSQL states it at login (14 and later): hosts without health checks learn
            // it only this way. A connection made to find out, that does not fit this pool, goes; the pool tries
            // again on its next round, with what it now knows.
            if let standby = login.parameters.first(where: { $0.0 == "in_hot_standby" })?.1 {
                runtime.hosts.roleReported(hostAddress, inRecovery: standby == "on")
            }
            // Before anything of it becomes the pool's (its parameters are the welcome new clients get).
            if !hostStillFits() {
                close(reason: "host \(hostAddress) does not fit target_session_attrs=\(pool.target.rawValue)")
                Self.deferDial(pool: pool)
                return
            }
        }
        let tracked = trackedNames()
        for (name, value) in login.parameters where tracked.contains(name.lowercased()) {
            session.parameters.set(name, value)
        }
        pool.learnWelcome(login.parameters, tracked: tracked)
        let reported = ServerFacts(reported: login.parameters)
        if let shared = pool.welcome?.facts, shared.sameValues(as: reported) { session.facts = shared } else { session.facts = reported }
        let action = pool.withState { $0.connected(self, loop: loopIndex, createdAt: createdAt, now: NIODeadline.now().uptimeNanoseconds) }
        switch action {
        case .handOver(let server, let waiter):
            waiter.assign(server)
        case .parked:
            break
        case .discard(let server, let connectFor):
            server.close(reason: "reconnect")
            if let connectFor { ServerConnection.dial(pool: pool, runtime: runtime, on: runtime.loops[connectFor]) }
        }
    }

    /// Closes a server the pool counts as lent out (a client's, mid-transaction or dirty) and tells the pool.
    func closeLent(reason: String) {
        close(reason: reason)
        lentServerGone()
    }

    /// A server the pool counts as lent out is gone: let the pool know, and dial for waiters if it says so.
    func lentServerGone() {
        if let loop = pool.withState({ $0.activeServerClosed(createdAt: createdAt) }) {
            ServerConnection.dial(pool: pool, runtime: runtime, on: runtime.loops[loop])
        }
    }

    private var loginFailureReported = false

    private func releaseBudget() {
        guard holdsBudget else { return }
        holdsBudget = false
        runtime.budget.release(pool: pool.key, host: hostAddress)
    }

    func loginFailed(message: String, code: String, logLine: String) {
        if context == nil { releaseBudget() } // never connected: no channelInactive will follow
        guard !loginFailureReported else { return }
        loginFailureReported = true
        state = .closed
        onLoop { server in server.pool.shards[server.loopIndex].counters.serverConnectFailures &+= 1 }
        logger.warning("\(logLine)")
        if ServerLoginMachine.isHostFailure(code: code, message: message) {
            // The host is unreachable, shutting down or starting up (57P03): nobody is failed for it.
            if routed {
                // It is marked down and the waiters wait for another host that fits (a failover in progress),
                // without server_login_retry holding the pool back for a fault of one host.
                Self.deferDial(pool: pool)
                runtime.hosts.serverFailed(hostAddress, reason: logLine)
            } else {
                // A restart or a network blip: the janitor dials again after server_login_retry, and
                // query_wait_timeout bounds the wait — PgBouncer's behaviour.
                let now = NIODeadline.now().uptimeNanoseconds
                for (server, waiter) in pool.withState({ $0.connectFailedTransiently(now: now) }) { waiter.assign(server) }
            }
            return
        }
        let waiters = pool.withState { $0.connectFailed(message: message, code: code, now: NIODeadline.now().uptimeNanoseconds) }
        for waiter in waiters {
            waiter.eventLoop.execute { waiter.serverLoginFailed(message: message, code: code) }
        }
    }

    private func trackedNames() -> Set<String> {
        runtime.snapshot.trackedNames
    }

    // MARK: Console

    /// Set once RECONNECT (or a changed database entry) wants this server gone at its next release.
    var closeNeeded: Bool {
        if case .closed = state { return false }
        return predatesReconnect
    }

    /// Made before the pool's last RECONNECT (or changed entry). Safe from any loop: `createdAt` never changes
    /// and the pool's mark is read under its lock.
    var predatesReconnect: Bool { createdAt < pool.withState { $0.closeBefore } }

    /// This server as a SHOW SERVERS row. Runs on the server's loop.
    func consoleRow(nowWall: Date, nowMono: UInt64) -> ConnectionInfo? {
        let status: String
        switch state {
        case .connecting, .requestingTLS, .handshakingTLS, .loggingIn, .connectQuery: status = "new"
        case .ready: status = client == nil ? "idle" : "active"
        case .resetting: status = "tested"
        case .closed: return nil
        }
        var row = ConnectionInfo(
            type: "S", user: pool.database.user ?? pool.key.user, database: pool.key.database, state: status,
            addr: remoteHost.hasPrefix("/") ? "unix" : remoteHost, port: remotePort, localAddr: localHost, localPort: localPort,
            connectTime: nowWall.addingTimeInterval(-Double(nowMono &- createdAt) / 1e9),
            requestTime: nowWall.addingTimeInterval(-Double(nowMono &- createdAt) / 1e9),
            waitMicros: 0, closeNeeded: closeNeeded, ptr: ClientConnection.pointerString(self),
            link: client.map(ClientConnection.pointerString) ?? "", remotePid: Int(backendKey?.processID ?? 0), tls: tlsDescription ?? "",
            applicationName: "", id: id, poolKey: pool.key)
        if pool.key.dedicatedTo != nil, let mode = pool.database.startupParameters.last(where: { $0.0 == "replication" })?.1 {
            row.replication = mode == "database" ? "logical" : "physical"
        }
        return row
    }

    var ageSeconds: UInt64 { (NIODeadline.now().uptimeNanoseconds &- createdAt) / 1_000_000_000 }

    // MARK: Entry points from clients (any loop)

    func attach(_ client: ClientConnection) {
        if eventLoop.inEventLoop {
            attachOnLoop(client)
        } else {
            eventLoop.execute { self.attachOnLoop(client) }
        }
    }

    private func attachOnLoop(_ client: ClientConnection) {
        guard case .ready = state, context != nil else {
            // Died between the lease and the link: the client learns it as for any lost server.
            client.eventLoop.execute { client.linkedServerClosed(self) }
            return
        }
        self.client = client
    }

    /// Unlinks `client` if it is still the linked one; a newer link made meanwhile is left alone.
    func detach(_ client: ClientConnection) {
        if eventLoop.inEventLoop {
            detachOnLoop(client)
        } else {
            eventLoop.execute { self.detachOnLoop(client) }
        }
    }

    private func detachOnLoop(_ client: ClientConnection) {
        if self.client === client { self.client = nil }
        if readPaused { setReadPaused(false) }
    }

    /// Writes client bytes; flushes when asked (at the end of the client's read burst).
    func send(_ buffer: ByteBuffer, flush: Bool) {
        if eventLoop.inEventLoop {
            guard let context else { return }
            context.write(wrapOutboundOut(buffer), promise: nil)
            if flush { context.flush() }
        } else {
            eventLoop.execute {
                guard let context = self.context else { return }
                context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
            }
        }
    }

    func flush() {
        if eventLoop.inEventLoop {
            context?.flush()
        } else {
            eventLoop.execute { self.context?.flush() }
        }
    }

    func setReadPaused(_ paused: Bool) {
        onLoop { server in
            server.readPaused = paused
            if !paused, server.readPending, let context = server.context {
                server.readPending = false
                context.read()
            }
        }
    }

    /// A client is done with this server: its session as the client left it comes back, and the server
    /// returns to the pool, through `resetQuery` (DISCARD ALL, server_reset_query) when one is given.
    func giveBack(session: ServerSession, resetQuery: String?) {
        // Not through `onLoop`: its escaping closure would cost an allocation on every release of a same-loop link.
        if eventLoop.inEventLoop {
            takeBack(session: session, resetQuery: resetQuery)
        } else {
            eventLoop.execute { self.takeBack(session: session, resetQuery: resetQuery) }
        }
    }

    private func takeBack(session: ServerSession, resetQuery: String?) {
        self.session = session
        if let resetQuery {
            resetAndRelease(query: resetQuery)
        } else {
            returnToPool(reusable: true)
        }
    }

    /// server_check_query on an idle server due for one, taken out of the pool for a client (PgBouncer checks at
    /// reuse); it returns to the pool once answered and goes to the first waiter, or closes if the check fails.
    func check(query: String) {
        onLoop { $0.resetAndRelease(query: query) }
    }

    /// Runs `query` and returns the server to the pool once it answers. On this loop.
    private func resetAndRelease(query: String) {
        // What the query clears (DISCARD ALL, RESET ALL, DEALLOCATE ALL) this server no longer has.
        let effects = SessionStateScanner.scan(query)
        client = nil
        if effects.settings.contains(.resetAll) { session.parameters.resetAllSession() }
        if effects.deallocatesAll { session.statements.removeAll() }
        guard let context else { return }
        state = .resetting
        scanner = FrameScanner()
        var buffer = context.channel.allocator.buffer(capacity: query.utf8.count + 6)
        buffer.writeQuery(query)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Whether this server's host still fits its pool's target (always, for pools that do not route). Decided
    /// again only when the host table changed since the last call; same threading rule as `session`.
    func hostStillFits() -> Bool {
        guard routed else { return true }
        let generation = runtime.hosts.generation
        if generation != routingGeneration {
            routingGeneration = generation
            hostUsable = runtime.hosts.isUsable(hostAddress, for: pool, config: runtime.snapshot.config)
        }
        return hostUsable
    }

    /// Gives a server back after its client is done with it.
    func returnToPool(reusable: Bool) {
        // Its host may have left this pool's rotation (down, demoted, lagging): then nobody gets this server again.
        let reusable = reusable && hostStillFits()
        let now = NIODeadline.now().uptimeNanoseconds
        let action = pool.withState { $0.released(self, loop: loopIndex, createdAt: createdAt, reusable: reusable, now: now) }
        runtime.perform(action, pool: pool)
    }

    func close(reason: String) {
        onLoop { server in
            guard let context = server.context else { return }
            if server.runtime.snapshot.config.logDisconnections {
                server.logger.info("closing because: \(reason) (age=\(server.ageSeconds)s)")
            }
            server.client = nil
            server.state = .closed
            server.context = nil
            var terminate = context.channel.allocator.buffer(capacity: 5)
            terminate.writeTerminate()
            context.writeAndFlush(server.wrapOutboundOut(terminate), promise: nil)
            context.close(promise: nil)
        }
    }

    private func onLoop(_ body: @escaping (ServerConnection) -> Void) {
        if eventLoop.inEventLoop {
            body(self)
        } else {
            eventLoop.execute { body(self) }
        }
    }
}

// MARK: - Visitors

/// Collects every message during login (they are few and small).
struct LoginVisitor: FrameVisitor {
    var messages: [(UInt8, ByteBuffer)] = []
    func wantsBody(type: UInt8) -> Bool { true }
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool { true }
    mutating func messageBody(type: UInt8, body: ByteBuffer) { messages.append((type, body)) }
}

struct IdleServerVisitor: FrameVisitor {
    var fatal: String?
    var parameterUpdates: [(String, String)] = []
    /// A message other than the asynchronous ones (notice, parameter status, notification) or a FATAL.
    var unsolicited = false
    func wantsBody(type: UInt8) -> Bool { type == BackendMessage.errorResponse || type == BackendMessage.parameterStatus }
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        switch type {
        case BackendMessage.noticeResponse, BackendMessage.parameterStatus, BackendMessage.notificationResponse,
             BackendMessage.errorResponse:
            break
        default:
            unsolicited = true
        }
        return true
    }
    mutating func messageBody(type: UInt8, body: ByteBuffer) {
        var body = body
        if type == BackendMessage.parameterStatus {
            if let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() { parameterUpdates.append((name, value)) }
        } else {
            fatal = ErrorFields(body: body).message
        }
    }
}

struct ResetVisitor: FrameVisitor {
    var ready = false
    var failed = false
    var parameterUpdates: [(String, String)] = []
    func wantsBody(type: UInt8) -> Bool { type == BackendMessage.parameterStatus }
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == BackendMessage.readyForQuery { ready = true }
        if type == BackendMessage.errorResponse { failed = true }
        return true
    }
    mutating func messageBody(type: UInt8, body: ByteBuffer) {
        var body = body
        if let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() { parameterUpdates.append((name, value)) }
    }
}

extension ShoalRuntime {
    /// Carries out what a pool decided on release.
    func perform(_ action: PoolState<ServerConnection, ClientConnection>.ReleaseAction, pool: Pool) {
        switch action {
        case .handOver(let server, let waiter):
            waiter.assign(server)
        case .parked:
            break
        case .close(let server, let connectFor):
            server.close(reason: "server lifetime over or not reusable")
            if let connectFor {
                ServerConnection.dial(pool: pool, runtime: self, on: loops[connectFor])
            }
        }
    }
}

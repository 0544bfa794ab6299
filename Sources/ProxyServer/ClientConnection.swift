import AdminConsole
import Configuration
import Foundation
import Logging
import NIOCore
import NIOSSL
import Pooling
import PostgresWire

/// One client of Shoal, from its startup packet to its goodbye.
///
/// All fields live on the client channel's EventLoop. Server bytes arrive here (directly when the server
/// shares the loop, through `execute` when it does not), so the client owns the view of its link: the
/// TransactionTracker that decides when the server can go back to the pool is in one place.
final class ClientConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case startup
        case authenticating
        /// Authenticated; waiting for a first server login to learn the welcome parameters.
        case waitingForWelcome
        /// Logged in, no server, nothing to do.
        case idle
        /// Has a request buffered and is queued in the pool.
        case waitingForServer
        case linked
        /// An admin console session (database `pgbouncer` or `shoal`).
        case console
        case closed
    }

    let id: Int
    let runtime: ShoalRuntime
    let eventLoop: EventLoop
    let loopIndex: Int
    private var context: ChannelHandlerContext?
    private(set) var state: State = .startup
    private var logger: Logger
    private let connectedAt = NIODeadline.now()
    /// Wall-clock time of connect and of the last request, for SHOW CLIENTS.
    private let connectedAtWall = Date()
    private var peerDescription = "unknown"
    private var remoteHost = "unix"
    private var remotePort = 0
    private var localHost = "unix"
    private var localPort = 0
    /// TLS terminated here (the client sent SSLRequest and got 'S'), and its protocol for logs and SHOW CLIENTS.
    private var tlsActive = false
    private var tlsDescription: String?
    private var isUnixSocket = false
    /// The peer's uid and pid on a Unix socket (SO_PEERCRED): PgBouncer's passwordless console rule, remote_pid.
    private var peerUID: UInt32?
    private var peerPID: Int32 = 0

    // Login
    private var startupBuffer: ByteBuffer?
    private var auth: ClientAuthMachine?
    /// The secret the client was checked against (auth file or auth_query), for server logins as this user.
    private var authSecret: String?
    private var authScanner = FrameScanner(maxMessageLength: 65_536)
    private var startupParameters: [(String, String)] = []
    private var user = ""
    private var databaseName = ""
    private var databaseEntry: DatabaseEntry?
    private var loginTimeout: Scheduled<Void>?
    private var counted = false
    private(set) var cancelKey: (processID: Int32, secretKey: Int32)?

    // Pooling
    private(set) var pool: Pool?
    private var mode: PoolMode = .session
    /// The tracked parameters this client expects on whatever server it uses.
    private var parameters = ParameterSet()
    private var scanner = FrameScanner()
    private var tracker = TransactionTracker()
    private(set) var server: ServerConnection?
    private var pending: ByteBuffer?
    /// server_reset_query when server_reset_query_always is on; read once at login, off the per-transaction path.
    private var resetQueryOnRelease: String?
    /// server_reset_query when this client's session ends (session mode, or _always).
    private var resetQueryOnDisconnect: String?

    // Statistics: this loop's shard of the pool's counters, and the start of what is being timed (0 = none).
    private var statsShard: PoolStatsShard?
    private var queryStartedAt: UInt64 = 0
    private var transactionStartedAt: UInt64 = 0
    private var waitStartedAt: UInt64 = 0

    // Session state (transaction and statement modes): what the last probe found held on the server, whether
    // a statement since then may have created or dropped some, and the pool's count of pinned clients.
    private var detectsSessionState = false
    private(set) var pinned: SessionStateKinds = []
    private var suspected: SessionStateKinds = []
    private var probeNeeded = false
    private var probing = false
    private var pinSlotWanted = false
    private var pinRequestRefusable = false
    private var countedAsPinned = false
    private var pinnedSince: NIODeadline?
    private var pinStatement = ""
    private var pinWarned = false

    // Named prepared statements across server connections (transaction/statement modes, max_prepared_statements).
    private var tracksPrepared = false
    private var preparedCapacity = 0
    private var statements = ClientStatements()
    /// Client bytes held back because they end in an incomplete Query/Parse/Bind/Describe/Close.
    private var clientCarry: ByteBuffer?
    /// Per link: Query/Sync/FunctionCall messages sent to the server (Shoal's own included), the responses
    /// Shoal expects for the Parse/Close messages it rewrote, and bytes of a dropped response still to come.
    private var unitsSent = 0
    private var expectations = ResponseExpectations()
    private var dropContinuing = 0
    private var clearServerStatementsAtLink = false
    private var pendingUnits = 0
    private var pendingHasStatements = false

    /// The console session, when this client logged in to the admin database.
    private var console: AdminSession?
    var isConsole: Bool { console != nil }

    // Timeouts (seconds; 0 = off), resolved at login: the [users] value if set, else the global one.
    private var queryTimeout = 0.0
    private var idleTransactionTimeout = 0.0
    private var clientIdleTimeout = 0.0
    private var tracksActivity = false
    private var lastActivity = NIODeadline.now()
    private var registeredWithSweeper = false

    // The server side of the current link.
    private var serverScanner = FrameScanner()
    private var serverStreamPosition = 0
    /// ReadyForQuery messages of Shoal's own SET statement still to swallow.
    private var swallowReadyForQuery = 0
    private var swallowEnd = 0
    private var currentSwallowed = false
    private var needsFlush = false

    init(runtime: ShoalRuntime, eventLoop: EventLoop) {
        self.id = runtime.makeConnectionID()
        self.runtime = runtime
        self.eventLoop = eventLoop
        self.loopIndex = runtime.loopIndex(of: eventLoop)
        self.logger = runtime.logger
        let maxPacket = runtime.snapshot.config.maxPacketSize
        self.scanner = FrameScanner(maxMessageLength: maxPacket)
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        runtime.registries[loopIndex].add(self)
        if let remote = context.channel.remoteAddress {
            switch remote {
            case .unixDomainSocket:
                isUnixSocket = true
                peerDescription = "unix:\(runtime.snapshot.config.listenPort)"
                remotePort = runtime.snapshot.config.listenPort
                localPort = remotePort
                // SO_PEERCRED (17 on Linux; Glibc's module hides it and struct ucred behind _GNU_SOURCE).
                (context.channel as? SocketOptionProvider)?
                    .unsafeGetSocketOption(level: .init(SOL_SOCKET), name: .init(17))
                    .whenSuccess { [weak self] (credentials: PeerCredentials) in
                        self?.peerUID = credentials.uid
                        self?.peerPID = credentials.pid
                    }
            case .v6:
                peerDescription = "[\(remote.ipAddress ?? "?")]:\(remote.port ?? 0)"
            default:
                peerDescription = "\(remote.ipAddress ?? "?"):\(remote.port ?? 0)"
            }
            if remote.protocol != .unix {
                remoteHost = remote.ipAddress ?? "?"
                remotePort = remote.port ?? 0
                localHost = context.channel.localAddress?.ipAddress ?? "?"
                localPort = context.channel.localAddress?.port ?? 0
            }
        }
        updateLogPrefix()
        let timeout = runtime.snapshot.config.clientLoginTimeout
        if timeout > 0 {
            loginTimeout = context.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout * 1000))) { [weak self] in
                guard let self, self.state == .startup || self.state == .authenticating || self.state == .waitingForWelcome else { return }
                self.fatal(self.state == .waitingForWelcome ? "client_login_timeout (server down)" : "client_login_timeout")
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        switch state {
        case .startup:
            startupBytesReceived(buffer)
        case .authenticating:
            authBytesReceived(buffer)
        case .idle, .waitingForServer, .linked, .waitingForWelcome:
            if tracksActivity { lastActivity = NIODeadline.now() }
            queryBytesReceived(buffer)
        case .console:
            console?.bytesReceived(buffer)
        case .closed:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if state == .linked, let server, server.eventLoop === eventLoop {
            server.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure: stop reading the server while the client cannot take more.
        server?.setReadPaused(!context.channel.isWritable)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disconnected(reason: "client unexpected eof")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("client connection error: \(error)")
        context.close(promise: nil)
    }

    // MARK: Startup

    private func startupBytesReceived(_ buffer: ByteBuffer) {
        var buffer = buffer
        if var existing = startupBuffer {
            existing.writeBuffer(&buffer)
            buffer = existing
        }
        while state == .startup {
            let packet: StartupPacket?
            do {
                packet = try StartupPacketDecoder.decode(&buffer)
            } catch {
                switch error {
                case .oldProtocolVersion: return fatal("old V2 protocol not supported")
                case .invalidLayout: return fatal("invalid startup packet layout: expected terminator as last byte")
                case .badHeader(let bytes): return fatal("bad packet header: '\(MD5Password.hex(bytes))'")
                }
            }
            guard let packet else { break }
            switch packet {
            case .sslRequest, .gssEncRequest:
                if buffer.readableBytes > 0 {
                    return fatal(packet == .sslRequest ? "received unencrypted data after SSL request" : "received unencrypted data after GSSAPI encryption request")
                }
                if packet == .sslRequest && tlsActive {
                    return close(reason: "SSL req inside SSL")
                }
                let tlsContext = packet == .sslRequest && !isUnixSocket ? runtime.tls.withLockedValue({ $0.forClients }) : nil
                var answer = context!.channel.allocator.buffer(capacity: 1)
                answer.writeInteger(UInt8(ascii: tlsContext == nil ? "N" : "S"))
                context!.writeAndFlush(wrapOutboundOut(answer), promise: nil)
                if let tlsContext {
                    // From here on the client's bytes arrive decrypted, on this same EventLoop.
                    do {
                        try context!.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
                        tlsActive = true
                    } catch {
                        return close(reason: "failed to accept SSL")
                    }
                }
            case .cancel(let processID, let secretKey):
                cancelRequested(processID: processID, secretKey: secretKey)
                return
            case .startup(let minor, let parameters):
                startupParameters = parameters
                if buffer.readableBytes > 0 {
                    // A client may pipeline its first messages after the startup packet (e.g. a password).
                    startupBuffer = nil
                    startupReceived(minorVersion: minor)
                    if state == .authenticating { authBytesReceived(buffer) } else if state != .closed { queryBytesReceived(buffer) }
                    return
                }
                startupBuffer = nil
                startupReceived(minorVersion: minor)
                return
            }
        }
        startupBuffer = buffer.readableBytes > 0 ? buffer : nil
    }

    private func startupReceived(minorVersion: UInt16) {
        let snapshot = runtime.snapshot
        let config = snapshot.config
        if tlsActive {
            tlsDescription = (try? context?.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))?.tlsVersion.map(Self.describe) ?? "TLS"
        } else if !isUnixSocket, ["require", "verify-ca", "verify-full"].contains(config.clientTLSSSLMode) {
            return fatal("SSL required")
        }
        var unsupportedProtocolOptions: [String] = []
        var clientSettings: [(String, String)] = []
        let tracked = snapshot.trackedNames
        let ignored = snapshot.ignoredStartupParameters
        for (key, value) in startupParameters {
            switch key {
            case "user": user = value
            case "database": databaseName = value
            case "replication":
                return fatal("unsupported startup parameter: replication")
            case "options":
                let settings: [(String, String)]
                do {
                    settings = try StartupOptions.parse(value)
                } catch {
                    if ignored.contains("options") { continue }
                    return fatal("unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed")
                }
                for (name, setting) in settings {
                    if tracked.contains(name.lowercased()) {
                        clientSettings.append((name, setting))
                    } else if !ignored.contains(name) && !ignored.contains("options") {
                        logger.warning("unsupported startup parameter in options: \(name)=\(setting)")
                        return fatal("unsupported startup parameter in options: \(name)")
                    }
                }
            case let name where name.hasPrefix("_pq_."):
                unsupportedProtocolOptions.append(name)
            default:
                if tracked.contains(key.lowercased()) {
                    clientSettings.append((key, value))
                } else if !ignored.contains(key) {
                    logger.warning("unsupported startup parameter: \(key)=\(value)")
                    return fatal("unsupported startup parameter: \(key)")
                }
            }
        }
        if minorVersion > 0 || !unsupportedProtocolOptions.isEmpty {
            var negotiate = context!.channel.allocator.buffer(capacity: 64)
            negotiate.writeNegotiateProtocolVersion(newestMinor: 0, unrecognized: unsupportedProtocolOptions)
            context!.write(wrapOutboundOut(negotiate), promise: nil)
        }
        startupParameters = [] // read once; an idle client should not keep them
        guard !user.isEmpty else { return fatal("no username supplied") }
        if databaseName.isEmpty { databaseName = user }
        if config.applicationNameAddHost {
            let app = clientSettings.last(where: { $0.0 == "application_name" })?.1 ?? "app"
            clientSettings.append(("application_name", "\(app) - \(peerDescription)"))
        }
        for (name, value) in clientSettings { parameters.set(name, value) }
        updateLogPrefix()
        if config.logConnections {
            logger.info("login attempt: db=\(databaseName) user=\(user) tls=\(tlsDescription ?? "no") replication=no")
        }
        let isConsoleLogin = databaseName == "pgbouncer" || (databaseName == "shoal" && config.databases["shoal"] == nil)
        if !isConsoleLogin {
            // 08P01, as PgBouncer sends it. The console is exempt, so an operator can always get in.
            guard runtime.admitClient() else { return fatal("no more connections allowed (max_client_conn)") }
            counted = true
        }

        databaseEntry = isConsoleLogin ? nil : config.database(named: databaseName)
        state = .authenticating
        if isConsoleLogin, user == "pgbouncer", let peerUID, peerUID == geteuid() {
            // PgBouncer's rule: the same OS user on the Unix socket is admin without a password.
            logger.info("pgbouncer access from unix socket")
            return startConsole(access: .admin)
        }
        let secret = runtime.userList.secrets[user]
        let authUser = databaseEntry?.authUser ?? config.authUser
        if secret == nil, let database = databaseEntry, authUser != nil, config.authType != .trust, config.authType != .any {
            // Not in the auth file: ask the database (auth_query as auth_user), then authenticate.
            AuthQueryConnection.lookUp(user: user, database: database, runtime: runtime, on: eventLoop) { [weak self] outcome in
                guard let self, self.state == .authenticating else { return }
                switch outcome {
                case .found(let secret):
                    self.beginAuthentication(secret: secret ?? "", config: config)
                case .noSuchUser:
                    self.logger.info("no such user: \(self.user)")
                    self.fatal("no such user", code: "28000")
                case .failed(let message):
                    self.logger.error("\(message)")
                    self.fatal("bouncer config error")
                }
            }
            return
        }
        if config.authType == .trust, config.authFile != nil, secret == nil, authUser == nil {
            return fatal("\"trust\" authentication failed", code: "28000")
        }
        if secret == nil && config.authType != .trust && config.authType != .any {
            logger.info("no such user: \(user)")
        }
        beginAuthentication(secret: secret, config: config)
    }

    private func beginAuthentication(secret: String?, config: ShoalConfig) {
        authSecret = secret
        var machine = ClientAuthMachine(authType: config.authType, user: user, secret: secret,
                                        parsedVerifier: secret.flatMap(runtime.parsedVerifier),
                                        verifierCache: { [runtime] in runtime.scramVerifier(forPassword: $0) })
        handle(machine.start())
        auth = machine
        if state == .authenticating { context?.flush() }
    }

    // MARK: Authentication

    private func authBytesReceived(_ buffer: ByteBuffer) {
        var visitor = LoginVisitor()
        do {
            _ = try authScanner.scan(buffer, visitor: &visitor)
        } catch {
            return fatal("bad packet header")
        }
        for (type, body) in visitor.messages where state == .authenticating {
            guard type == FrontendMessage.password, var machine = auth else {
                if type == FrontendMessage.terminate { return close(reason: "client close request") }
                return fatal("client password pkt before startup packet")
            }
            let action = machine.passwordMessageReceived(body)
            auth = machine
            handle(action)
        }
        if state == .authenticating { context?.flush() }
    }

    private func handle(_ action: ClientAuthMachine.Action) {
        switch action {
        case .send(let bytes):
            context?.write(wrapOutboundOut(bytes), promise: nil)
        case .fail(let message, let code):
            logger.info("login failed: db=\(databaseName) user=\(user)")
            runtime.registries[loopIndex].authFailures &+= 1
            fatal(message, code: code)
        case .authenticated(let saslFinal, let scramKeys, let cleartext):
            auth = nil
            if let saslFinal { context?.write(wrapOutboundOut(saslFinal), promise: nil) }
            authenticated(scramKeys: scramKeys, cleartextPassword: cleartext)
        }
    }

    private func authenticated(scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?, cleartextPassword: String?) {
        let config = runtime.snapshot.config
        if databaseName == "pgbouncer" || (databaseName == "shoal" && config.databases["shoal"] == nil) {
            if config.adminUsers.contains(user) { return startConsole(access: .admin) }
            if config.statsUsers.contains(user) || config.authType == .any { return startConsole(access: .readOnly) }
            runtime.registries[loopIndex].authFailures &+= 1
            return fatal("not allowed")
        }
        guard let database = databaseEntry else {
            return fatal("no such database: \(databaseName)", code: "3D000")
        }
        if let refusal = runtime.lifecycle.withLockedValue({ $0.loginRefusal(database: databaseName) }) {
            return fatal(refusal)
        }
        let pool = runtime.pool(for: PoolKey(database: databaseName, user: database.user ?? user), database: database)
        self.pool = pool
        statsShard = pool.shards[loopIndex]
        statsShard!.counters.clientLogins &+= 1
        mode = pool.settings.mode
        detectsSessionState = mode != .session && config.pinSessionState
        preparedCapacity = config.maxPreparedStatements
        tracksPrepared = mode != .session && preparedCapacity > 0
        if !config.serverResetQuery.isEmpty {
            if config.serverResetQueryAlways { resetQueryOnRelease = config.serverResetQuery }
            if config.serverResetQueryAlways || mode == .session { resetQueryOnDisconnect = config.serverResetQuery }
        }
        let userEntry = config.users[user]
        queryTimeout = userEntry?.queryTimeout ?? config.queryTimeout
        idleTransactionTimeout = userEntry?.idleTransactionTimeout ?? config.idleTransactionTimeout
        clientIdleTimeout = userEntry?.clientIdleTimeout ?? config.clientIdleTimeout
        tracksActivity = queryTimeout > 0 || idleTransactionTimeout > 0 || clientIdleTimeout > 0
        if tracksActivity {
            runtime.sweepers[loopIndex].add(self)
            registeredWithSweeper = true
        }
        // Learn how to log in to servers as this user when the config alone cannot tell.
        if database.user == nil || database.user == user {
            if case .unknown = pool.serverSecret {
                if let scramKeys { pool.serverSecret = .scramKeys(clientKey: scramKeys.clientKey, serverKey: scramKeys.serverKey) }
                else if let cleartextPassword { pool.serverSecret = .password(cleartextPassword) }
                else if let authSecret, MD5Password.isStoredHash(authSecret) { pool.serverSecret = .md5Hash(authSecret) }
            } else if case .scramKeys = pool.serverSecret, let scramKeys {
                pool.serverSecret = .scramKeys(clientKey: scramKeys.clientKey, serverKey: scramKeys.serverKey)
            }
        }
        var ok = context!.channel.allocator.buffer(capacity: 9)
        ok.writeAuthenticationOk()
        context!.write(wrapOutboundOut(ok), promise: nil)
        if let welcome = pool.welcome {
            sendWelcome(welcome)
            if pending != nil { requestServer() }
        } else {
            state = .waitingForWelcome
            context?.flush()
            requestServer()
        }
    }

    private func sendWelcome(_ welcome: [(String, String)]) {
        guard let context else { return }
        loginTimeout?.cancel()
        loginTimeout = nil
        // Tracked parameters the client did not choose start at the server defaults.
        let tracked = runtime.snapshot.trackedNames
        for (name, value) in welcome where tracked.contains(name.lowercased()) {
            // Unset, or the same value spelled differently ("utf8"): take the server's canonical spelling.
            if let chosen = parameters[name], chosen.lowercased() != value.lowercased() { continue }
            parameters.set(name, value)
        }
        var out = context.channel.allocator.buffer(capacity: 512)
        for (name, value) in welcome {
            out.writeParameterStatus(name: name, value: parameters[name] ?? value)
        }
        let key = runtime.cancelRegistry.register(self)
        cancelKey = key
        out.writeBackendKeyData(processID: key.processID, secretKey: key.secretKey)
        out.writeReadyForQuery(.idle)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        state = .idle
    }

    // MARK: Queries

    private func queryBytesReceived(_ incoming: ByteBuffer) {
        var buffer = incoming
        // Bytes that continue a message begun in an earlier read (only complete statement messages get rewritten).
        var continuing = scanner.continuingBodyBytes ?? 0
        if tracksPrepared {
            if var carry = clientCarry {
                clientCarry = nil
                carry.writeBuffer(&buffer)
                buffer = carry
            }
            let cut = Self.completeMessagesLength(buffer, continuing: continuing, maxLength: scanner.maxMessageLength)
            if cut < buffer.readableBytes {
                clientCarry = buffer.getSlice(at: buffer.readerIndex + cut, length: buffer.readableBytes - cut)
                buffer = buffer.getSlice(at: buffer.readerIndex, length: cut)!
                guard cut > 0 else { return }
            }
        }
        let trackerBefore = tracker
        var visitor = ClientVisitor(tracker: tracker, detectsSessionState: detectsSessionState, tracksPrepared: tracksPrepared)
        let consumed: Int
        do {
            consumed = try scanner.scan(buffer, visitor: &visitor)
        } catch {
            guard case .badLength(_, _, let header) = error else { return fatal("bad packet header") }
            return fatal("bad packet header: '\(MD5Password.hex(header))'")
        }
        tracker = visitor.tracker
        if !visitor.effects.isEmpty {
            guard sessionEffectsReceived(visitor, trackerBefore: trackerBefore) else { return }
            if visitor.effects.deallocatesAll && tracksPrepared {
                statements.removeAll()
                if state == .linked { server?.statements.removeAll() } else { clearServerStatementsAtLink = true }
            }
        }
        if let statsShard {
            statsShard.counters.bytesReceived &+= UInt64(buffer.readableBytes)
            if visitor.parses > 0 || visitor.binds > 0 {
                statsShard.counters.clientParses &+= UInt64(visitor.parses)
                statsShard.counters.serverParses &+= UInt64(visitor.parses)
                statsShard.counters.binds &+= UInt64(visitor.binds)
            }
            if queryStartedAt == 0 && tracker.awaitingServer {
                queryStartedAt = NIODeadline.now().uptimeNanoseconds
                if transactionStartedAt == 0 { transactionStartedAt = queryStartedAt }
            }
        }
        var toForward = buffer
        if visitor.terminated {
            toForward = buffer.getSlice(at: buffer.readerIndex, length: consumed)!
        }
        if toForward.readableBytes > 0 {
            switch state {
            case .linked:
                if visitor.statementMessages > 0 {
                    sendRewritten(toForward, continuing: continuing, to: server!)
                } else {
                    unitsSent += visitor.units
                    server!.send(toForward, flush: server!.eventLoop !== eventLoop)
                }
                continuing = 0
            case .idle:
                pending = toForward
                pendingUnits = visitor.units
                pendingHasStatements = visitor.statementMessages > 0
                requestServer()
            case .waitingForServer, .waitingForWelcome:
                pendingUnits += visitor.units
                pendingHasStatements = pendingHasStatements || visitor.statementMessages > 0
                appendPending(toForward)
            case .startup, .authenticating, .console, .closed:
                break
            }
        }
        if visitor.terminated {
            close(reason: "client close request")
        }
    }

    // MARK: Prepared statements

    /// How much of `buffer` can go on now: everything up to a Query/Parse/Bind/Describe/Close (or a header) that
    /// is not complete in it. Other messages (CopyData, big Executes) stream through unbuffered.
    static func completeMessagesLength(_ buffer: ByteBuffer, continuing: Int, maxLength: Int) -> Int {
        let end = buffer.readableBytes
        var index = min(continuing, end)
        while index < end {
            guard end - index >= 5 else { return index }
            let type = buffer.getInteger(at: buffer.readerIndex + index, as: UInt8.self)!
            let length = Int(buffer.getInteger(at: buffer.readerIndex + index + 1, as: Int32.self)!)
            guard length >= 4 && length <= maxLength else { return end } // the scanner reports it
            switch type {
            case FrontendMessage.query, FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.describe, FrontendMessage.close:
                if end - index < 1 + length { return index }
            default:
                break
            }
            index += 1 + length
        }
        return end
    }

    /// Sends client bytes that hold Parse/Bind/Describe/Close messages, with statement names mapped to the
    /// server's and Parses injected where this server lacks a statement.
    private func sendRewritten(_ buffer: ByteBuffer, continuing: Int, to server: ServerConnection) {
        var out = ByteBuffer()
        out.reserveCapacity(buffer.readableBytes + 64)
        let end = buffer.readableBytes
        var index = min(continuing, end)
        var copyFrom = 0
        while index < end {
            guard end - index >= 5 else { break }
            let start = buffer.readerIndex + index
            let type = buffer.getInteger(at: start, as: UInt8.self)!
            let length = Int(buffer.getInteger(at: start + 1, as: Int32.self)!)
            let next = index + 1 + length
            if type == FrontendMessage.parse || type == FrontendMessage.bind || type == FrontendMessage.describe || type == FrontendMessage.close,
               next <= end {
                let body = buffer.getSlice(at: start + 5, length: length - 4)!
                switch statements.rewrite(type: type, body: body, batch: unitsSent, server: &server.statements,
                                          names: runtime.statementNames, capacity: preparedCapacity) {
                case .forward:
                    break
                case .replace(let messages, let expecting):
                    var before = buffer.getSlice(at: buffer.readerIndex + copyFrom, length: index - copyFrom)!
                    out.writeBuffer(&before)
                    for var message in messages { out.writeBuffer(&message) }
                    expectations.append(expecting)
                    copyFrom = next
                    // What the server really parses: Shoal's injected Parses count, a reuse of a prepared one does not.
                    let injected = expecting.filter { $0.type == UInt8(ascii: "1") && $0.drop }.count
                    statsShard?.counters.serverParses &+= UInt64(injected)
                }
            } else if type == FrontendMessage.query || type == FrontendMessage.sync || type == FrontendMessage.functionCall {
                unitsSent += 1
            }
            index = next
        }
        if copyFrom < end {
            var rest = buffer.getSlice(at: buffer.readerIndex + copyFrom, length: end - copyFrom)!
            out.writeBuffer(&rest)
        }
        server.send(out, flush: server.eventLoop !== eventLoop)
    }

    /// Server responses for rewritten messages: drop Shoal's own, forget statements whose Parse failed.
    private func responsesSettled(_ cancelled: [ExpectedResponse], on server: ServerConnection) {
        for expected in cancelled {
            if let serverName = expected.serverName { server.statements.remove(serverName) }
            if let clientName = expected.clientName { statements.parseFailed(clientName: clientName) }
        }
    }

    private func appendPending(_ buffer: ByteBuffer) {
        var buffer = buffer
        if pending == nil {
            pending = buffer
        } else {
            pending!.writeBuffer(&buffer)
        }
        // A client that keeps sending while it waits for a server is not read further until it has one:
        // what it sends is held here, and holding must stay bounded.
        if pending!.readableBytes > Self.pendingLimit, !readingPaused, let context {
            readingPaused = true
            context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
        }
    }

    private static let pendingLimit = 1 << 20
    private var readingPaused = false

    private func resumeReadingIfPaused() {
        guard readingPaused, let context else { return }
        readingPaused = false
        context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
    }

    private func requestServer() {
        guard let pool else { return }
        if state == .idle { state = .waitingForServer }
        let now = NIODeadline.now().uptimeNanoseconds
        let action = pool.withState { $0.leaseRequested(by: self, loop: loopIndex, now: now) }
        switch action {
        case .use(let server):
            link(to: server)
        case .connectAndWait(let loop):
            waitStartedAt = now
            ServerConnection.dial(pool: pool, runtime: runtime, on: runtime.loops[loop])
        case .wait:
            waitStartedAt = now
        case .fail(let message, let code):
            fatal(message, code: code)
        }
    }

    /// The pool hands this client a server (from any loop).
    func assign(_ server: ServerConnection) {
        if eventLoop.inEventLoop {
            link(to: server)
        } else {
            eventLoop.execute { self.link(to: server) }
        }
    }

    private func link(to server: ServerConnection) {
        switch state {
        case .waitingForWelcome:
            // The welcome was what this client waited for. If it already sent a request, this server serves
            // it; otherwise the server goes straight back.
            sendWelcome(pool?.welcome ?? [])
            guard state == .idle, pending != nil else { return server.returnToPool(reusable: true) }
            state = .waitingForServer
        case .waitingForServer:
            break
        case .startup, .authenticating, .idle, .linked, .console, .closed:
            // Not wanted any more (the client left or was served meanwhile).
            server.returnToPool(reusable: true)
            return
        }
        if pinSlotWanted && pending != nil && !claimPinSlot() {
            // The queued request would create session state past max_pinned_clients: answer it here.
            pending = nil
            tracker = TransactionTracker()
            state = .idle
            refuse("too many clients holding session state in this pool (max_pinned_clients)", code: "53400")
            resumeReadingIfPaused()
            return server.returnToPool(reusable: true)
        }
        state = .linked
        self.server = server
        server.attach(self)
        if let statsShard {
            let waited = waitStartedAt == 0 ? 0 : (NIODeadline.now().uptimeNanoseconds &- waitStartedAt) / 1000
            waitStartedAt = 0
            statsShard.counters.recordAssignment(waitMicros: waited)
        }
        serverScanner = FrameScanner()
        serverStreamPosition = 0
        swallowEnd = 0
        swallowReadyForQuery = 0
        currentSwallowed = false
        unitsSent = 0
        expectations.reset()
        dropContinuing = 0
        if clearServerStatementsAtLink {
            // The client's DEALLOCATE ALL / DISCARD ALL runs on this server with the pending bytes.
            clearServerStatementsAtLink = false
            server.statements.removeAll()
        }
        if let context, !context.channel.isWritable { server.setReadPaused(true) }
        if let sql = parameters.setStatement(from: server.parameters) {
            var set = ByteBuffer()
            set.writeQuery(sql)
            swallowReadyForQuery = 1
            server.send(set, flush: false)
            unitsSent += 1
            // Session settings are not reported back by PostgreSQL: the server now has the client's.
            server.parameters.adoptSession(of: parameters)
        }
        if let bytes = pending {
            pending = nil
            if pendingHasStatements && tracksPrepared {
                sendRewritten(bytes, continuing: 0, to: server)
                server.flush()
            } else {
                unitsSent += pendingUnits
                server.send(bytes, flush: true)
            }
            pendingUnits = 0
            pendingHasStatements = false
            resumeReadingIfPaused()
        } else {
            server.flush()
        }
    }

    // MARK: Server traffic

    /// Bytes from the linked server. `flush` is set when they came from another loop (no read-complete follows here).
    func serverDataReceived(_ buffer: ByteBuffer, from origin: ServerConnection, flush: Bool) {
        guard state == .linked, origin === server, let context else { return }
        var visitor = ServerVisitor(tracker: tracker, swallow: swallowReadyForQuery, currentSwallowed: currentSwallowed,
                                    position: serverStreamPosition, mode: mode, probing: probing,
                                    expectations: tracksPrepared ? expectations : nil)
        do {
            _ = try serverScanner.scan(buffer, visitor: &visitor)
        } catch {
            origin.close(reason: "bad packet from server")
            return fatal("server conn crashed?")
        }
        tracker = visitor.tracker
        if let settled = visitor.expectations {
            expectations = settled
            if !visitor.cancelled.isEmpty { responsesSettled(visitor.cancelled, on: origin) }
        }
        if let statsShard {
            statsShard.counters.bytesSent &+= UInt64(buffer.readableBytes)
            if visitor.readyCount > 0 { countCompleted(queries: visitor.readyCount, transactions: visitor.transactionsEnded, in: statsShard) }
        }
        swallowReadyForQuery = visitor.swallow
        currentSwallowed = visitor.currentSwallowed
        if let end = visitor.swallowEnd { swallowEnd = end }
        let start = serverStreamPosition
        serverStreamPosition += buffer.readableBytes
        var canonical: ByteBuffer?
        if let updates = visitor.parameterUpdates {
            for update in updates {
                origin.parameters.set(update.name, update.value)
                if !update.fromShoal {
                    parameters.set(update.name, update.value)
                } else if let believed = parameters[update.name], believed != update.value,
                          believed.lowercased() == update.value.lowercased() {
                    // Shoal's SET made PostgreSQL report its canonical spelling: pass it on, as PgBouncer does.
                    parameters.set(update.name, update.value)
                    if canonical == nil { canonical = context.channel.allocator.buffer(capacity: 64) }
                    canonical!.writeParameterStatus(name: update.name, value: update.value)
                }
            }
        }
        if let canonical {
            context.write(wrapOutboundOut(canonical), promise: nil)
            needsFlush = true
        }
        if visitor.setFailed {
            origin.close(reason: "invalid server parameter")
            return fatal("invalid server parameter")
        }
        // Skip what answered Shoal's own SET or probe, and the answers to Parse/Close messages Shoal injected.
        let skip = max(0, min(buffer.readableBytes, swallowEnd - start))
        if swallowReadyForQuery == 0 || skip < buffer.readableBytes {
            if visitor.drops.isEmpty && dropContinuing == 0 {
                let forward = skip == 0 ? buffer : buffer.getSlice(at: buffer.readerIndex + skip, length: buffer.readableBytes - skip)!
                if forward.readableBytes > 0 && swallowReadyForQuery == 0 {
                    context.write(wrapOutboundOut(forward), promise: nil)
                    needsFlush = true
                }
            } else if swallowReadyForQuery == 0 {
                writeSkipping(buffer, from: skip, drops: visitor.drops, context: context)
            }
        }
        if visitor.statementModeViolation {
            context.flush()
            server = nil
            origin.closeLent(reason: "transaction blocks not allowed in statement pooling mode")
            return fatal("transaction blocks not allowed in statement pooling mode")
        }
        if flush { flushToClient() }
        if visitor.probeFinished {
            probing = false
            probeAnswered(visitor.probeFailed ? nil : visitor.probeKinds)
        }
        guard (visitor.releasable || visitor.probeFinished) && mode != .session && tracker.isReleasable && scanner.atBoundary,
              !probing, state == .linked else { return }
        if probeNeeded {
            sendProbe()
        } else if pinned.isEmpty {
            releaseServer()
        }
    }

    // MARK: Session state

    /// Applies what the client's statements do to session state. Returns false when the statements were refused
    /// (max_pinned_clients) and answered here instead of being forwarded.
    private func sessionEffectsReceived(_ visitor: ClientVisitor, trackerBefore: TransactionTracker) -> Bool {
        let effects = visitor.effects
        if !effects.creates.isEmpty && !countedAsPinned {
            // The pin slot is claimed when the statement is about to reach a server (now, or at link).
            pinSlotWanted = true
            pinRequestRefusable = visitor.units == 1 && scanner.atBoundary && visitor.endsWithUnit && state != .waitingForServer
            if state == .linked && !claimPinSlot() {
                tracker = trackerBefore
                refuse("too many clients holding session state in this pool (max_pinned_clients)", code: "53400")
                return false
            }
        }
        if !effects.creates.isEmpty {
            suspected.formUnion(effects.creates)
            if pinStatement.isEmpty { pinStatement = visitor.stateStatement }
        }
        if !effects.creates.isEmpty || effects.mayRelease { probeNeeded = true }
        // Session SETs join the client's own parameters: re-applied on whatever server it gets next, and
        // RESET on a server before another client uses it.
        let tracked = runtime.snapshot.trackedNames
        for change in effects.settings {
            switch change {
            case .set(let name, let value):
                guard !tracked.contains(name) else { continue }
                parameters.setSession(name, rawValue: value)
                if state == .linked { server?.parameters.setSession(name, rawValue: value) }
            case .reset(let name):
                parameters.resetSession(name)
                if state == .linked { server?.parameters.resetSession(name) }
            case .resetAll:
                parameters.resetAllSession()
                if state == .linked { server?.parameters.resetAllSession() }
            }
        }
        return true
    }

    /// Counts this client as pinned if max_pinned_clients allows. A request that cannot be refused cleanly
    /// (a pipeline of several) goes through anyway, counted, with a warning.
    private func claimPinSlot() -> Bool {
        pinSlotWanted = false
        guard !countedAsPinned, let pool else { return true }
        if pool.withState({ $0.tryPin(limit: runtime.snapshot.config.maxPinnedClients) }) {
            countedAsPinned = true
            return true
        }
        guard pinRequestRefusable else {
            logger.warning("max_pinned_clients exceeded by a pipelined request that cannot be refused cleanly; letting it through")
            pool.withState { $0.pinHeld() }
            countedAsPinned = true
            return true
        }
        return false
    }

    /// An ErrorResponse and ReadyForQuery from Shoal itself, for a request it does not forward.
    private func refuse(_ message: String, code: String) {
        guard let context else { return }
        logger.warning("refused: \(message)")
        var out = context.channel.allocator.buffer(capacity: 96)
        out.writeErrorResponse(severity: "ERROR", code: code, message: message)
        out.writeReadyForQuery(state == .linked ? tracker.transactionStatus : .idle)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Asks the server which session state is still there, between two of the client's transactions.
    private func sendProbe() {
        guard let server else { return }
        probeNeeded = false
        probing = true
        swallowReadyForQuery = 1
        currentSwallowed = false
        var query = ByteBuffer()
        query.writeQuery(SessionStateProbe.sql)
        unitsSent += 1
        server.send(query, flush: true)
    }

    /// The probe's answer (nil if it failed: then what was suspected counts as held).
    private func probeAnswered(_ kinds: SessionStateKinds?) {
        let held = kinds ?? pinned.union(suspected)
        suspected = []
        if held.isEmpty {
            if countedAsPinned { pool?.withState { $0.unpinned() }; countedAsPinned = false }
            pinned = []
            pinnedSince = nil
            pinStatement = ""
            pinWarned = false
            return
        }
        if !countedAsPinned { pool?.withState { $0.pinHeld() }; countedAsPinned = true }
        if pinned.isEmpty {
            pinnedSince = NIODeadline.now()
            if !registeredWithSweeper {
                runtime.sweepers[loopIndex].add(self)
                registeredWithSweeper = true
            }
        }
        pinned = held
    }

    /// Forwards `buffer` from `from` on, leaving out the byte ranges in `drops` (and what is left of a dropped
    /// message that began in the previous read).
    private func writeSkipping(_ buffer: ByteBuffer, from: Int, drops: [(start: Int, length: Int)], context: ChannelHandlerContext) {
        let end = buffer.readableBytes
        var ranges = drops
        if dropContinuing > 0 {
            ranges.insert((0, dropContinuing), at: 0)
            dropContinuing = 0
        }
        var cursor = from
        for range in ranges {
            let dropStart = max(range.start, 0)
            let dropEnd = range.start + range.length
            if dropStart > cursor {
                context.write(wrapOutboundOut(buffer.getSlice(at: buffer.readerIndex + cursor, length: dropStart - cursor)!), promise: nil)
                needsFlush = true
            }
            if dropEnd > end { dropContinuing = dropEnd - end }
            cursor = max(cursor, min(dropEnd, end))
        }
        if cursor < end {
            context.write(wrapOutboundOut(buffer.getSlice(at: buffer.readerIndex + cursor, length: end - cursor)!), promise: nil)
            needsFlush = true
        }
    }

    /// ReadyForQuery messages arrived: `queries` requests and `transactions` transactions are complete.
    /// A pipelined batch is timed as a whole: its first answer carries the elapsed time, the rest count zero.
    private func countCompleted(queries: Int, transactions: Int, in shard: PoolStatsShard) {
        let now = NIODeadline.now().uptimeNanoseconds
        shard.counters.recordQuery(micros: queryStartedAt == 0 ? 0 : (now &- queryStartedAt) / 1000)
        for _ in 1..<max(1, queries) { shard.counters.recordQuery(micros: 0) }
        queryStartedAt = tracker.awaitingServer ? now : 0
        guard transactions > 0 else { return }
        shard.counters.recordTransaction(micros: transactionStartedAt == 0 ? 0 : (now &- transactionStartedAt) / 1000)
        for _ in 1..<transactions { shard.counters.recordTransaction(micros: 0) }
        transactionStartedAt = tracker.awaitingServer ? now : 0
    }

    func flushToClient() {
        if needsFlush {
            needsFlush = false
            context?.flush()
        }
    }

    private func releaseServer() {
        guard let server else { return }
        // Once unlinked, the server's read-complete no longer reaches us: flush what it sent now.
        flushToClient()
        self.server = nil
        state = .idle
        server.detach(self)
        giveBack(server, resetQuery: resetQueryOnRelease)
    }

    /// A clean server goes back to the pool, through the reset query when one applies.
    private func giveBack(_ server: ServerConnection, resetQuery: String?) {
        if let resetQuery {
            server.resetAndRelease(query: resetQuery, clearsSession: resetQuery == "DISCARD ALL" || resetQuery.uppercased().contains("RESET ALL"))
        } else {
            server.returnToPool(reusable: true)
        }
    }

    /// The linked server went away under this client.
    func linkedServerClosed(_ closed: ServerConnection) {
        guard server === closed else { return }
        server = nil
        closed.lentServerGone()
        fatal("server conn crashed?")
    }

    /// The pool could not log in to a server for this waiting client.
    func serverLoginFailed(message: String, code: String) {
        guard state == .waitingForServer || state == .waitingForWelcome else { return }
        _ = pool?.withState { $0.waiterLeft(self) }
        fatal(message, code: code)
    }

    /// query_wait_timeout passed in the queue.
    func waitTimedOut() {
        guard state == .waitingForServer || state == .waitingForWelcome else { return }
        fatal("query_wait_timeout")
    }

    // MARK: Timeouts

    /// Called by this loop's sweeper about three times a second.
    func checkTimeouts(now: NIODeadline) {
        if let pinnedSince, !pinWarned {
            let limit = runtime.snapshot.config.pinWarnTimeout
            let held = Double((now - pinnedSince).nanoseconds) / 1e9
            if limit > 0 && held >= limit {
                pinWarned = true
                logger.warning("client pinned to its server for \(Int(held))s holding \(pinned.names), since: \(pinStatement)")
            }
        }
        guard tracksActivity else { return }
        let quiet = Double((now - lastActivity).nanoseconds) / 1e9
        switch state {
        case .linked:
            if tracker.awaitingServer {
                if queryTimeout > 0 && quiet >= queryTimeout { serverSideTimeout("query timeout") }
            } else if tracker.transactionStatus != .idle {
                if idleTransactionTimeout > 0 && quiet >= idleTransactionTimeout { serverSideTimeout("idle transaction timeout") }
            } else if clientIdleTimeout > 0 && quiet >= clientIdleTimeout {
                fatal("client_idle_timeout")
            }
        case .idle:
            if clientIdleTimeout > 0 && quiet >= clientIdleTimeout { fatal("client_idle_timeout") }
        case .waitingForServer:
            if queryTimeout > 0 && quiet >= queryTimeout { fatal("query_timeout") }
        case .startup, .authenticating, .waitingForWelcome, .console, .closed:
            break
        }
    }

    /// A timeout while the server holds this client's query or transaction: the server cannot be reused.
    private func serverSideTimeout(_ reason: String) {
        if let server {
            self.server = nil
            server.detach(self)
            server.closeLent(reason: reason)
        }
        fatal(reason)
    }

    // MARK: Console

    private func startConsole(access: AdminSession.Access) {
        guard let context else { return }
        loginTimeout?.cancel()
        loginTimeout = nil
        let key = runtime.cancelRegistry.register(self)
        cancelKey = key
        state = .console
        let session = AdminSession(access: access, runtime: runtime, client: self, allocator: context.channel.allocator)
        console = session
        runtime.consoleSessions.withLockedValue { $0 += 1 }
        var out = context.channel.allocator.buffer(capacity: 256)
        out.writeAuthenticationOk()
        session.writeWelcome(into: &out, key: key)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Console output for this client (called on its loop by the session).
    func consoleWrite(_ buffer: ByteBuffer) {
        guard state == .console, let context else { return }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Ends a console session after a protocol error that PgBouncer answers by disconnecting.
    func consoleClose(reason: String) {
        close(reason: reason)
    }

    /// This client as a SHOW CLIENTS row. Runs on the client's loop.
    func consoleRow(nowWall: Date, nowMono: UInt64) -> ConnectionInfo? {
        let status: String
        switch state {
        case .linked: status = "active"
        case .idle: status = "idle"
        case .waitingForServer, .waitingForWelcome: status = "waiting"
        case .console: status = "active"
        case .startup, .authenticating, .closed: return nil
        }
        let requestAt = queryStartedAt != 0 ? queryStartedAt : nil
        return ConnectionInfo(
            type: "C", user: user, database: databaseName, state: status,
            addr: remoteHost, port: remotePort, localAddr: localHost, localPort: localPort,
            connectTime: connectedAtWall,
            requestTime: requestAt.map { nowWall.addingTimeInterval(-Double(nowMono &- $0) / 1e9) } ?? connectedAtWall,
            waitMicros: waitStartedAt != 0 && status == "waiting" ? (nowMono &- waitStartedAt) / 1000 : 0,
            closeNeeded: false, ptr: Self.pointerString(self), link: server.map(Self.pointerString) ?? "",
            remotePid: Int(peerPID), tls: tlsDescription ?? "", applicationName: parameters["application_name"] ?? "",
            id: id, poolKey: pool?.key, pinned: pinned.names)
    }

    /// PgBouncer prints the protocol as OpenSSL names it.
    static func describe(_ version: TLSVersion) -> String {
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }

    static func pointerString(_ object: AnyObject) -> String {
        "0x" + String(UInt(bitPattern: ObjectIdentifier(object).hashValue), radix: 16)
    }

    // MARK: Cancel

    private func cancelRequested(processID: Int32, secretKey: Int32) {
        // The canceller is closed silently whatever happens, like PgBouncer.
        let target = runtime.cancelRegistry.client(processID: processID, secretKey: secretKey)
        state = .closed
        context?.close(promise: nil)
        guard let target else { return }
        target.eventLoop.execute { target.forwardCancel() }
    }

    /// Sends a CancelRequest with the server's own key to the server serving this client right now.
    /// Aimed at a console session, it resumes a global PAUSE or SUSPEND, as in PgBouncer.
    private func forwardCancel() {
        if state == .console {
            runtime.controller?.resumeAll()
            return
        }
        guard state == .linked, let server, let key = server.backendKey, let pool else { return }
        CancelForwarder.send(processID: key.processID, secretKey: key.secretKey, database: pool.database, runtime: runtime, on: eventLoop)
    }

    // MARK: Closing

    /// Sends a FATAL ErrorResponse with PgBouncer's wording and closes.
    func fatal(_ message: String, code: String = "08P01") {
        guard state != .closed, let context else { return }
        if runtime.snapshot.config.logPoolerErrors {
            logger.warning("pooler error: \(message)")
        }
        var out = context.channel.allocator.buffer(capacity: 64 + message.utf8.count)
        out.writeErrorResponse(severity: "FATAL", code: code, message: message)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        close(reason: message)
    }

    private func close(reason: String) {
        guard state != .closed else { return }
        disconnected(reason: reason)
        context?.close(promise: nil)
    }

    /// Releases everything the client held; the server goes back clean or is closed.
    private func disconnected(reason: String) {
        let previous = state
        guard previous != .closed else { return }
        state = .closed
        runtime.registries[loopIndex].remove(self)
        if console != nil {
            console = nil
            runtime.consoleSessionEnded()
        }
        loginTimeout?.cancel()
        if registeredWithSweeper { runtime.sweepers[loopIndex].remove(self) }
        if counted { runtime.clientLeft(); counted = false }
        if countedAsPinned { pool?.withState { $0.unpinned() }; countedAsPinned = false }
        if let key = cancelKey { runtime.cancelRegistry.unregister(processID: key.processID, secretKey: key.secretKey) }
        if runtime.snapshot.config.logDisconnections && previous != .startup {
            logger.info("closing because: \(reason) (age=\((NIODeadline.now() - connectedAt).nanoseconds / 1_000_000_000)s)")
        }
        switch previous {
        case .waitingForServer, .waitingForWelcome:
            _ = pool?.withState { $0.waiterLeft(self) }
        case .linked:
            guard let server else { break }
            self.server = nil
            server.detach(self)
            if tracker.isReleasable && scanner.atBoundary && !probing {
                // A client that held (or may have created) session state leaves a server that DISCARD ALL
                // cleans: cursors, advisory locks, temp tables, prepared statements, LISTEN, settings.
                let holdsState = !pinned.isEmpty || probeNeeded || !parameters.session.isEmpty
                giveBack(server, resetQuery: holdsState ? "DISCARD ALL" : resetQueryOnDisconnect)
            } else {
                // A transaction or a query in flight: never hand that server to someone else.
                let why = tracker.awaitingServer ? "client disconnected with query in progress" : "client disconnect while server was not ready"
                server.closeLent(reason: why)
            }
        case .startup, .authenticating, .idle, .console, .closed:
            break
        }
    }

    private func updateLogPrefix() {
        let db = databaseName.isEmpty ? "(nodb)" : databaseName
        let name = user.isEmpty ? "(nouser)" : user
        logger[metadataKey: "prefix"] = "C-\(id): \(db)/\(name)@\(peerDescription)"
        logger[metadataKey: "client"] = "\(id)"
        logger[metadataKey: "addr"] = "\(peerDescription)"
        logger[metadataKey: "pool"] = "\(db)/\(name)"
    }
}

// MARK: - Visitors

/// Client → server: counts requests into the tracker and notices Terminate.
struct ClientVisitor: FrameVisitor {
    var tracker: TransactionTracker
    let detectsSessionState: Bool
    var terminated = false
    var parses = 0
    var binds = 0
    /// Requests that earn a ReadyForQuery (Query, Sync, FunctionCall), and whether the last message was one.
    var units = 0
    var endsWithUnit = false
    /// What the Query and Parse texts do to session state (only when detection is on).
    var effects = StatementEffects()
    /// The start of the first statement that created session state, for the pin log line.
    var stateStatement = ""

    let tracksPrepared: Bool
    /// Parse/Bind/Describe/Close messages seen (they need the prepared-statement rewrite).
    var statementMessages = 0

    init(tracker: TransactionTracker, detectsSessionState: Bool = false, tracksPrepared: Bool = false) {
        self.tracker = tracker
        self.detectsSessionState = detectsSessionState
        self.tracksPrepared = tracksPrepared
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        detectsSessionState && (type == FrontendMessage.query || type == FrontendMessage.parse)
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == FrontendMessage.terminate {
            terminated = true
            return false
        }
        tracker.clientSent(type: type)
        if type == FrontendMessage.parse { parses &+= 1 } else if type == FrontendMessage.bind { binds &+= 1 }
        if tracksPrepared && (type == FrontendMessage.parse || type == FrontendMessage.bind || type == FrontendMessage.describe
                              || type == FrontendMessage.close) {
            statementMessages &+= 1
        }
        endsWithUnit = type == FrontendMessage.query || type == FrontendMessage.sync || type == FrontendMessage.functionCall
        if endsWithUnit { units &+= 1 }
        return true
    }

    mutating func messageBody(type: UInt8, body: ByteBuffer) {
        let found = type == FrontendMessage.query ? SessionStateScanner.scanQuery(body) : SessionStateScanner.scanParse(body)
        guard !found.isEmpty else { return }
        if !found.creates.isEmpty && stateStatement.isEmpty {
            var text = body
            if type == FrontendMessage.parse { _ = text.readNullTerminatedString() }
            stateStatement = String((text.readNullTerminatedString() ?? "").prefix(200))
        }
        effects.creates.formUnion(found.creates)
        effects.mayRelease = effects.mayRelease || found.mayRelease
        effects.settings += found.settings
    }
}

/// Server → client: ReadyForQuery, ParameterStatus and COPY state; swallows the answer to Shoal's own SET.
struct ServerVisitor: FrameVisitor {
    struct ParameterUpdate { var name: String; var value: String; var fromShoal: Bool }

    var tracker: TransactionTracker
    /// ReadyForQuery messages of Shoal's SET still to come.
    var swallow: Int
    /// The swallowed answer is the session-state probe's: its DataRow is read, an error is not fatal.
    let probing: Bool
    /// With max_prepared_statements: the ParseComplete/CloseComplete answers Shoal awaits (nil when off).
    var expectations: ResponseExpectations?
    var drops: [(start: Int, length: Int)] = []
    var cancelled: [ExpectedResponse] = []
    var probeKinds: SessionStateKinds?
    var probeFailed = false
    var probeFinished = false
    /// The message whose body is awaited belongs to the swallowed answer (kept across reads by the client).
    var currentSwallowed: Bool
    let position: Int
    let mode: PoolMode
    var swallowEnd: Int?
    var releasable = false
    /// ReadyForQuery messages that answered the client (not Shoal's own SET), and how many of them said idle.
    var readyCount = 0
    var transactionsEnded = 0
    var setFailed = false
    var statementModeViolation = false
    var parameterUpdates: [ParameterUpdate]?

    init(tracker: TransactionTracker, swallow: Int, currentSwallowed: Bool, position: Int, mode: PoolMode, probing: Bool = false,
         expectations: ResponseExpectations? = nil) {
        self.probing = probing
        self.expectations = expectations
        self.tracker = tracker
        self.swallow = swallow
        self.currentSwallowed = currentSwallowed
        self.position = position
        self.mode = mode
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        type == BackendMessage.readyForQuery || type == BackendMessage.parameterStatus || (probing && type == BackendMessage.dataRow)
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        currentSwallowed = swallow > 0
        if swallow > 0 {
            if type == BackendMessage.errorResponse {
                if probing { probeFailed = true } else { setFailed = true }
            }
            if type == BackendMessage.readyForQuery {
                expectations?.readyForQueryReceived()
                swallow -= 1
                if swallow == 0 {
                    swallowEnd = position + offset + 1 + length
                    if probing { probeFinished = true }
                }
            }
            return true
        }
        if type == BackendMessage.copyInResponse { tracker.copyInStarted() }
        if expectations != nil {
            switch type {
            case UInt8(ascii: "1"), UInt8(ascii: "3"):
                if expectations!.completed(type: type) == .drop { drops.append((offset, 1 + length)) }
            case BackendMessage.errorResponse:
                cancelled += expectations!.errorReceived()
            case BackendMessage.readyForQuery:
                expectations!.readyForQueryReceived()
            default:
                break
            }
        }
        return true
    }

    mutating func messageBody(type: UInt8, body: ByteBuffer) {
        var body = body
        if type == BackendMessage.dataRow {
            if currentSwallowed && probing { probeKinds = SessionStateProbe.kinds(fromDataRow: body) }
            return
        }
        if type == BackendMessage.readyForQuery {
            guard !currentSwallowed else { return }
            guard let raw = body.readInteger(as: UInt8.self), let status = TransactionStatus(rawValue: raw) else { return }
            if tracker.readyForQueryReceived(status) { releasable = true }
            readyCount &+= 1
            if status == .idle { transactionsEnded &+= 1 }
            if mode == .statement && status != .idle { statementModeViolation = true }
        } else if type == BackendMessage.parameterStatus {
            guard let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() else { return }
            if parameterUpdates == nil { parameterUpdates = [] }
            parameterUpdates!.append(ParameterUpdate(name: name, value: value, fromShoal: currentSwallowed))
        }
    }
}

/// Linux's `struct ucred`, as SO_PEERCRED fills it.
struct PeerCredentials {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

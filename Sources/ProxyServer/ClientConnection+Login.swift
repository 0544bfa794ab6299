import Configuration
import Foundation
import Logging
import NIOCore
import NIOSSL
import Pooling
import PostgresWire

/// From the startup packet to the welcome: SSLRequest and TLS, startup parameters, authentication, the
/// console or the pool.
extension ClientConnection {
    // The login's fields live in `loginState` until the welcome; after it they read as empty.
    var startupBuffer: ByteBuffer? { get { loginState?.startupBuffer } set { loginState?.startupBuffer = newValue } }
    var auth: ClientAuthMachine? { get { loginState?.auth } set { loginState?.auth = newValue } }
    var authSecret: String? { get { loginState?.authSecret } set { loginState?.authSecret = newValue } }
    var authScanner: FrameScanner {
        get { loginState?.authScanner ?? FrameScanner(maxMessageLength: 65_536) }
        set { loginState?.authScanner = newValue }
    }
    var startupParameters: [(String, String)] { get { loginState?.startupParameters ?? [] } set { loginState?.startupParameters = newValue } }
    var databaseEntry: DatabaseEntry? { get { loginState?.databaseEntry } set { loginState?.databaseEntry = newValue } }
    var replicationParameters: [(String, String)] {
        get { loginState?.replicationParameters ?? [] }
        set { loginState?.replicationParameters = newValue }
    }

    // MARK: Startup

    func startupBytesReceived(_ buffer: ByteBuffer) {
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
            // Turned away at accept (login limits): an SSLRequest is declined as usual, then the startup packet
            // gets the FATAL, so the driver shows it.
            let refusal = loginState?.refusal
            switch packet {
            case .sslRequest, .gssEncRequest:
                if buffer.readableBytes > 0 {
                    return fatal(packet == .sslRequest ? "received unencrypted data after SSL request" : "received unencrypted data after GSSAPI encryption request")
                }
                if packet == .sslRequest && tlsActive {
                    return close(reason: "SSL req inside SSL")
                }
                let tlsContext = packet == .sslRequest && !isUnixSocket && refusal == nil ? runtime.tls.withLockedValue({ $0.forClients }) : nil
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
                if let refusal { return close(reason: refusal) }
                cancelRequested(processID: processID, secretKey: secretKey)
                return
            case .startup(let minor, let parameters):
                if let refusal { return fatal(refusal, code: "53300") }
                startupParameters = parameters
                if buffer.readableBytes > 0 {
                    // A client may pipeline its first messages after the startup packet (e.g. a password).
                    startupBuffer = nil
                    startupReceived(minorVersion: minor)
                    if state == .authenticating { authBytesReceived(buffer) } else if state == .pooled || state == .waitingForWelcome { clientBytesReceived(buffer) }
                    return
                }
                startupBuffer = nil
                startupReceived(minorVersion: minor)
                return
            }
        }
        startupBuffer = buffer.readableBytes > 0 ? buffer : nil
    }

    func startupReceived(minorVersion: UInt16) {
        // Fields are read through the snapshot, not a copy of the whole configuration (see `authenticated`).
        let snapshot = runtime.snapshot
        if tlsActive {
            tlsDescription = (try? context?.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))?.tlsVersion.map(Self.describe) ?? "TLS"
        } else if !isUnixSocket, ["require", "verify-ca", "verify-full"].contains(snapshot.config.clientTLSSSLMode) {
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
                // PostgreSQL's values: `database` is logical replication, a boolean true is physical.
                switch value.lowercased() {
                case "database": replication = .logical
                case "true", "on", "yes", "1": replication = .physical
                case "false", "off", "no", "0": replication = nil
                default:
                    return fatal("invalid value for parameter \"replication\": \"\(value)\"", code: "22023")
                }
            case "options":
                replicationParameters.append((key, value)) // passed verbatim to a replication client's server
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
                // Tracked names are lower case: look the name up as sent first, which spares lowercased()'s copy
                // for the usual lower-case spelling (a heap string past 15 bytes, e.g. application_name).
                if tracked.contains(key) || tracked.contains(key.lowercased()) {
                    clientSettings.append((key, value))
                    replicationParameters.append((key, value))
                } else if !ignored.contains(key) {
                    logger.warning("unsupported startup parameter: \(key)=\(value)")
                    return fatal("unsupported startup parameter: \(key)")
                }
            }
        }
        if minorVersion > 0 || !unsupportedProtocolOptions.isEmpty {
            var negotiate = context!.channel.allocator.buffer(capacity: 64)
            negotiate.writeNegotiateProtocolVersion(newestVersion: 3 << 16, unrecognized: unsupportedProtocolOptions)
            context!.write(wrapOutboundOut(negotiate), promise: nil)
        }
        startupParameters = [] // read once; an idle client should not keep them
        guard !user.isEmpty else { return fatal("no username supplied") }
        if databaseName.isEmpty { databaseName = user }
        if snapshot.config.applicationNameAddHost {
            let app = clientSettings.last(where: { $0.0 == "application_name" })?.1 ?? "app"
            clientSettings.append(("application_name", "\(app) - \(peerDescription)"))
        }
        for (name, value) in clientSettings { link.parameters.set(name, value) }
        if snapshot.config.logConnections {
            logger.info("login attempt: db=\(databaseName) user=\(user) tls=\(tlsDescription ?? "no") replication=\(replication?.loginLine ?? "no")")
        }
        let isConsoleLogin = snapshot.isConsoleDatabase(databaseName)
        if !isConsoleLogin && !counted {
            // 08P01, as PgBouncer sends it. The console is exempt, so an operator can always get in.
            return fatal("no more connections allowed (max_client_conn)")
        }

        databaseEntry = isConsoleLogin ? nil : snapshot.database(named: databaseName)
        state = .authenticating
        if isConsoleLogin, user == "pgbouncer", let peerUID, peerUID == geteuid() {
            // PgBouncer's rule: the same OS user on the Unix socket is admin without a password.
            logger.info("pgbouncer access from unix socket")
            return startConsole(access: .admin)
        }
        let secret = runtime.userList.secrets[user]
        let authType: AuthType
        switch hostBasedAuthType(snapshot) {
        case .refused: return
        case .proven: return beginAuthentication(secret: secret, authType: .trust, snapshot: snapshot)
        case .authType(let type): authType = type
        }
        let authUser = databaseEntry?.authUser ?? snapshot.config.authUser
        // The console has no entry of its own: a stats or admin user that exists only in the database is looked up
        // through auth_dbname's entry, as PgBouncer does.
        let lookupEntry = databaseEntry ?? (isConsoleLogin ? snapshot.config.authDbname.flatMap { snapshot.database(named: $0) } : nil)
        if secret == nil, let database = lookupEntry, authUser != nil, authType != .any {
            // Not in the auth file: ask the database (auth_query as auth_user), then authenticate. Under trust too:
            // trust skips the password, not the question whether the user exists (PgBouncer's rule).
            AuthLookups.lookUp(user: user, database: database, runtime: runtime, on: eventLoop) { [weak self] outcome in
                guard let self, self.state == .authenticating else { return }
                switch outcome {
                case .found(let secret):
                    self.beginAuthentication(secret: secret ?? "", authType: authType, snapshot: snapshot)
                case .noSuchUser:
                    self.logger.info("no such user: \(self.user)")
                    // Under trust there is no password to fail; otherwise the exchange runs against a throwaway
                    // secret and fails as a wrong password does, so an unknown name cannot be told from a real one.
                    if authType == .trust { return self.fatal("no such user", code: "28000") }
                    self.beginAuthentication(secret: nil, authType: authType, snapshot: snapshot)
                case .failed(let message):
                    self.logger.error("\(message)")
                    self.fatal("bouncer config error")
                }
            }
            return
        }
        if authType == .trust, snapshot.config.authFile != nil, secret == nil, authUser == nil {
            return fatal("\"trust\" authentication failed", code: "28000")
        }
        if secret == nil && authType != .trust && authType != .any {
            logger.info("no such user: \(user)")
        }
        beginAuthentication(secret: secret, authType: authType, snapshot: snapshot)
    }

    func beginAuthentication(secret: String?, authType: AuthType, snapshot: ConfigSnapshot) {
        authSecret = secret
        var machine = ClientAuthMachine(authType: authType, user: user, secret: secret,
                                        parsedVerifier: secret.flatMap(runtime.parsedVerifier),
                                        scramIterations: snapshot.config.scramIterations, salts: runtime.salts,
                                        verifierCache: { [runtime] in runtime.scramVerifier(user: $0, password: $1) })
        handle(machine.start())
        auth = machine
        if state == .authenticating { context?.flush() }
    }

    // MARK: Authentication

    func authBytesReceived(_ buffer: ByteBuffer) {
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

    func handle(_ action: ClientAuthMachine.Action) {
        switch action {
        case .send(let bytes):
            context?.write(wrapOutboundOut(bytes), promise: nil)
        case .fail(let message, let code):
            logger.info("login failed: db=\(databaseName) user=\(user)")
            runtime.registries[loopIndex].authFailures &+= 1
            if !isUnixSocket { runtime.loginFailed(from: remoteHost) }
            fatal(message, code: code)
        case .authenticated(let saslFinal, let scramKeys, let cleartext):
            auth = nil
            if let saslFinal { context?.write(wrapOutboundOut(saslFinal), promise: nil) }
            authenticated(scramKeys: scramKeys, cleartextPassword: cleartext)
        }
    }

    func authenticated(scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?, cleartextPassword: String?) {
        // Fields are read through the snapshot: a `let config = snapshot.config` copy would retain (and release)
        // every string and collection of the whole configuration on each login.
        let snapshot = runtime.snapshot
        if snapshot.isConsoleDatabase(databaseName) {
            if snapshot.config.adminUsers.contains(user) { return startConsole(access: .admin) }
            if snapshot.config.statsUsers.contains(user) || snapshot.config.authType == .any { return startConsole(access: .readOnly) }
            runtime.registries[loopIndex].authFailures &+= 1
            return fatal("not allowed")
        }
        guard let database = databaseEntry else {
            return fatal("no such database: \(databaseName)", code: "3D000")
        }
        if let refusal = runtime.lifecycle.withLockedValue({ $0.loginRefusal(database: databaseName, overTCP: !isUnixSocket) }) {
            return fatal(refusal)
        }
        if let refusal = runtime.clientLimits.admit(
            database: databaseName, user: user,
            databaseLimit: database.maxDbClientConnections ?? snapshot.config.maxDbClientConnections,
            userLimit: snapshot.config.users[user]?.maxUserClientConnections ?? snapshot.config.maxUserClientConnections) {
            return fatal(refusal)
        }
        countedPerDatabaseAndUser = true
        let key = PoolKey(database: databaseName, user: database.user ?? user, readOnly: readOnlyRoute)
        let pool = replication.map {
            runtime.replicationPool(key: key, client: id, database: database, replication: $0.startupValue, parameters: replicationParameters)
        } ?? runtime.pool(for: key, database: database)
        self.pool = pool
        statsShard = pool.shards[loopIndex]
        statsShard!.counters.clientLogins &+= 1
        let options = pool.linkOptions(user: user, snapshot: snapshot, statementNames: runtime.statementNames)
        let startupParameters = link.parameters
        link = LinkStateMachine(sharedOptions: options, now: NIODeadline.now().uptimeNanoseconds)
        linkSnapshot = snapshot
        link.parameters = startupParameters
        link.pinSlots = pool
        if options.value.tracksActivity {
            runtime.sweepers[loopIndex].add(self)
            registeredWithSweeper = true
        }
        // Learn how to log in to servers as this user when the config alone cannot tell.
        if database.user == nil || database.user == user {
            if case .unknown = pool.serverSecret {
                if let scramKeys { pool.serverSecret = .scramKeys(clientKey: scramKeys.clientKey, serverKey: scramKeys.serverKey) }
                else if let cleartextPassword { pool.serverSecret = .password(cleartextPassword) }
                else if let authSecret, MD5Password.isStoredHash(authSecret) { pool.serverSecret = .md5Hash(authSecret) }
            } else if case .scramKeys(let clientKey, _) = pool.serverSecret, let scramKeys, clientKey != scramKeys.clientKey {
                // The password changed (new keys): later server logins use the new ones. The same keys, as on
                // nearly every login, are left in place.
                pool.serverSecret = .scramKeys(clientKey: scramKeys.clientKey, serverKey: scramKeys.serverKey)
            }
        }
        var ok = context!.channel.allocator.buffer(capacity: 9)
        ok.writeAuthenticationOk()
        context!.write(wrapOutboundOut(ok), promise: nil)
        if let welcome = pool.welcome {
            sendWelcome(welcome)
        } else {
            state = .waitingForWelcome
            context?.flush()
            requestServer()
        }
    }

    func sendWelcome(_ welcome: Welcome?) {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: 512)
        // One snapshot, held in a local: `runtime.snapshot.config.x` on a temporary made the compiler copy (and
        // retain) the whole configuration to read one field of it.
        let snapshot = runtime.snapshot
        if let welcome {
            let tracked = snapshot.trackedNames
            let client = link.parameters
            link.parameters = welcome.welcomedParameters(client: client, tracked: tracked)
            welcome.writeStatus(into: &out, client: client, welcomed: link.parameters, tracked: tracked)
        }
        link.facts = welcome?.facts
        let key = runtime.registerCancelKey(for: self)
        cancelKey = key
        out.writeBackendKeyData(processID: key.processID, secretKey: key.secretKey)
        let notice = snapshot.config.loginNotifyMessage
        if !notice.isEmpty { out.writeErrorResponse(severity: "NOTICE", code: "00000", message: notice, notice: true) }
        out.writeReadyForQuery(.idle)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        state = .pooled
        endLoginState()
    }
}

import AdminConsole
import Configuration
import Foundation
import Logging
import NIOConcurrencyHelpers
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
    var context: ChannelHandlerContext?
    var state: State = .startup
    var logger: Logger
    let connectedAt = NIODeadline.now()
    /// Wall-clock time of connect and of the last request, for SHOW CLIENTS.
    let connectedAtWall = Date()
    var peerDescription = "unknown"
    var remoteHost = "unix"
    var remotePort = 0
    var localHost = "unix"
    var localPort = 0
    /// TLS terminated here (the client sent SSLRequest and got 'S'), and its protocol for logs and SHOW CLIENTS.
    var tlsActive = false
    var tlsDescription: String?
    var isUnixSocket = false
    /// The peer's uid and pid on a Unix socket (SO_PEERCRED): PgBouncer's passwordless console rule, remote_pid.
    var peerUID: UInt32?
    var peerPID: Int32 = 0

    // Login
    var startupBuffer: ByteBuffer?
    var auth: ClientAuthMachine?
    /// The secret the client was checked against (auth file or auth_query), for server logins as this user.
    var authSecret: String?
    var authScanner = FrameScanner(maxMessageLength: 65_536)
    var startupParameters: [(String, String)] = []
    var user = ""
    var databaseName = ""
    var databaseEntry: DatabaseEntry?
    var loginTimeout: Scheduled<Void>?
    var counted = false
    var cancelKey: (processID: Int32, secretKey: Int32)?

    // Pooling
    var pool: Pool?
    var mode: PoolMode = .session
    /// The tracked parameters this client expects on whatever server it uses.
    var parameters = ParameterSet()
    /// The server facts (in_hot_standby, server_version …) this client was last told.
    var facts: ServerFacts?
    var scanner = FrameScanner()
    var tracker = TransactionTracker()
    /// Session SETs sent to the server and not yet confirmed by it.
    var ledger = SettingsLedger()
    var server: ServerConnection?
    /// Shoal's SET replaying this client's settings is on the server; the client's bytes wait in `pending`
    /// until it is confirmed, so no statement runs with settings the server refused.
    var replayInFlight = false
    /// The error that refused the replay: it may arrive in an earlier read than the replay's ReadyForQuery.
    var replayError: ErrorFields?
    /// Cancel requests forwarded for this client whose connection to the server has not closed yet; the
    /// server is not released while one could still land on the next client's query.
    var cancelsInFlight = 0
    var releaseAfterCancel = false
    /// The server saw bytes that can never be completed cleanly (half a Terminate): never reuse it.
    var serverTainted = false
    /// A `set_config(…, false)` changed a setting Shoal cannot follow: the server is cleaned with DISCARD ALL
    /// when this client lets it go.
    var serverNeedsDiscard = false
    var pending: ByteBuffer?
    /// server_reset_query when server_reset_query_always is on; read once at login, off the per-transaction path.
    var resetQueryOnRelease: String?
    /// server_reset_query when this client's session ends (session mode, or _always).
    var resetQueryOnDisconnect: String?

    // Statistics: this loop's shard of the pool's counters, and the start of what is being timed (0 = none).
    var statsShard: PoolStatsShard?
    var queryStartedAt: UInt64 = 0
    var transactionStartedAt: UInt64 = 0
    var waitStartedAt: UInt64 = 0

    // Session state (transaction and statement modes): what the last probe found held on the server, whether
    // a statement since then may have created or dropped some, and the pool's count of pinned clients.
    var detectsSessionState = false
    var pinned: SessionStateKinds = []
    var suspected: SessionStateKinds = []
    var probeNeeded = false
    var probing = false
    var pinSlotWanted = false
    var pinRequestRefusable = false
    var countedAsPinned = false
    var pinnedSince: NIODeadline?
    var pinStatement = ""
    var pinWarned = false

    // Named prepared statements across server connections (transaction/statement modes, max_prepared_statements).
    var tracksPrepared = false
    /// In a writer pool of a routed database: a 25006 from the server gets its host checked at once.
    var watchesReadOnly = false
    var preparedCapacity = 0
    /// A transaction block whose server was lost, answered by Shoal until the client ends it. Boxed: rare, and
    /// every client would otherwise carry its ~140 bytes inline.
    var lostTransaction: LostTransactionBox?
    /// Accepted on readonly_listen_port: served by replicas.
    let readOnlyRoute: Bool
    var statements = ClientStatements()
    /// Client bytes held back because they end in an incomplete Query/Parse/Bind/Describe/Close.
    var clientCarry: ByteBuffer?
    /// Per link: Query/Sync/FunctionCall messages sent to the server (Shoal's own included), the responses
    /// Shoal expects for the Parse/Close messages it rewrote, and bytes of a dropped response still to come.
    var unitsSent = 0
    var expectations = ResponseExpectations()
    var dropContinuing = 0
    var clearServerStatementsAtLink = false
    var pendingUnits = 0
    var pendingHasStatements = false

    /// The console session, when this client logged in to the admin database.
    var console: AdminSession?
    var isConsole: Bool { console != nil }

    // Timeouts (seconds; 0 = off), resolved at login: the [users] value if set, else the global one.
    var queryTimeout = 0.0
    var idleTransactionTimeout = 0.0
    var clientIdleTimeout = 0.0
    var tracksActivity = false
    var lastActivity = NIODeadline.now()
    var registeredWithSweeper = false

    // The server side of the current link.
    var serverScanner = FrameScanner()
    var serverStreamPosition = 0
    /// ReadyForQuery messages of Shoal's own SET statement still to swallow.
    var swallowReadyForQuery = 0
    var swallowEnd = 0
    var currentSwallowed = false
    var needsFlush = false

    /// ClientConnection objects alive in this process (a leak check for the tests).
    static let alive = NIOLockedValueBox(0)

    deinit { Self.alive.withLockedValue { $0 -= 1 } }

    init(runtime: ShoalRuntime, eventLoop: EventLoop, readOnlyRoute: Bool = false) {
        Self.alive.withLockedValue { $0 += 1 }
        self.readOnlyRoute = readOnlyRoute
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
        self.context = nil
    }

    /// The context holds this handler and this handler held the context: let go, or every client ever
    /// connected would stay in memory.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("client connection error: \(error)")
        context.close(promise: nil)
    }

    // MARK: Queries

    func queryBytesReceived(_ incoming: ByteBuffer) {
        var buffer = incoming
        if lostTransaction != nil && state == .idle {
            guard let rest = answerLostTransaction(incoming) else { return }
            buffer = rest
        }
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
            if detectsSessionState {
                guard sessionEffectsReceived(visitor, trackerBefore: trackerBefore) else { return }
                if visitor.effects.opaqueSetting { serverNeedsDiscard = true }
            }
            if visitor.effects.deallocatesAll && tracksPrepared {
                statements.removeAll()
                if state == .linked { server?.statements.removeAllUncertain() } else { clearServerStatementsAtLink = true }
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
            // Half a Terminate already went on with the previous read: that server can never be given back.
            if visitor.terminateSplit { serverTainted = true }
            toForward = buffer.getSlice(at: buffer.readerIndex, length: visitor.terminateSplit ? 0 : consumed)!
        }
        if toForward.readableBytes > 0 {
            switch state {
            case .linked where replayInFlight:
                pendingUnits += visitor.units
                pendingHasStatements = pendingHasStatements || visitor.statementMessages > 0
                appendPending(toForward)
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

    func appendPending(_ buffer: ByteBuffer) {
        var buffer = buffer
        if pending == nil {
            pending = buffer
        } else {
            pending!.writeBuffer(&buffer)
        }
        // A client that keeps sending while it waits for a server is not read further until it has one:
        // what it sends is held here, and holding must stay bounded.
        if pending!.readableBytes > Self.pendingLimit { pauseReading(.pendingFull) }
    }

    static let pendingLimit = 1 << 20

    /// Why this client is not being read: its queued bytes are at their limit, or its server cannot take more.
    struct ReadPause: OptionSet {
        let rawValue: UInt8
        static let pendingFull = ReadPause(rawValue: 1)
        static let serverBusy = ReadPause(rawValue: 2)
    }
    var readPauses: ReadPause = []

    func pauseReading(_ reason: ReadPause) {
        let wasReading = readPauses.isEmpty
        readPauses.insert(reason)
        guard wasReading, let context else { return }
        context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
    }

    func resumeReading(_ reason: ReadPause) {
        guard readPauses.contains(reason) else { return }
        readPauses.remove(reason)
        guard readPauses.isEmpty, let context else { return }
        context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
    }

    func resumeReadingIfPaused() { resumeReading(.pendingFull) }

    /// The linked server's channel became (un)writable: what the client sends would otherwise pile up here.
    func serverWritabilityChanged(_ writable: Bool, from origin: ServerConnection) {
        guard origin === server, state == .linked else { return }
        if writable { resumeReading(.serverBusy) } else { pauseReading(.serverBusy) }
    }

    func requestServer() {
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

    func link(to server: ServerConnection) {
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
            ledger.reset()
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
            server.statements.removeAllUncertain()
        }
        if let context, !context.channel.isWritable { server.setReadPaused(true) }
        if let serverFacts = server.facts, serverFacts !== facts {
            // Another host (a promoted replica, another replica): tell the client what this one reports.
            let changed = serverFacts.differences(from: facts)
            facts = serverFacts
            if !changed.isEmpty, let context {
                var out = context.channel.allocator.buffer(capacity: 64 * changed.count)
                for (name, value) in changed { out.writeParameterStatus(name: name, value: value) }
                context.write(wrapOutboundOut(out), promise: nil)
                needsFlush = true
            }
        }
        if let sql = parameters.setStatement(from: server.parameters) {
            var set = ByteBuffer()
            set.writeQuery(sql)
            swallowReadyForQuery = 1
            unitsSent += 1
            // The server's view changes when PostgreSQL confirms the SET (its ReadyForQuery, in
            // serverDataReceived); until then the client's request waits, so it never runs with settings the
            // server refused.
            replayInFlight = true
            replayError = nil
            server.send(set, flush: true)
            return
        }
        sendPending(to: server)
    }

    /// Sends what the client queued while it had no server (or while Shoal's SET replay was on the server).
    func sendPending(to server: ServerConnection) {
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
        var visitor = ServerVisitor(tracker: tracker, ledger: ledger.isEmpty ? nil : ledger, swallow: swallowReadyForQuery,
                                    currentSwallowed: currentSwallowed,
                                    position: serverStreamPosition, mode: mode, probing: probing,
                                    expectations: tracksPrepared ? expectations : nil, watchesReadOnly: watchesReadOnly)
        do {
            _ = try serverScanner.scan(buffer, visitor: &visitor)
        } catch {
            origin.close(reason: "bad packet from server")
            return fatal("server conn crashed?")
        }
        if visitor.readOnlyRefusal { runtime.hosts.readOnlyRefusal(at: origin.hostAddress) }
        tracker = visitor.tracker
        if let updated = visitor.ledger { ledger = updated }
        if let resolution = visitor.resolution {
            // PostgreSQL confirmed these SETs (client and server now agree), or left them uncertain (the client
            // forgets them; the server's name is marked unknown, so it is set or reset before its next use).
            for change in resolution.confirmed {
                parameters.apply(change)
                origin.parameters.apply(change)
            }
            for change in resolution.uncertain { origin.parameters.markUncertain(change) }
        }
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
            // Only parameters a client can set are kept per client and replayed; the rest (in_hot_standby,
            // server_version, is_superuser …) are the server's, passed on as it reports them.
            for update in updates {
                guard !ParameterSet.serverOwned.contains(update.name.lowercased()) else {
                    // Forwarded as it came (in_hot_standby turning off at a promotion): the client has seen it.
                    if let current = origin.facts { origin.facts = current.with(update.name, update.value) }
                    if !update.fromShoal { facts = origin.facts }
                    continue
                }
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
        if replayInFlight, let error = visitor.setError { replayError = error }
        if replayInFlight && visitor.swallow == 0 {
            replayInFlight = false
            if let error = replayError {
                replayError = nil
                return replayRefused(error, by: origin)
            }
            origin.parameters.adoptSession(of: parameters)
            if flush { flushToClient() }
            sendPending(to: origin)
            return
        }
        if visitor.statementModeViolation {
            // The BEGIN's answer is not forwarded: the client's request gets the FATAL as its answer, as
            // PgBouncer's does, rather than a success followed by a closed connection.
            server = nil
            origin.closeLent(reason: "transaction blocks not allowed in statement pooling mode")
            return fatal("transaction blocks not allowed in statement pooling mode")
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
        if flush { flushToClient() }
        if visitor.probeFinished {
            probing = false
            probeAnswered(visitor.probeFailed ? nil : visitor.probeKinds)
        }
        if visitor.transactionsEnded > 0 && (mode == .session || !pinned.isEmpty) && !probing {
            // A session (or a pinned client) that was mid-transaction when its host left the rotation ends here.
            if endSessionIfHostLeft() { return }
        }
        guard (visitor.releasable || visitor.probeFinished), mode != .session, state == .linked,
              releaseBlocker == nil || releaseBlocker == .cancelInFlight else { return }
        if probeNeeded {
            sendProbe()
        } else if pinned.isEmpty {
            releaseServer()
        }
    }

    // MARK: Releasing the server

    /// Why the linked server may not go back to the pool now.
    enum ReleaseBlocker {
        /// Replies owed, a COPY running, a transaction or an extended batch open (`TransactionTracker`).
        case owesReplies
        /// The client stopped in the middle of a message the server has part of.
        case midMessage
        /// Shoal's own statement (settings replay, session-state probe) is on the server.
        case shoalStatement
        /// A cancel request for this client is still on its way to the server.
        case cancelInFlight
        /// The server saw bytes that can never be completed cleanly (half a Terminate).
        case tainted
    }

    /// The one answer to "may this server go back to the pool?" (nil: it may). Whether it *should* (pinned
    /// session state, session pooling) is the caller's question.
    var releaseBlocker: ReleaseBlocker? {
        if serverTainted { return .tainted }
        if !tracker.isReleasable { return .owesReplies }
        if !scanner.atBoundary { return .midMessage }
        if probing || swallowReadyForQuery > 0 || replayInFlight { return .shoalStatement }
        if cancelsInFlight > 0 { return .cancelInFlight }
        return nil
    }

    /// Forwards `buffer` from `from` on, leaving out the byte ranges in `drops` (and what is left of a dropped
    /// message that began in the previous read).
    func writeSkipping(_ buffer: ByteBuffer, from: Int, drops: [(start: Int, length: Int)], context: ChannelHandlerContext) {
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
    func countCompleted(queries: Int, transactions: Int, in shard: PoolStatsShard) {
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

    func releaseServer() {
        guard let server else { return }
        if releaseBlocker == .cancelInFlight {
            // A cancel on its way could land on the next client's query: keep the server until it is delivered.
            releaseAfterCancel = true
            return
        }
        resumeReading(.serverBusy)
        // Once unlinked, the server's read-complete no longer reaches us: flush what it sent now.
        flushToClient()
        self.server = nil
        state = .idle
        server.detach(self)
        if serverNeedsDiscard {
            serverNeedsDiscard = false
            giveBack(server, resetQuery: "DISCARD ALL")
        } else {
            giveBack(server, resetQuery: resetQueryOnRelease)
        }
    }

    /// A clean server goes back to the pool, through the reset query when one applies.
    func giveBack(_ server: ServerConnection, resetQuery: String?) {
        if let resetQuery {
            server.resetAndRelease(query: resetQuery)
        } else {
            server.returnToPool(reusable: true)
        }
    }

    /// A client that keeps its server between transactions (session pooling, or pinned by session state) and
    /// sits idle on a host its pool may no longer use — the old side of a failover, a lagging replica — is
    /// disconnected, so nobody writes to an old primary once the new one is known. Its session state lives on
    /// that server, so it cannot move; it reconnects and lands on a host that fits. Returns whether it ended.
    @discardableResult
    func endSessionIfHostLeft() -> Bool {
        guard state == .linked, let server, mode == .session || !pinned.isEmpty,
              releaseBlocker == nil || releaseBlocker == .cancelInFlight, !server.hostStillFits() else { return false }
        flushToClient()
        self.server = nil
        server.detach(self)
        server.closeLent(reason: "host left the pool's rotation")
        fatal("terminating connection because its server's host left the pool's rotation (failover or lag)", code: "57P01")
        return true
    }

    /// The linked server went away under this client.
    ///
    /// In transaction and statement pooling the client keeps its connection to Shoal: what it awaited is
    /// answered with an error (08006; a FATAL the server sent first, such as 57P01 at a shutdown, has already
    /// reached it) and ReadyForQuery, and a transaction block it was in stays failed, answered by Shoal
    /// (`LostTransaction`) until the client ends it with ROLLBACK or COMMIT, as PostgreSQL would answer a
    /// failed transaction. Nothing is replayed; a COMMIT in flight is reported as an error, its outcome unknown
    /// as with any lost connection. A client holding session state, in session pooling, or caught mid-message
    /// is disconnected as in PgBouncer: what it had on that server is gone and it must know.
    func linkedServerClosed(_ closed: ServerConnection) {
        guard server === closed else { return }
        server = nil
        resumeReading(.serverBusy)
        closed.lentServerGone()
        let owed = tracker.pendingReadyForQuery
        let inBlock = tracker.transactionStatus != .idle
        let openBatch = tracker.openExtendedBatch
        guard mode != .session, pinned.isEmpty, !probing, swallowReadyForQuery == 0, scanner.atBoundary, clientCarry == nil,
              owed > 0 || inBlock || openBatch, let context else {
            return fatal("server conn crashed?")
        }
        flushToClient()
        let message = "server conn crashed?"
        let detail = "The server connection was lost before the statement finished; Shoal did not retry it."
        if owed > 0 {
            var out = context.channel.allocator.buffer(capacity: 160)
            out.writeErrorResponse(severity: "ERROR", code: "08006", message: message, detail: detail)
            for _ in 0..<owed { out.writeReadyForQuery(inBlock ? .failed : .idle) }
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
        let lost = LostTransaction(inBlock: inBlock, errorSent: owed > 0, openBatch: openBatch, message: message, detail: detail)
        lostTransaction = lost.ended ? nil : LostTransactionBox(lost)
        logger.warning(inBlock ? "server connection lost inside a transaction: error sent, transaction failed, client kept"
                               : "server connection lost under a statement outside a transaction: error sent, client kept")
        tracker = TransactionTracker()
        ledger.reset()
        serverNeedsDiscard = false
        expectations.reset()
        state = .idle
        resumeReadingIfPaused()
    }

    /// Answers a client whose transaction was lost with its server, until it ends it; returns what is left of
    /// `incoming` for a server (nil when nothing is).
    func answerLostTransaction(_ incoming: ByteBuffer) -> ByteBuffer? {
        guard let lost = lostTransaction, let context else { return incoming }
        var out = context.channel.allocator.buffer(capacity: 128)
        let used = lost.state.respond(to: incoming, into: &out)
        if lost.state.ended { lostTransaction = nil }
        if out.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(out), promise: nil) }
        guard used < incoming.readableBytes else { return nil }
        return incoming.getSlice(at: incoming.readerIndex + used, length: incoming.readableBytes - used)
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
    func serverSideTimeout(_ reason: String) {
        if let server {
            self.server = nil
            server.detach(self)
            server.closeLent(reason: reason)
        }
        fatal(reason)
    }

    // MARK: Cancel

    func cancelRequested(processID: Int32, secretKey: Int32) {
        // The canceller is closed silently whatever happens, like PgBouncer.
        let target = runtime.cancelRegistry.client(processID: processID, secretKey: secretKey)
        state = .closed
        context?.close(promise: nil)
        guard let target else { return }
        target.eventLoop.execute { target.forwardCancel() }
    }

    /// Sends a CancelRequest with the server's own key to the server serving this client right now.
    /// Aimed at a console session, it resumes a global PAUSE or SUSPEND, as in PgBouncer.
    func forwardCancel() {
        if state == .console {
            runtime.controller?.resumeAll()
            return
        }
        guard state == .linked, let server, let key = server.backendKey else { return }
        cancelsInFlight += 1
        // A strong capture, held until the cancel connection closes (cancel_wait_timeout at most): a weak one
        // would give every client that ever cancelled a side table and slower reference counting.
        CancelForwarder.send(processID: key.processID, secretKey: key.secretKey, to: server.hostAddress, runtime: runtime, on: eventLoop) {
            self.cancelFinished()
        }
    }

    /// The server closed a cancel connection of this client's (it has signalled the backend), or it failed.
    func cancelFinished() {
        cancelsInFlight -= 1
        guard cancelsInFlight == 0, releaseAfterCancel else { return }
        releaseAfterCancel = false
        guard state == .linked, mode != .session, releaseBlocker == nil, !probeNeeded, pinned.isEmpty else { return }
        releaseServer()
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

    func close(reason: String) {
        guard state != .closed else { return }
        disconnected(reason: reason)
        context?.close(promise: nil)
    }

    /// Releases everything the client held; the server goes back clean or is closed.
    func disconnected(reason: String) {
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
            if releaseBlocker == nil {
                // A client that held (or may have created) session state leaves a server that DISCARD ALL
                // cleans: cursors, advisory locks, temp tables, prepared statements, LISTEN, settings.
                let holdsState = !pinned.isEmpty || probeNeeded || !parameters.session.isEmpty || serverNeedsDiscard
                giveBack(server, resetQuery: holdsState ? "DISCARD ALL" : resetQueryOnDisconnect)
            } else {
                // A transaction or a query in flight: never hand that server to someone else.
                let why = tracker.awaitingServer || replayInFlight ? "client disconnected with query in progress" : "client disconnect while server was not ready"
                server.closeLent(reason: why)
            }
        case .startup, .authenticating, .idle, .console, .closed:
            break
        }
    }

    func updateLogPrefix() {
        let db = databaseName.isEmpty ? "(nodb)" : databaseName
        let name = user.isEmpty ? "(nouser)" : user
        logger[metadataKey: "prefix"] = "C-\(id): \(db)/\(name)@\(peerDescription)"
        logger[metadataKey: "client"] = "\(id)"
        logger[metadataKey: "addr"] = "\(peerDescription)"
        logger[metadataKey: "pool"] = "\(db)/\(name)"
    }
}

/// Holds a client's `LostTransaction` out of line.
final class LostTransactionBox {
    var state: LostTransaction
    init(_ state: LostTransaction) { self.state = state }
}

import NIOCore
import PostgresWire

/// Events from the client's side: its bytes, the server the pool hands over, cancels, its departure, the clock.
extension LinkStateMachine {
    /// What to do with one read of the client's bytes.
    public struct ClientRead: Sendable {
        /// Bytes for the linked server now (as they came, or with statement names rewritten).
        public var toServer: ByteBuffer?
        /// Shoal's own answers for the client (a lost transaction's, a refusal), written before anything else.
        public var toClient: ByteBuffer?
        /// Queued: ask the pool for a server.
        public var requestServer = false
        /// The client sent Terminate: close it once `toServer` is written.
        public var terminated = false
        /// A request refused here (max_pinned_clients), for the log.
        public var refused: String?
        /// For the log: a pipelined request let past max_pinned_clients.
        public var warning: String?
        /// The client broke a rule that ends it (disable_pqexec); nothing of this read was forwarded.
        public var protocolRefusal: String?
        // Statistics.
        public var parses = 0
        public var binds = 0
        /// Parses Shoal injected where the server lacked a statement (what the server really parses).
        public var injectedParses = 0
    }

    /// The client sent `incoming` (any cut of its stream). `now` is uptime nanoseconds.
    public mutating func clientBytes(_ incoming: ByteBuffer, now: UInt64) throws(FrameScanError) -> ClientRead {
        var read = ClientRead()
        lastActivity = now
        var buffer = incoming
        if case .answering(var answering) = lost, phase == .idle {
            var out = ByteBuffer()
            let used = answering.respond(to: buffer, into: &out)
            lost = answering.ended ? nil : .answering(answering)
            if out.readableBytes > 0 { read.toClient = out }
            guard used < buffer.readableBytes else { return read }
            buffer.moveReaderIndex(forwardBy: used)
        }
        if var held = carry {
            carry = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        let trackerBefore = tracker
        var scan = ClientScan(tracker: tracker, detectsSessionState: options.detectsSessionState,
                              tracksPrepared: options.tracksPrepared, buffer: buffer, refusesSimpleQuery: options.refusesSimpleQuery)
        let consumed = try clientScanner.scan(buffer, visitor: &scan)
        if scan.simpleQuery {
            // PgBouncer's disable_pqexec: the client is ended, and nothing it sent in this read reaches the server.
            read.protocolRefusal = "PQexec disallowed"
            return read
        }
        if let (type, length) = scan.tooLongToHold {
            throw .tooLongToHold(type: type, length: length, limit: Self.heldStatementLimit)
        }
        tracker = scan.tracker
        if !scan.terminated && consumed < buffer.readableBytes {
            carry = buffer.getSlice(at: buffer.readerIndex + consumed, length: buffer.readableBytes - consumed)
        }
        read.terminated = scan.terminated
        read.parses = scan.parses
        read.binds = scan.binds
        if !scan.effects.isEmpty {
            if options.detectsSessionState {
                if let refusal = sessionEffects(of: scan, trackerBefore: trackerBefore, read: &read) {
                    var out = read.toClient ?? ByteBuffer()
                    out.writeErrorResponse(severity: "ERROR", code: "53400", message: refusal)
                    out.writeReadyForQuery(phase == .linked ? tracker.transactionStatus : .idle)
                    read.toClient = out
                    read.refused = refusal
                    return read
                }
            }
            if (scan.effects.deallocatesAll || scan.unscanned) && options.tracksPrepared {
                // DEALLOCATE ALL / DISCARD ALL end the client's statements too; a statement too long to scan
                // only makes the server's uncertain (each is closed and prepared again before its next use).
                if scan.effects.deallocatesAll { statements.removeAll() }
                if phase == .linked { server?.statements.removeAllUncertain() } else { clearServerStatementsAtLink = true }
            }
        }
        guard consumed > 0 else { return read }
        let bytes = consumed == buffer.readableBytes ? buffer : buffer.getSlice(at: buffer.readerIndex, length: consumed)!
        switch phase {
        case .linked where own != .replay:
            // Behind a probe the bytes may go on: its answer comes first and is swallowed.
            if scan.statementMessages.isEmpty {
                read.toServer = bytes
            } else {
                let rewritten = rewrite(bytes, messages: scan.statementMessages)
                read.toServer = rewritten.bytes
                read.injectedParses = rewritten.injectedParses
                if read.warning == nil { read.warning = rewritten.warning }
            }
            unitsSent &+= scan.units
        case .linked, .waitingForServer:
            queue(bytes, units: scan.units, statements: scan.statementMessages)
        case .idle:
            queue(bytes, units: scan.units, statements: scan.statementMessages)
            phase = .waitingForServer
            read.requestServer = true
        }
        return read
    }

    static let pinRefusal = "too many clients holding session state in this pool (max_pinned_clients)"

    /// Applies what the client's statements do to session state; returns the refusal when max_pinned_clients
    /// turns the request away (then nothing of it is forwarded).
    mutating func sessionEffects(of scan: ClientScan, trackerBefore: TransactionTracker, read: inout ClientRead) -> String? {
        let effects = scan.effects
        if !effects.creates.isEmpty && !holdsPinSlot {
            // The pin slot is claimed when the statement is about to reach a server (now, or at link).
            pinSlotWanted = true
            pinRequestRefusable = scan.units == 1 && clientScanner.atBoundary && scan.endsWithUnit && phase != .waitingForServer
            if phase == .linked && !claimPinSlot(warning: &read.warning) {
                tracker = trackerBefore
                return Self.pinRefusal
            }
        }
        if !effects.creates.isEmpty {
            suspected.formUnion(effects.creates)
            if pinStatement.isEmpty { pinStatement = scan.stateStatement }
        }
        if !effects.creates.isEmpty || effects.mayRelease { probeNeeded = true }
        if effects.opaqueSetting { needsDiscard = true }
        // Session SETs join the client's parameters once PostgreSQL confirms them (SettingsLedger): then they are
        // re-applied on whatever server it gets next, and RESET on a server before another client uses it.
        for (change, ahead) in scan.settingChanges {
            if case .set(let name, _) = change, options.trackedNames.contains(name) { continue }
            ledger.sent(change, unitsAhead: ahead)
        }
        return nil
    }

    /// Counts this client as pinned if max_pinned_clients allows. A request that cannot be refused cleanly
    /// (a pipeline of several) goes through anyway, counted, with a warning.
    mutating func claimPinSlot(warning: inout String?) -> Bool {
        pinSlotWanted = false
        guard !holdsPinSlot, let slots = pinSlots else { return true }
        if slots.tryPin(limit: options.maxPinnedClients) {
            holdsPinSlot = true
            return true
        }
        guard pinRequestRefusable else {
            warning = "max_pinned_clients exceeded by a pipelined request that cannot be refused cleanly; letting it through"
            slots.pinHeld()
            holdsPinSlot = true
            return true
        }
        return false
    }

    mutating func queue(_ bytes: ByteBuffer, units: Int, statements messages: [StatementMessage]) {
        var bytes = bytes
        if pending == nil {
            pending = bytes
            pendingStatements = messages
        } else {
            let offset = pending!.readableBytes
            for var message in messages {
                message.offset += offset
                message.unitsBefore += pendingUnits
                pendingStatements.append(message)
            }
            pending!.writeBuffer(&bytes)
        }
        pendingUnits += units
    }

    /// The queued bytes, ready for the linked server (rewritten where they hold statement messages).
    mutating func takePending(warning: inout String?) -> ByteBuffer? {
        guard let bytes = pending else { return nil }
        pending = nil
        let messages = pendingStatements
        pendingStatements = []
        var out = bytes
        if !messages.isEmpty {
            let rewritten = rewrite(bytes, messages: messages)
            out = rewritten.bytes
            if warning == nil { warning = rewritten.warning }
        }
        unitsSent &+= pendingUnits
        pendingUnits = 0
        return out
    }

    /// Maps the statement names in `bytes` to the server's and injects Parses where this server lacks a
    /// statement. Built only once a message needs it: unnamed statements (PHP's pg_query_params) go as they came.
    mutating func rewrite(_ bytes: ByteBuffer, messages: [StatementMessage]) -> (bytes: ByteBuffer, injectedParses: Int, warning: String?) {
        guard let names = options.statementNames, server != nil else { return (bytes, 0, nil) }
        let evictedBefore = statements.evicted
        statements.redefined = nil
        var out: ByteBuffer?
        var copyFrom = 0
        var injected = 0
        for message in messages {
            let start = bytes.readerIndex + message.offset
            let type = bytes.getInteger(at: start, as: UInt8.self)!
            let body = bytes.getSlice(at: start + 5, length: message.size - 5)!
            switch statements.rewrite(type: type, body: body, batch: unitsSent + message.unitsBefore, server: &server!.statements,
                                      names: names, capacity: options.preparedCapacity, limits: options.clientStatementLimits) {
            case .forward:
                continue
            case .replace(let replacement, let expecting):
                if out == nil { out = ByteBuffer(); out!.reserveCapacity(bytes.readableBytes + 64) }
                var before = bytes.getSlice(at: bytes.readerIndex + copyFrom, length: message.offset - copyFrom)!
                out!.writeBuffer(&before)
                for var piece in replacement { out!.writeBuffer(&piece) }
                expectations.append(expecting)
                copyFrom = message.offset + message.size
                injected += expecting.filter { $0.type == BackendMessage.parseComplete && $0.drop }.count
            }
        }
        guard var result = out else { return (bytes, 0, redefinitionWarning ?? evictionWarning(since: evictedBefore)) }
        if copyFrom < bytes.readableBytes {
            var rest = bytes.getSlice(at: bytes.readerIndex + copyFrom, length: bytes.readableBytes - copyFrom)!
            result.writeBuffer(&rest)
        }
        return (result, injected, redefinitionWarning ?? evictionWarning(since: evictedBefore))
    }

    /// A name defined twice in this read: PostgreSQL answers 42P05 and the session goes on; the log line is
    /// PgBouncer's, for those who grep for it.
    var redefinitionWarning: String? {
        statements.redefined.map { "prepared statement '\($0)' was already prepared" }
    }

    /// The once-per-client log line when the statement limits made this client's statements be forgotten.
    mutating func evictionWarning(since evictedBefore: Int) -> String? {
        guard statements.evicted > evictedBefore && !statementEvictionWarned else { return nil }
        statementEvictionWarned = true
        let limits = options.clientStatementLimits
        return "client keeps more prepared statements than max_client_prepared_statements (\(limits.count)) or "
            + "\(limits.bytes) bytes of them: forgetting the least recently used (said once per client)"
    }

    // MARK: Server assignment

    /// One step of the link: bytes for the client, then an action.
    public struct Step: Sendable {
        public var toClient: ByteBuffer?
        public var action: LinkAction = .none
        public var warning: String?
    }

    /// The pool is being asked for a server before the client sent anything (the welcome at first login).
    public mutating func waitForServer() {
        if phase == .idle { phase = .waitingForServer }
    }

    /// The pool handed this client a server whose session is `session`. `keep`: link even with nothing queued
    /// (a replication client's dedicated server, held from its welcome on).
    public mutating func serverAssigned(_ session: ServerSession, keep: Bool = false) -> Step {
        var step = Step()
        guard phase == .waitingForServer, pending != nil || keep else {
            // Not wanted any more (served meanwhile, or the welcome was all it waited for).
            if phase == .waitingForServer { phase = .idle }
            step.action = .giveBackUnused(session)
            return step
        }
        if pinSlotWanted && !claimPinSlot(warning: &step.warning) {
            // The queued request would create session state past max_pinned_clients: answer it here.
            pending = nil
            pendingUnits = 0
            pendingStatements = []
            tracker = TransactionTracker()
            ledger.reset()
            phase = .idle
            var out = ByteBuffer()
            out.writeErrorResponse(severity: "ERROR", code: "53400", message: Self.pinRefusal)
            out.writeReadyForQuery(.idle)
            step.toClient = out
            step.warning = "refused: \(Self.pinRefusal)"
            step.action = .giveBackUnused(session)
            return step
        }
        phase = .linked
        server = session
        serverScanner = FrameScanner()
        own = nil
        ownAnswersLeft = 0
        currentOwn = false
        ownError = nil
        unitsSent = 0
        expectations.reset()
        dropContinuing = 0
        if clearServerStatementsAtLink {
            // The client's DEALLOCATE ALL / DISCARD ALL runs on this server with the queued bytes.
            clearServerStatementsAtLink = false
            server!.statements.removeAllUncertain()
        }
        if let serverFacts = session.facts, serverFacts !== facts {
            // Another host (a promoted replica, another replica): tell the client what this one reports.
            let changed = serverFacts.differences(from: facts)
            facts = serverFacts
            if !changed.isEmpty {
                var out = ByteBuffer()
                for (name, value) in changed { out.writeParameterStatus(name: name, value: value) }
                step.toClient = out
            }
        }
        let difference = parameters.difference(from: session.parameters)
        if let sql = difference.sql {
            // The server's view changes when PostgreSQL confirms the SET; until then the client's request waits,
            // so it never runs with settings the server refused.
            step.action = .sendToServer(startOwn(.replay, sql: sql))
            return step
        }
        // Nothing to set: if the two sets are equal to the letter, the server keeps the client's storage, so the
        // next link of any client sharing it (a pool's clients share the welcome's) compares two pointers.
        if difference.toTheLetter && !parameters.sharesStorage(with: session.parameters) {
            server!.parameters.takeStorage(of: parameters)
        }
        if let bytes = takePending(warning: &step.warning) { step.action = .sendToServer(bytes) }
        return step
    }

    /// Shoal's own Query on the server, ahead of anything of the client's.
    mutating func startOwn(_ statement: OwnStatement, sql: String) -> ByteBuffer {
        own = statement
        ownAnswersLeft = 1
        currentOwn = false
        ownError = nil
        unitsSent &+= 1
        if statement == .probe { probeNeeded = false }
        var query = ByteBuffer()
        query.writeQuery(sql)
        return query
    }

    // MARK: Cancels

    /// A cancel request for the linked server is being sent; false when there is none to cancel.
    public mutating func cancelForwarded() -> Bool {
        guard phase == .linked else { return false }
        cancelsInFlight += 1
        return true
    }

    /// The cancel connection closed (the server signalled its backend), or failed.
    public mutating func cancelFinished() -> LinkAction {
        cancelsInFlight -= 1
        guard cancelsInFlight == 0, releaseAfterCancel else { return .none }
        releaseAfterCancel = false
        guard phase == .linked, wantsRelease, releaseBlocker == nil else { return .none }
        return release()
    }

    // MARK: Departure and the clock

    /// The client is gone (Terminate, EOF, an error, a timeout): what becomes of its server and queue place.
    public mutating func clientClosed() -> LinkAction {
        if holdsPinSlot {
            pinSlots?.unpinned()
            holdsPinSlot = false
        }
        switch phase {
        case .idle:
            return .none
        case .waitingForServer:
            phase = .idle
            return .leaveQueue
        case .linked:
            let blocker = releaseBlocker
            let session = abandonServer()!
            guard blocker == nil else {
                // A transaction or a query in flight: never hand that server to someone else.
                return .closeServer(reason: awaitingServer ? "client disconnected with query in progress"
                                                           : "client disconnect while server was not ready")
            }
            // A client that held (or may have created) session state leaves a server that DISCARD ALL cleans:
            // cursors, advisory locks, temp tables, prepared statements, LISTEN, settings.
            return .release(session, resetQuery: holdsSessionState ? "DISCARD ALL" : options.resetQueryOnDisconnect)
        }
    }

    /// About three times a second (while timeouts or a pin need watching). `now` is uptime nanoseconds.
    public mutating func tick(now: UInt64) -> LinkAction {
        if !pinned.isEmpty, !pinWarned, options.pinWarnTimeout > 0 {
            let since = pinnedSince ?? now
            pinnedSince = since
            let held = Double(now &- since) / 1e9
            if held >= options.pinWarnTimeout {
                pinWarned = true
                return .warnPinned(seconds: Int(held))
            }
        }
        guard options.tracksActivity else { return .none }
        if answeredSinceTick {
            answeredSinceTick = false
            lastActivity = max(lastActivity, now)
        }
        let quiet = Double(now &- lastActivity) / 1e9
        if phase == .linked && tracker.transactionStatus != .idle {
            let since = transactionSince ?? now
            transactionSince = since
            if options.transactionTimeout > 0 && Double(now &- since) / 1e9 >= options.transactionTimeout {
                return serverSideTimeout("transaction timeout")
            }
        } else {
            transactionSince = nil
        }
        switch phase {
        case .linked:
            if tracker.awaitingServer {
                if options.queryTimeout > 0 && quiet >= options.queryTimeout { return serverSideTimeout("query timeout") }
            } else if tracker.transactionStatus != .idle {
                if options.idleTransactionTimeout > 0 && quiet >= options.idleTransactionTimeout {
                    return serverSideTimeout("idle transaction timeout")
                }
            } else if options.clientIdleTimeout > 0 && quiet >= options.clientIdleTimeout {
                return .fatal(message: "client_idle_timeout", code: "08P01", serverReason: nil)
            }
        case .idle:
            if options.clientIdleTimeout > 0 && quiet >= options.clientIdleTimeout {
                return .fatal(message: "client_idle_timeout", code: "08P01", serverReason: nil)
            }
        case .waitingForServer:
            if options.queryTimeout > 0 && quiet >= options.queryTimeout {
                return .fatal(message: "query_timeout", code: "08P01", serverReason: nil)
            }
        }
        return .none
    }

    /// A timeout while the server holds this client's query or transaction: the server cannot be reused.
    mutating func serverSideTimeout(_ reason: String) -> LinkAction {
        _ = abandonServer()
        return .fatal(message: reason, code: "08P01", serverReason: reason)
    }

    /// A session (or pinned) client idle between transactions whose server may have to go (its host left
    /// the pool's rotation, or its configuration changed under server_fast_close): whether it can be ended
    /// cleanly now.
    public var mayEndSession: Bool {
        phase == .linked && (options.mode == .session || !pinned.isEmpty) && releaseBlockerAllowsEnd
    }

    /// No release blocker, or only a cancel in flight (which a closing server does not wait for).
    var releaseBlockerAllowsEnd: Bool {
        let blocker = releaseBlocker
        return blocker == nil || blocker == .cancelInFlight
    }

    /// Ends the link because the server's host left the rotation; the client is then closed.
    public mutating func endSessionForHost() -> LinkAction {
        _ = abandonServer()
        return .fatal(message: "terminating connection because its server's host left the pool's rotation (failover or lag)",
                      code: "57P01", serverReason: "host left the pool's rotation")
    }

    /// server_fast_close: the server's database entry changed (RECONNECT, a reload that moved it) and the session
    /// ends between its transactions rather than at its end, in PgBouncer's words; the client is then closed.
    public mutating func endSessionForConfigChange() -> LinkAction {
        _ = abandonServer()
        return .fatal(message: "database configuration changed", code: "08P01", serverReason: "database configuration changed")
    }
}

import NIOCore
import Pooling
import PostgresWire

/// Session state in transaction and statement modes: pins, the probe, session SETs, max_pinned_clients.
extension ClientConnection {
    // MARK: Session state

    /// Applies what the client's statements do to session state. Returns false when the statements were refused
    /// (max_pinned_clients) and answered here instead of being forwarded.
    func sessionEffectsReceived(_ visitor: ClientVisitor, trackerBefore: TransactionTracker) -> Bool {
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
        // Session SETs join the client's own parameters once PostgreSQL confirms them (SettingsLedger): then
        // they are re-applied on whatever server it gets next, and RESET on a server before another client uses it.
        let tracked = runtime.snapshot.trackedNames
        for (change, ahead) in visitor.settingChanges {
            if case .set(let name, _) = change, tracked.contains(name) { continue }
            ledger.sent(change, unitsAhead: ahead)
        }
        return true
    }

    /// PostgreSQL refused Shoal's SET replaying this client's settings on a server (a value valid where the
    /// client set it but not here). The client's queued request is answered with that error instead of running
    /// with other settings; the client takes the server's values so its next statement runs; the server, whose
    /// settings may be half-changed, has them reset before anyone uses it again.
    func replayRefused(_ error: ErrorFields, by server: ServerConnection) {
        let names = Set(parameters.session.keys).union(server.parameters.session.keys)
        for name in names where parameters.session[name] != server.parameters.session[name] {
            server.parameters.markUncertain(.reset(name: name))
        }
        parameters.adoptConfirmed(of: server.parameters)
        let message = "could not apply the session's settings on a server connection: \(error.message)"
        let units = tracker.pendingReadyForQuery
        guard !tracker.openExtendedBatch, scanner.atBoundary, clientCarry == nil, let context else {
            // Half a request queued: there is no clean point to answer at.
            self.server = nil
            server.detach(self)
            server.closeLent(reason: "client's settings refused")
            return fatal(message)
        }
        logger.warning("\(message)")
        pending = nil
        pendingUnits = 0
        pendingHasStatements = false
        tracker = TransactionTracker()
        ledger.reset()
        var out = context.channel.allocator.buffer(capacity: 128)
        for _ in 0..<max(units, 1) {
            out.writeErrorResponse(severity: "ERROR", code: error.code, message: message)
            out.writeReadyForQuery(.idle)
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        resumeReadingIfPaused()
        releaseServer()
    }

    /// Counts this client as pinned if max_pinned_clients allows. A request that cannot be refused cleanly
    /// (a pipeline of several) goes through anyway, counted, with a warning.
    func claimPinSlot() -> Bool {
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
    func refuse(_ message: String, code: String) {
        guard let context else { return }
        logger.warning("refused: \(message)")
        var out = context.channel.allocator.buffer(capacity: 96)
        out.writeErrorResponse(severity: "ERROR", code: code, message: message)
        out.writeReadyForQuery(state == .linked ? tracker.transactionStatus : .idle)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Asks the server which session state is still there, between two of the client's transactions.
    func sendProbe() {
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
    func probeAnswered(_ kinds: SessionStateKinds?) {
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

}

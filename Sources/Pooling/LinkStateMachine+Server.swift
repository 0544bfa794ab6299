import NIOCore
import PostgresWire

/// Events from the server's side: its bytes, and its loss.
extension LinkStateMachine {
    /// Which bytes of a server read go on to the client.
    public enum Forward: Sendable, Equatable {
        case all
        case none
        /// These byte ranges of the read, in order (Shoal's own answers left out).
        case ranges([Range<Int>])
    }

    /// What to do with one read of the server's bytes.
    public struct ServerRead: Sendable {
        /// Written to the client before the forwarded bytes (canonical ParameterStatus spellings).
        public var toClientFirst: ByteBuffer?
        public var forward: Forward = .none
        /// Written to the client after the forwarded bytes (the answers to a request whose settings were refused).
        public var toClientAfter: ByteBuffer?
        public var action: LinkAction = .none
        /// The server answered 25006 (read-only): its host should be checked.
        public var readOnlyRefusal = false
        /// ReadyForQuery messages that answered the client, and how many of them ended a transaction.
        public var readyCount = 0
        public var transactionsEnded = 0
        /// For the log.
        public var warning: String?
        /// The client became pinned (it needs the clock for pin_warn_timeout).
        public var becamePinned = false
    }

    /// The linked server sent `buffer`. `hostStillFits` is asked only for sessions and pinned clients at the end
    /// of a transaction (their server stays with them, so a host that left the rotation must be noticed here).
    public mutating func serverBytes(_ buffer: ByteBuffer, hostStillFits: () -> Bool) -> ServerRead {
        var read = ServerRead()
        guard phase == .linked, server != nil else { return read }
        let ownAtStart = ownAnswersLeft > 0
        var scan = ServerScan(tracker: tracker, ledger: ledger.isEmpty ? nil : ledger, swallow: ownAnswersLeft, currentOwn: currentOwn,
                              mode: options.mode, probing: own == .probe, expectations: options.tracksPrepared ? expectations : nil,
                              watchesReadOnly: options.watchesReadOnly)
        do {
            _ = try serverScanner.scan(buffer, visitor: &scan)
        } catch {
            _ = abandonServer()
            read.action = .fatal(message: "server conn crashed?", code: "08P01", serverReason: "bad packet from server")
            return read
        }
        if scan.malformedReady {
            // Found by fuzz-link-raw: a 255-byte "ReadyForQuery" read as idle by its first byte let the server go
            // back mid-stream. Nothing of this read is forwarded.
            _ = abandonServer()
            read.action = .fatal(message: "server conn crashed?", code: "08P01", serverReason: "bad packet from server")
            return read
        }
        read.readOnlyRefusal = scan.readOnlyRefusal
        read.readyCount = scan.readyCount
        read.transactionsEnded = scan.transactionsEnded
        if scan.readyCount > 0 && options.tracksActivity { answeredSinceTick = true }
        tracker = scan.tracker
        if let updated = scan.ledger { ledger = updated }
        if let resolution = scan.resolution {
            // Confirmed: client and server now agree. Uncertain: the client forgets it; the server's name is marked
            // unknown, so it is set or reset before its next use.
            for change in resolution.confirmed {
                parameters.apply(change)
                server!.parameters.apply(change)
            }
            for change in resolution.uncertain { server!.parameters.markUncertain(change) }
        }
        if let settled = scan.expectations {
            expectations = settled
            for expected in scan.cancelled {
                // Responses that will never come: the Parses failed or never ran.
                if let serverName = expected.serverName { server!.statements.remove(serverName) }
                if let clientName = expected.clientName { statements.parseFailed(clientName: clientName) }
            }
        }
        ownAnswersLeft = scan.swallow
        currentOwn = scan.currentOwn
        if let updates = scan.parameterUpdates { read.toClientFirst = parametersReported(updates) }
        if own == .replay {
            if let error = scan.ownError { ownError = error }
            guard ownAnswersLeft == 0 else { return read }
            own = nil
            if let error = ownError {
                ownError = nil
                return replayRefused(error, read: read)
            }
            server!.parameters.adoptSession(of: parameters)
            read.forward = forward(length: buffer.readableBytes, ownAtStart: true, ownEnd: scan.ownEnd, drops: scan.drops)
            if let bytes = takePending(warning: &read.warning) { read.action = .sendToServer(bytes) }
            return read
        }
        if scan.statementModeViolation {
            // The BEGIN's answer is not forwarded: the request gets the FATAL as its answer, as PgBouncer's does,
            // rather than a success followed by a closed connection.
            _ = abandonServer()
            let message = "transaction blocks not allowed in statement pooling mode"
            read.action = .fatal(message: message, code: "08P01", serverReason: message)
            return read
        }
        read.forward = ownAnswersLeft > 0 ? .none
            : forward(length: buffer.readableBytes, ownAtStart: ownAtStart, ownEnd: scan.ownEnd, drops: scan.drops)
        var probeFinished = false
        if own == .probe && scan.ownFinished {
            own = nil
            probeFinished = true
            let wasPinned = !pinned.isEmpty
            probeAnswered(scan.probeFailed ? nil : scan.probeKinds)
            read.becamePinned = !wasPinned && !pinned.isEmpty
        }
        if scan.transactionsEnded > 0 && own == nil && mayEndSession && !hostStillFits() {
            // A session (or a pinned client) that was mid-transaction when its host left the rotation ends here.
            read.action = endSessionForHost()
            return read
        }
        // A server in the middle of a message (an asynchronous one split across reads, or worse) is not released:
        // `releaseBlocker` says `serverMidMessage` until the message ends.
        guard scan.releasable || probeFinished, options.mode != .session, phase == .linked, releaseBlockerAllowsEnd else { return read }
        if probeNeeded {
            read.action = .sendToServer(startOwn(.probe, sql: SessionStateProbe.sql))
        } else if pinned.isEmpty {
            if scan.strayAfterReady {
                // The server went on after its last ReadyForQuery with something nobody asked for (PostgreSQL
                // never does; a broken proxy or server might): the next client would read it. The client has all
                // its answers; the server goes.
                _ = abandonServer()
                read.action = .closeServer(reason: "idle server got dirty")
            } else {
                read.action = release()
            }
        }
        return read
    }

    /// ParameterStatus from the linked server; returns what the client must be told on top of what is forwarded.
    mutating func parametersReported(_ updates: [ServerScan.ParameterUpdate]) -> ByteBuffer? {
        var canonical: ByteBuffer?
        for update in updates {
            // Only parameters a client can set are kept per client and replayed; the rest (in_hot_standby,
            // server_version, is_superuser …) are the server's, passed on as it reports them.
            guard !ParameterSet.serverOwned.contains(update.name.lowercased()) else {
                server!.facts = server!.facts?.with(update.name, update.value)
                if !update.fromShoal { facts = server!.facts }
                continue
            }
            server!.parameters.set(update.name, update.value)
            if !update.fromShoal {
                parameters.set(update.name, update.value)
            } else if let believed = parameters[update.name], believed != update.value, believed.lowercased() == update.value.lowercased() {
                // Shoal's SET made PostgreSQL report its canonical spelling: pass it on, as PgBouncer does.
                parameters.set(update.name, update.value)
                if canonical == nil { canonical = ByteBuffer() }
                canonical!.writeParameterStatus(name: update.name, value: update.value)
            }
        }
        return canonical
    }

    /// The byte ranges of a read that are the client's: after the own statement's answer, without the answers
    /// to Parse/Close messages Shoal injected (and what is left of one that began in the previous read).
    mutating func forward(length: Int, ownAtStart: Bool, ownEnd: Int?, drops: [(start: Int, length: Int)]) -> Forward {
        let end = ownEnd ?? length
        let skip = ownAtStart ? max(0, min(end, length)) : 0
        if ownAtStart && end > length {
            // The own answer's ReadyForQuery ends in the next read: its last bytes are skipped there.
            dropContinuing = end - length
            return .none
        }
        if drops.isEmpty && dropContinuing == 0 {
            if skip == 0 { return .all }
            return skip < length ? .ranges([skip..<length]) : .none
        }
        var ranges: [Range<Int>] = []
        var all = drops
        if dropContinuing > 0 {
            all.insert((0, dropContinuing), at: 0)
            dropContinuing = 0
        }
        var cursor = skip
        for drop in all {
            let dropStart = max(drop.start, 0)
            let dropEnd = drop.start + drop.length
            if dropStart > cursor { ranges.append(cursor..<min(dropStart, length)) }
            if dropEnd > length { dropContinuing = dropEnd - length }
            cursor = max(cursor, min(dropEnd, length))
        }
        if cursor < length { ranges.append(cursor..<length) }
        return ranges.isEmpty ? .none : .ranges(ranges)
    }

    /// PostgreSQL refused Shoal's SET replaying this client's settings (a value valid where the client set it
    /// but not here). The client's queued request is answered with that error instead of running with other
    /// settings; the client takes the server's values so its next statement runs; the server, whose settings may
    /// be half-changed, has them reset before anyone uses it again.
    mutating func replayRefused(_ error: ErrorFields, read: ServerRead) -> ServerRead {
        var read = read
        read.forward = .none
        let names = Set(parameters.session.keys).union(server!.parameters.session.keys)
        for name in names where parameters.session[name] != server!.parameters.session[name] {
            server!.parameters.markUncertain(.reset(name: name))
        }
        parameters.adoptConfirmed(of: server!.parameters)
        let message = "could not apply the session's settings on a server connection: \(error.message)"
        let units = tracker.pendingReadyForQuery
        guard !tracker.openExtendedBatch, clientScanner.atBoundary, carry == nil else {
            // Half a request queued: there is no clean point to answer at.
            _ = abandonServer()
            read.action = .fatal(message: message, code: "08P01", serverReason: "client's settings refused")
            return read
        }
        read.warning = message
        pending = nil
        pendingUnits = 0
        pendingStatements = []
        tracker = TransactionTracker()
        ledger.reset()
        var out = ByteBuffer()
        for _ in 0..<max(units, 1) {
            out.writeErrorResponse(severity: "ERROR", code: error.code, message: message)
            out.writeReadyForQuery(.idle)
        }
        read.toClientAfter = out
        read.action = release()
        return read
    }

    /// The probe's answer (nil if it failed: then what was suspected counts as held).
    mutating func probeAnswered(_ kinds: SessionStateKinds?) {
        let held = kinds ?? pinned.union(suspected)
        suspected = []
        if held.isEmpty {
            if holdsPinSlot {
                pinSlots?.unpinned()
                holdsPinSlot = false
            }
            pinned = []
            pinnedSince = nil
            pinStatement = ""
            pinWarned = false
            return
        }
        if !holdsPinSlot {
            pinSlots?.pinHeld()
            holdsPinSlot = true
        }
        // pinnedSince is taken at the next tick (no clock here).
        if pinned.isEmpty { pinnedSince = nil }
        pinned = held
    }

    // MARK: Loss

    /// The linked server went away under this client.
    ///
    /// In transaction and statement pooling the client keeps its connection to Shoal: what it awaited is
    /// answered with an error (08006; a FATAL the server sent first, such as 57P01 at a shutdown, has already
    /// reached it) and ReadyForQuery, and a transaction block it was in stays failed, answered by Shoal
    /// (`LostTransaction`) until the client ends it with ROLLBACK or COMMIT, as PostgreSQL would answer a
    /// failed transaction. Nothing is replayed; a COMMIT in flight is reported as an error, its outcome unknown
    /// as with any lost connection. A client holding session state, in session pooling, or caught mid-message
    /// is disconnected as in PgBouncer: what it had on that server is gone and it must know.
    public mutating func serverLost() -> Step {
        var step = Step()
        guard phase == .linked else { return step }
        _ = abandonServer()
        let owed = tracker.pendingReadyForQuery
        let inBlock = tracker.transactionStatus != .idle
        let openBatch = tracker.openExtendedBatch
        guard options.mode != .session, pinned.isEmpty, own == nil, clientScanner.atBoundary, carry == nil, pending == nil,
              owed > 0 || inBlock || openBatch else {
            step.action = .fatal(message: "server conn crashed?", code: "08P01", serverReason: nil)
            return step
        }
        let message = "server conn crashed?"
        let detail = "The server connection was lost before the statement finished; Shoal did not retry it."
        if owed > 0 {
            var out = ByteBuffer()
            out.writeErrorResponse(severity: "ERROR", code: "08006", message: message, detail: detail)
            for _ in 0..<owed { out.writeReadyForQuery(inBlock ? .failed : .idle) }
            step.toClient = out
        }
        let answered = LostTransaction(inBlock: inBlock, errorSent: owed > 0, openBatch: openBatch, message: message, detail: detail)
        lost = answered.ended ? nil : .answering(answered)
        tracker = TransactionTracker()
        ledger.reset()
        needsDiscard = false
        expectations.reset()
        step.action = .serverLostAnswered(inBlock: inBlock)
        return step
    }
}

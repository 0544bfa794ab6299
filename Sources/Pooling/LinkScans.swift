import Configuration
import NIOCore
import PostgresWire

/// A Parse, Bind, Describe or Close found complete in a client read: the prepared-statement rewrite works
/// from these, not from a second walk over the bytes.
struct StatementMessage: Sendable {
    /// Where the message starts in the scanned bytes, and its size with type byte and length.
    var offset: Int
    var size: Int
    /// Query/Sync/FunctionCall messages before it in the same bytes (its ReadyForQuery batch, relative).
    var unitsBefore: Int
}

/// Client → server, once per read: counts requests into the tracker, finds Terminate, what statements do to
/// session state, and where the statement messages are.
struct ClientScan: FrameVisitor {
    var tracker: TransactionTracker
    let detectsSessionState: Bool
    let tracksPrepared: Bool
    /// The scanned buffer: a statement message that names a prepared statement must be complete in it to be
    /// rewritten, so the scan stops before one that is not and the machine holds it back.
    let buffer: ByteBuffer
    var length: Int { buffer.readableBytes }
    /// A Query or Parse went through unscanned: it may have deallocated the server's prepared statements.
    var unscanned = false
    /// A statement message too long to hold (the machine refuses the client).
    var tooLongToHold: (type: UInt8, length: Int)?
    var terminated = false
    /// disable_pqexec: a simple Query was found (the scan stopped before it).
    let refusesSimpleQuery: Bool
    var simpleQuery = false
    var parses = 0
    var binds = 0
    /// Requests that earn a ReadyForQuery (Query, Sync, FunctionCall), and whether the last message was one.
    var units = 0
    var endsWithUnit = false
    var effects = StatementEffects()
    /// The start of the first statement that created session state, for the pin log line.
    var stateStatement = ""
    /// Each setting change with the number of client ReadyForQuery messages due before its unit's.
    var settingChanges: [(change: StatementEffects.SettingChange, unitsAhead: Int)] = []
    /// The Parse/Bind/Describe/Close messages that name a statement (the rewrite's work; unnamed ones, PHP's
    /// pg_query_params, go as they came and cost no entry here).
    var statementMessages: [StatementMessage] = []

    init(tracker: TransactionTracker, detectsSessionState: Bool, tracksPrepared: Bool, buffer: ByteBuffer, refusesSimpleQuery: Bool = false) {
        self.refusesSimpleQuery = refusesSimpleQuery
        self.tracker = tracker
        self.detectsSessionState = detectsSessionState
        self.tracksPrepared = tracksPrepared
        self.buffer = buffer
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        // The SQL of a Query or Parse: session state, and DEALLOCATE ALL / DISCARD ALL, which matter to
        // prepared-statement tracking even with pinning off. Bind/Describe/Close are decided on from where they
        // start (messageStarted), never gathered.
        (detectsSessionState || tracksPrepared) && (type == FrontendMessage.query || type == FrontendMessage.parse)
    }

    @inline(__always) static func isStatementMessage(_ type: UInt8) -> Bool {
        type == FrontendMessage.parse || type == FrontendMessage.bind || type == FrontendMessage.describe || type == FrontendMessage.close
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == FrontendMessage.terminate {
            terminated = true
            return false
        }
        if refusesSimpleQuery && type == FrontendMessage.query {
            simpleQuery = true
            return false
        }
        if tracksPrepared && Self.isStatementMessage(type) {
            // `offset` is never negative here: the scanner holds partial headers back too. The start of the body
            // says whether the message names a statement; one that does is held back until whole (the scanner
            // then holds nothing of it) so it can be rewritten, one that does not streams as it comes.
            guard offset >= 0 else { return false }
            let whole = offset + 1 + length <= self.length
            let available = buffer.getSlice(at: buffer.readerIndex + offset + 5, length: min(length - 4, self.length - offset - 5))!
            switch Self.namesStatement(type: type, bodyStart: available, whole: whole) {
            case nil:
                return false // not enough of it yet to tell
            case true?:
                guard whole else {
                    if 1 + length > LinkStateMachine.heldStatementLimit { tooLongToHold = (type, 1 + length) }
                    return false
                }
                statementMessages.append(StatementMessage(offset: offset, size: 1 + length, unitsBefore: units))
            case false?:
                break
            }
        }
        tracker.clientSent(type: type)
        if type == FrontendMessage.parse { parses &+= 1 } else if type == FrontendMessage.bind { binds &+= 1 }
        endsWithUnit = type == FrontendMessage.query || type == FrontendMessage.sync || type == FrontendMessage.functionCall
        if endsWithUnit { units &+= 1 }
        return true
    }

    /// A Query or Parse too long to gather for the scan: what it does is unknown, so the server is probed after
    /// it and cleaned with DISCARD ALL before its next client.
    mutating func messageBodyOmitted(type: UInt8, length: Int) {
        guard type == FrontendMessage.query || type == FrontendMessage.parse else { return }
        effects.mayRelease = true
        effects.opaqueSetting = true
        unscanned = true
        if stateStatement.isEmpty { stateStatement = "(a statement of \(length) bytes, too long to scan)" }
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
        effects.deallocatesAll = effects.deallocatesAll || found.deallocatesAll
        effects.opaqueSetting = effects.opaqueSetting || found.opaqueSetting
        if !found.settings.isEmpty {
            effects.settings += found.settings
            // A Query is its own unit (already counted); a Parse's unit is the Sync still to come.
            let ahead = type == FrontendMessage.query ? tracker.pendingReadyForQuery - 1 : tracker.pendingReadyForQuery
            for change in found.settings { settingChanges.append((change, ahead)) }
        }
    }
}

extension ClientScan {
    /// Whether a Parse, Bind, Describe or Close names a prepared statement (only those are rewritten), from the
    /// start of its body; nil when that start is not enough to tell and more of the message is to come.
    @inline(__always) static func namesStatement(type: UInt8, bodyStart body: ByteBuffer, whole: Bool) -> Bool? {
        let start = body.readerIndex
        let answer: Bool?
        switch type {
        case FrontendMessage.parse:
            answer = body.getInteger(at: start, as: UInt8.self).map { $0 != 0 }
        case FrontendMessage.bind:
            // The portal name comes first.
            guard let portalEnd = body.readableBytesView.firstIndex(of: 0) else { return whole ? false : nil }
            answer = body.getInteger(at: portalEnd + 1, as: UInt8.self).map { $0 != 0 }
        default:
            // Describe/Close: 'S' for a statement ('P' for a portal), then the name.
            guard let kind = body.getInteger(at: start, as: UInt8.self) else { return whole ? false : nil }
            guard kind == UInt8(ascii: "S") else { return false }
            answer = body.getInteger(at: start + 1, as: UInt8.self).map { $0 != 0 }
        }
        return answer ?? (whole ? false : nil)
    }
}

/// Server → client, once per read: ReadyForQuery, ParameterStatus, COPY state, command tags for the settings
/// ledger; which bytes answered Shoal's own statement (replay SET, probe) or the Parse/Close messages it injected.
struct ServerScan: FrameVisitor {
    struct ParameterUpdate { var name: String; var value: String; var fromShoal: Bool }

    var tracker: TransactionTracker
    /// Session settings awaiting confirmation (nil when none: the common case copies nothing), and what this
    /// read confirmed or left uncertain.
    var ledger: SettingsLedger?
    var resolution: SettingsLedger.Resolution?
    /// The error that refused Shoal's own SET.
    var ownError: ErrorFields?
    /// ReadyForQuery messages of Shoal's own statement still to come.
    var swallow: Int
    /// The own statement is the session-state probe: its DataRow is read, an error is not fatal.
    let probing: Bool
    /// With max_prepared_statements: the ParseComplete/CloseComplete answers Shoal awaits (nil when off).
    var expectations: ResponseExpectations?
    var drops: [(start: Int, length: Int)] = []
    var cancelled: [ExpectedResponse] = []
    var probeKinds: SessionStateKinds?
    var probeFailed = false
    var ownFinished = false
    /// The message whose body is awaited belongs to Shoal's own answer (kept across reads).
    var currentOwn: Bool
    /// Where in the read the own answer ended (its ReadyForQuery's last byte).
    var ownEnd: Int?
    let mode: PoolMode
    var releasable = false
    /// Something other than an asynchronous message (notice, parameter status, notification) came after the
    /// ReadyForQuery that made the server releasable: nothing asked for it, so the server is not provably clean.
    var strayAfterReady = false
    /// ReadyForQuery messages that answered the client, and how many of them said idle.
    var readyCount = 0
    var transactionsEnded = 0
    var statementModeViolation = false
    var parameterUpdates: [ParameterUpdate]?
    /// Writer pools of routed databases read their errors' SQLSTATE: 25006 from the "writer" means it is not.
    let watchesReadOnly: Bool
    var readOnlyRefusal = false

    init(tracker: TransactionTracker, ledger: SettingsLedger?, swallow: Int, currentOwn: Bool, mode: PoolMode, probing: Bool,
         expectations: ResponseExpectations?, watchesReadOnly: Bool) {
        self.tracker = tracker
        self.ledger = ledger
        self.swallow = swallow
        self.currentOwn = currentOwn
        self.mode = mode
        self.probing = probing
        self.expectations = expectations
        self.watchesReadOnly = watchesReadOnly
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        type == BackendMessage.readyForQuery || type == BackendMessage.parameterStatus || (probing && type == BackendMessage.dataRow)
            || (type == BackendMessage.errorResponse && (watchesReadOnly || swallow > 0))
            || (type == BackendMessage.commandComplete && ledger != nil && swallow == 0)
    }

    /// A ReadyForQuery whose length is not 5, or whose status is not I, T or E: no PostgreSQL sends one, and
    /// what state the server is in is anyone's guess — it is not trusted further.
    var malformedReady = false

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == BackendMessage.readyForQuery && length != 5 { malformedReady = true }
        if releasable && type != BackendMessage.noticeResponse && type != BackendMessage.parameterStatus
            && type != BackendMessage.notificationResponse {
            strayAfterReady = true
        }
        currentOwn = swallow > 0
        if swallow > 0 {
            if type == BackendMessage.errorResponse && probing { probeFailed = true }
            if type == BackendMessage.readyForQuery {
                expectations?.readyForQueryReceived()
                swallow -= 1
                if swallow == 0 {
                    ownEnd = offset + 1 + length
                    ownFinished = true
                }
            }
            return true
        }
        switch type {
        case BackendMessage.copyInResponse:
            let before = tracker.pendingReadyForQuery
            tracker.copyInStarted()
            if tracker.pendingReadyForQuery < before { ledger?.unitDropped(pendingAfter: tracker.pendingReadyForQuery) }
        case BackendMessage.copyOutResponse, BackendMessage.copyBothResponse:
            tracker.copyOutStarted()
        case BackendMessage.commandComplete:
            tracker.commandEnded()
        case BackendMessage.errorResponse:
            tracker.commandEnded()
            ledger?.errorReceived()
        default:
            break
        }
        if expectations != nil {
            switch type {
            case BackendMessage.parseComplete, BackendMessage.closeComplete:
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
        switch type {
        case BackendMessage.errorResponse:
            let fields = ErrorFields(body: body)
            if currentOwn {
                if !probing { ownError = fields }
            } else if fields.code == "25006" {
                readOnlyRefusal = true
            }
        case BackendMessage.commandComplete:
            // ROLLBACK, ROLLBACK TO SAVEPOINT and a COMMIT of a failed block all answer "ROLLBACK".
            let rollback: [UInt8] = Array("ROLLBACK".utf8)
            if body.readableBytes >= rollback.count, body.getBytes(at: body.readerIndex, length: rollback.count) == rollback {
                ledger?.rollbackCompleted()
            }
        case BackendMessage.dataRow:
            if currentOwn && probing { probeKinds = SessionStateProbe.kinds(fromDataRow: body) }
        case BackendMessage.readyForQuery:
            guard let raw = body.readInteger(as: UInt8.self), let status = TransactionStatus(rawValue: raw) else {
                malformedReady = true // found by fuzz-link-raw: a status other than I, T or E (also on Shoal's probe)
                return
            }
            guard !currentOwn else { return }
            if tracker.readyForQueryReceived(status) { releasable = true }
            if ledger != nil {
                let resolved = ledger!.readyForQueryReceived(status)
                if !resolved.isEmpty {
                    var all = resolution ?? SettingsLedger.Resolution()
                    all.confirmed += resolved.confirmed
                    all.uncertain += resolved.uncertain
                    resolution = all
                }
            }
            readyCount &+= 1
            if status == .idle { transactionsEnded &+= 1 }
            if mode == .statement && status != .idle { statementModeViolation = true }
        case BackendMessage.parameterStatus:
            guard let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() else { return }
            if parameterUpdates == nil { parameterUpdates = [] }
            parameterUpdates!.append(ParameterUpdate(name: name, value: value, fromShoal: currentOwn))
        default:
            break
        }
    }
}

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
    /// Readable bytes of the scanned buffer: a statement message must be complete in it to be rewritten, so the
    /// scan stops before one that is not and the machine holds it back.
    let length: Int
    var terminated = false
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
    /// The statement message whose body comes next.
    var currentStatement = StatementMessage(offset: 0, size: 0, unitsBefore: 0)

    init(tracker: TransactionTracker, detectsSessionState: Bool, tracksPrepared: Bool, length: Int) {
        self.tracker = tracker
        self.detectsSessionState = detectsSessionState
        self.tracksPrepared = tracksPrepared
        self.length = length
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        // DEALLOCATE ALL / DISCARD ALL matter to prepared-statement tracking even with pinning off.
        if tracksPrepared { return type == FrontendMessage.query || Self.isStatementMessage(type) }
        return detectsSessionState && (type == FrontendMessage.query || type == FrontendMessage.parse)
    }

    @inline(__always) static func isStatementMessage(_ type: UInt8) -> Bool {
        type == FrontendMessage.parse || type == FrontendMessage.bind || type == FrontendMessage.describe || type == FrontendMessage.close
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == FrontendMessage.terminate {
            terminated = true
            return false
        }
        if tracksPrepared && Self.isStatementMessage(type) {
            // Held back until whole (the scanner then holds nothing of it); `offset` is never negative here,
            // since the scanner holds partial headers back too. Its body, whole in this buffer, says whether it
            // names a statement.
            guard offset >= 0, offset + 1 + length <= self.length else { return false }
            currentStatement = StatementMessage(offset: offset, size: 1 + length, unitsBefore: units)
        }
        tracker.clientSent(type: type)
        if type == FrontendMessage.parse { parses &+= 1 } else if type == FrontendMessage.bind { binds &+= 1 }
        endsWithUnit = type == FrontendMessage.query || type == FrontendMessage.sync || type == FrontendMessage.functionCall
        if endsWithUnit { units &+= 1 }
        return true
    }

    mutating func messageBody(type: UInt8, body: ByteBuffer) {
        if tracksPrepared && Self.isStatementMessage(type) {
            if Self.namesStatement(type: type, body: body) { statementMessages.append(currentStatement) }
            // A Parse's text is looked at below too (DEALLOCATE ALL, session state).
            guard type == FrontendMessage.parse else { return }
        }
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
    /// Whether a Parse, Bind, Describe or Close names a prepared statement (only those are rewritten).
    @inline(__always) static func namesStatement(type: UInt8, body: ByteBuffer) -> Bool {
        let start = body.readerIndex
        switch type {
        case FrontendMessage.parse:
            return body.getInteger(at: start, as: UInt8.self).map { $0 != 0 } ?? false
        case FrontendMessage.bind:
            // The portal name comes first.
            guard let portalEnd = body.readableBytesView.firstIndex(of: 0) else { return false }
            return body.getInteger(at: portalEnd + 1, as: UInt8.self).map { $0 != 0 } ?? false
        default:
            // Describe/Close: 'S' for a statement ('P' for a portal), then the name.
            guard body.getInteger(at: start, as: UInt8.self) == UInt8(ascii: "S") else { return false }
            return body.getInteger(at: start + 1, as: UInt8.self).map { $0 != 0 } ?? false
        }
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

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
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
            guard !currentOwn else { return }
            guard let raw = body.readInteger(as: UInt8.self), let status = TransactionStatus(rawValue: raw) else { return }
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

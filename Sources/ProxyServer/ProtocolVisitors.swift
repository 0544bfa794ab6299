import Configuration
import NIOCore
import Pooling
import PostgresWire

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
    /// Each setting change with the number of client ReadyForQuery messages due before its unit's.
    var settingChanges: [(change: StatementEffects.SettingChange, unitsAhead: Int)] = []
    /// A Terminate whose header began in an earlier read: part of it already went to the server.
    var terminateSplit = false

    let tracksPrepared: Bool
    /// Parse/Bind/Describe/Close messages seen (they need the prepared-statement rewrite).
    var statementMessages = 0

    init(tracker: TransactionTracker, detectsSessionState: Bool = false, tracksPrepared: Bool = false) {
        self.tracker = tracker
        self.detectsSessionState = detectsSessionState
        self.tracksPrepared = tracksPrepared
    }

    @inline(__always) func wantsBody(type: UInt8) -> Bool {
        // DEALLOCATE ALL / DISCARD ALL matter to prepared-statement tracking even with pinning off.
        (detectsSessionState || tracksPrepared) && (type == FrontendMessage.query || type == FrontendMessage.parse)
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == FrontendMessage.terminate {
            terminated = true
            terminateSplit = offset < 0
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

/// Server → client: ReadyForQuery, ParameterStatus and COPY state; swallows the answer to Shoal's own SET.
struct ServerVisitor: FrameVisitor {
    struct ParameterUpdate { var name: String; var value: String; var fromShoal: Bool }

    var tracker: TransactionTracker
    /// Session settings awaiting PostgreSQL's confirmation (nil when none: the common case copies nothing), and
    /// what this read confirmed or left uncertain.
    var ledger: SettingsLedger?
    var resolution: SettingsLedger.Resolution?
    /// The error that refused Shoal's own SET (replaying the client's settings).
    var setError: ErrorFields?
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
    var statementModeViolation = false
    var parameterUpdates: [ParameterUpdate]?
    /// Writer pools of routed databases read their errors' SQLSTATE: 25006 from the "writer" means it is not.
    let watchesReadOnly: Bool
    var readOnlyRefusal = false

    init(tracker: TransactionTracker, ledger: SettingsLedger? = nil, swallow: Int, currentSwallowed: Bool, position: Int,
         mode: PoolMode, probing: Bool = false, expectations: ResponseExpectations? = nil, watchesReadOnly: Bool = false) {
        self.ledger = ledger
        self.watchesReadOnly = watchesReadOnly
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
            || (type == BackendMessage.errorResponse && (watchesReadOnly || swallow > 0))
            || (type == BackendMessage.commandComplete && ledger != nil && swallow == 0)
    }

    @inline(__always) mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        currentSwallowed = swallow > 0
        if swallow > 0 {
            if type == BackendMessage.errorResponse {
                if probing { probeFailed = true }
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
        if type == BackendMessage.errorResponse {
            let fields = ErrorFields(body: body)
            if currentSwallowed {
                if !probing { setError = fields }
            } else if fields.code == "25006" {
                readOnlyRefusal = true
            }
            return
        }
        if type == BackendMessage.commandComplete {
            // ROLLBACK, ROLLBACK TO SAVEPOINT and a COMMIT of a failed block all answer "ROLLBACK".
            let rollback: [UInt8] = Array("ROLLBACK".utf8)
            if body.readableBytes >= rollback.count, body.getBytes(at: body.readerIndex, length: rollback.count) == rollback {
                ledger?.rollbackCompleted()
            }
            return
        }
        if type == BackendMessage.dataRow {
            if currentSwallowed && probing { probeKinds = SessionStateProbe.kinds(fromDataRow: body) }
            return
        }
        if type == BackendMessage.readyForQuery {
            guard !currentSwallowed else { return }
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

import Configuration
import NIOCore
import PostgresWire

/// Counts clients holding session state in their pool (max_pinned_clients); the pool implements it.
public protocol PinSlots: AnyObject, Sendable {
    /// Takes a slot if `limit` allows (0: the pool's size plus its reserve).
    func tryPin(limit: Int) -> Bool
    /// Takes a slot whatever the limit (state that already exists on the server).
    func pinHeld()
    func unpinned()
}

/// Everything a logged-in client and its server do while Shoal pools them (transaction, statement and session
/// modes): a pure machine, fed the bytes each side sends and the few outside events (a server assigned or lost,
/// a cancel, the client gone, the clock), answering with what to forward and what to do.
///
/// It owns, in one place:
/// - the **replies owed**: the client's units (each Query/Sync/FunctionCall earns one ReadyForQuery, counted by
///   its `TransactionTracker`) and, ahead of them, Shoal's own statement (the settings replay or the
///   session-state probe), whose answer is swallowed; the Parse/Close answers the prepared-statement rewrite
///   injected (`ResponseExpectations`);
/// - the **session**: settings held until PostgreSQL confirms them (`SettingsLedger`), the lent `ServerSession`,
///   pins and the probe;
/// - **release**: `releaseBlocker` is the one answer to "may this server go back to the pool?".
///
/// No Channel, no clock reads (time comes in as uptime nanoseconds), no logging: `ClientConnection` carries out
/// the `LinkAction`s and writes the bytes.
public struct LinkStateMachine: Sendable {
    public struct Options: Sendable {
        public var mode: PoolMode
        /// pin_session_state (transaction and statement modes).
        public var detectsSessionState: Bool
        /// max_prepared_statements above 0 (transaction and statement modes): the rewrite's LRU size.
        public var preparedCapacity: Int
        /// A writer pool of a routed database: a 25006 from the server gets its host checked.
        public var watchesReadOnly: Bool
        /// Seconds, 0 = off.
        public var queryTimeout = 0.0
        public var idleTransactionTimeout = 0.0
        public var transactionTimeout = 0.0
        public var clientIdleTimeout = 0.0
        public var pinWarnTimeout = 0.0
        public var maxPinnedClients = 0
        /// server_reset_query when server_reset_query_always is on, and when a session ends.
        public var resetQueryOnRelease: String?
        public var resetQueryOnDisconnect: String?
        /// Startup parameters tracked per client (a SQL SET of one of these is not a session setting).
        public var trackedNames: Set<String> = []
        public var maxMessageLength = Int(Int32.max)
        /// The process-wide server names of prepared statements (needed with `preparedCapacity`).
        public var statementNames: StatementNames?
        /// How many statements, and bytes of their definitions, one client may keep (least recently used out).
        public var clientStatementLimits = ClientStatements.Limits.unlimited
        /// disable_pqexec: a simple Query message ends the client ("PQexec disallowed").
        public var refusesSimpleQuery = false

        public init(mode: PoolMode, detectsSessionState: Bool = false, preparedCapacity: Int = 0, watchesReadOnly: Bool = false) {
            self.mode = mode
            self.detectsSessionState = detectsSessionState && mode != .session
            self.preparedCapacity = mode == .session ? 0 : preparedCapacity
            self.watchesReadOnly = watchesReadOnly
        }

        public var tracksPrepared: Bool { preparedCapacity > 0 }
        public var tracksActivity: Bool { queryTimeout > 0 || idleTransactionTimeout > 0 || clientIdleTimeout > 0 || transactionTimeout > 0 }
    }

    public enum Phase: Sendable, Equatable {
        /// No server, nothing to do.
        case idle
        /// Bytes queued, the pool asked for a server.
        case waitingForServer
        case linked
    }

    /// Shoal's own statement on the server, ahead of the client's units.
    enum OwnStatement: Sendable { case replay, probe }

    /// The longest Query or Parse whose text is gathered across reads for the session-state scan: a longer one
    /// streams through unscanned and counts as suspect (probe after it, DISCARD ALL before the server's next
    /// client), so a client's statement cannot make Shoal hold up to max_packet_size bytes.
    public static let scannedStatementLimit = 1 << 20
    /// The longest Parse/Bind/Describe/Close naming a prepared statement that is held until whole to be
    /// rewritten (max_prepared_statements): a longer one is refused with SQLSTATE 54000. Unnamed ones (PHP's
    /// pg_query_params) are never held: they stream as they come, whatever their size.
    public static let heldStatementLimit = 16 << 20

    /// One pool's options for one config, shared by all its clients (the pool builds one): a reference here,
    /// not the ~145 bytes of `Options` in every client — 10,000 idle clients carry 1.3 MB less.
    public final class SharedOptions: Sendable {
        public let value: Options
        public init(_ value: Options) { self.value = value }
    }

    public private(set) var sharedOptions: SharedOptions
    /// Read field by field on the hot path: each read is a load through the shared object, not a copy.
    @inline(__always) public var options: Options { sharedOptions.value }
    public internal(set) var phase: Phase = .idle
    public internal(set) var tracker = TransactionTracker()
    public internal(set) var ledger = SettingsLedger()

    // The client's stream.
    var clientScanner: FrameScanner
    /// The tail of the last read: part of a header, or a statement message not yet whole (it is rewritten whole).
    var carry: ByteBuffer?
    /// A transaction block whose server was lost, answered by Shoal until the client ends it. Out of line
    /// (`indirect`): rare, and every idle client would otherwise carry its ~116 bytes.
    var lost: LostAnswering?
    indirect enum LostAnswering: Sendable { case answering(LostTransaction) }

    // What the client sent while it had no server, or while Shoal's replay was on its server.
    var pending: ByteBuffer?
    var pendingUnits = 0
    var pendingStatements: [StatementMessage] = []

    // The current link's server stream.
    var serverScanner = FrameScanner()
    var own: OwnStatement?
    /// ReadyForQuery messages of the own statement still to come, and whether the message being read is its.
    var ownAnswersLeft = 0
    var currentOwn = false
    /// The error that refused the replay: it may arrive in an earlier read than the replay's ReadyForQuery.
    var ownError: ErrorFields?
    var expectations = ResponseExpectations()
    /// Bytes of a dropped (injected Parse's) answer that continue into the next read.
    var dropContinuing = 0
    /// Query/Sync/FunctionCall messages sent on this link, Shoal's own included (the rewrite's batch numbers).
    var unitsSent = 0

    // Session state.
    /// The tracked parameters and session settings this client expects on whatever server it uses.
    public var parameters = ParameterSet()
    /// The server facts (in_hot_standby, server_version …) this client was last told.
    public var facts: ServerFacts?
    /// The linked server's session, lent for the link.
    public internal(set) var server: ServerSession?
    /// The client's named prepared statements (max_prepared_statements).
    public internal(set) var statements = ClientStatements()
    /// Said once per client, the first time one of its statements is forgotten for the limits.
    var statementEvictionWarned = false
    /// A DEALLOCATE ALL / DISCARD ALL is queued for the next server, whose statement list it empties.
    var clearServerStatementsAtLink = false
    /// A `set_config(…, false)` changed a setting Shoal cannot follow: DISCARD ALL at release.
    var needsDiscard = false

    // Pins (transaction and statement modes).
    public internal(set) var pinned: SessionStateKinds = []
    var suspected: SessionStateKinds = []
    var probeNeeded = false
    var pinSlotWanted = false
    var pinRequestRefusable = false
    var holdsPinSlot = false
    var pinnedSince: UInt64?
    var pinWarned = false
    public internal(set) var pinStatement = ""

    /// The pool's count of pinned clients (max_pinned_clients); nil counts nothing.
    public var pinSlots: (any PinSlots)?

    // Cancels.
    /// Cancel requests forwarded whose connection to the server has not closed yet.
    var cancelsInFlight = 0
    var releaseAfterCancel = false

    /// The client's last bytes, or the last ReadyForQuery that answered it (taken at the next tick): the
    /// timeouts count from whichever is later, so idle_transaction_timeout counts from the end of the last
    /// statement, not from the start of a long one.
    var lastActivity: UInt64
    var answeredSinceTick = false
    /// The tick that first saw the server in a transaction block (transaction_timeout; nil outside one).
    var transactionSince: UInt64?

    public init(options: Options, now: UInt64) {
        self.init(sharedOptions: SharedOptions(options), now: now)
    }

    public init(sharedOptions: SharedOptions, now: UInt64) {
        self.sharedOptions = sharedOptions
        let options = sharedOptions.value
        self.clientScanner = FrameScanner(maxMessageLength: options.maxMessageLength, holdsPartialHeaders: true,
                                          maxCollectedBody: Self.scannedStatementLimit)
        self.lastActivity = now
    }

    /// A new config (RELOAD, SIGHUP, console SET) reaches an existing client between its transactions, as
    /// PgBouncer applies a changed key to clients already connected. The options are swapped only at a point
    /// where nothing depends on the old ones: no server, nothing queued or held, the stream at a message
    /// boundary. Returns false when this is not such a point (the caller tries again later).
    public mutating func replaceOptions(_ new: Options) -> Bool {
        replaceOptions(SharedOptions(new))
    }

    public mutating func replaceOptions(_ shared: SharedOptions) -> Bool {
        let new = shared.value
        guard phase == .idle, server == nil, carry == nil, pending == nil, lost == nil, clientScanner.atBoundary else { return false }
        if new.maxMessageLength != options.maxMessageLength {
            clientScanner = FrameScanner(maxMessageLength: new.maxMessageLength, holdsPartialHeaders: true,
                                         maxCollectedBody: Self.scannedStatementLimit)
        }
        // Tracking turned off: the client's names mean nothing to the servers any more (its later uses of them
        // reach PostgreSQL as sent, as with PgBouncer), and their definitions need not be kept.
        if options.tracksPrepared && !new.tracksPrepared { statements.removeAll() }
        sharedOptions = shared
        return true
    }

    // MARK: Release

    /// Why the linked server may not go back to the pool now.
    public enum ReleaseBlocker: Sendable, Equatable {
        /// Replies owed, a COPY running, a transaction or an extended batch open (`TransactionTracker`).
        case owesReplies
        /// The client stopped in the middle of a message the server has part of.
        case midMessage
        /// The server stopped in the middle of a message (one nobody asked for: it went on after ReadyForQuery).
        case serverMidMessage
        /// Shoal's own statement (settings replay, session-state probe) is on the server.
        case shoalStatement
        /// A cancel request for this client is still on its way to the server.
        case cancelInFlight
    }

    /// The one answer to "may this server go back to the pool?" (nil: it may). Whether it *should* (pinned
    /// session state, session pooling) is `wantsRelease`.
    public var releaseBlocker: ReleaseBlocker? {
        if !tracker.isReleasable { return .owesReplies }
        if !clientScanner.atBoundary { return .midMessage }
        if !serverScanner.atBoundary { return .serverMidMessage }
        if own != nil { return .shoalStatement }
        if cancelsInFlight > 0 { return .cancelInFlight }
        return nil
    }

    /// Transaction or statement pooling, nothing pinned, no probe due.
    var wantsRelease: Bool { options.mode != .session && pinned.isEmpty && !probeNeeded }

    /// Held session state makes a leaving client's server need DISCARD ALL.
    var holdsSessionState: Bool { !pinned.isEmpty || probeNeeded || !parameters.session.isEmpty || needsDiscard }

    public var pendingBytes: Int { pending?.readableBytes ?? 0 }
    public var inLostTransaction: Bool { lost != nil }
    /// The client waits for an answer (query_timeout, disconnect wording).
    public var awaitingServer: Bool { tracker.awaitingServer || own == .replay }

    /// Gives the server back: at once, or once the cancels in flight have landed.
    mutating func release() -> LinkAction {
        if cancelsInFlight > 0 {
            // A cancel on its way could land on the next client's query: keep the server until it is delivered.
            releaseAfterCancel = true
            return .none
        }
        let session = server!
        server = nil
        phase = .idle
        let reset = needsDiscard ? "DISCARD ALL" : options.resetQueryOnRelease
        needsDiscard = false
        return .release(session, resetQuery: reset)
    }

    /// Takes the server out of the link without giving it back (it is being closed).
    mutating func abandonServer() -> ServerSession? {
        let session = server
        server = nil
        phase = .idle
        return session
    }
}

/// What the client's connection does after an event.
public enum LinkAction: Sendable {
    case none
    /// Send these bytes to the server and flush (Shoal's own statement, or what the client queued).
    case sendToServer(ByteBuffer)
    /// Give the server back to its pool (after `resetQuery` when set), with its session.
    case release(ServerSession, resetQuery: String?)
    /// The server was handed over but is not wanted (the client left or was served meanwhile).
    case giveBackUnused(ServerSession)
    /// The server cannot be reused: close it. The client stays.
    case closeServer(reason: String)
    /// Close the server (if any) for `serverReason`, then the client with a FATAL.
    case fatal(message: String, code: String, serverReason: String?)
    /// Queued with the pool: leave the queue.
    case leaveQueue
    /// The server was lost; the client got `answer` and its transaction, if any, is answered by Shoal.
    case serverLostAnswered(inBlock: Bool)
    /// pin_warn_timeout passed while pinned.
    case warnPinned(seconds: Int)
}

import PostgresWire

/// Knows, from the messages that pass by, when a server connection has answered everything its client asked
/// and stands outside a transaction — the moment transaction pooling may hand it to someone else.
///
/// Every simple Query and every Sync earns exactly one ReadyForQuery, so the tracker counts those in flight.
/// Pipelined batches therefore keep the link until their last ReadyForQuery, and a half-sent extended batch
/// (Parse/Bind without Sync yet) keeps it too.
public struct TransactionTracker: Sendable {
    /// ReadyForQuery messages still owed by the server.
    public private(set) var pendingReadyForQuery = 0
    /// Extended-protocol messages sent since the last Sync; the server holds an unnamed statement/portal for them.
    public private(set) var openExtendedBatch = false
    /// Whether the oldest request in flight came from the extended protocol (its unit is a Sync).
    private var extendedUnits: UInt64 = 0 // bit i: unit i (from the oldest) is a Sync
    public private(set) var transactionStatus: TransactionStatus = .idle
    /// The server is in COPY (in, out or both) until its CommandComplete or ErrorResponse ends it. An
    /// extended-protocol COPY owes no ReadyForQuery while in copy-in (its Sync is ignored), so the count alone
    /// would call such a server free.
    public private(set) var inCopy = false

    public init() {}

    /// True when the server owes nothing, is not in COPY and no transaction is open.
    @inlinable
    public var isReleasable: Bool {
        pendingReadyForQuery == 0 && !openExtendedBatch && transactionStatus == .idle && !inCopy
    }

    /// True when the client is waiting for an answer (used for query_timeout and disconnect handling).
    public var awaitingServer: Bool { pendingReadyForQuery > 0 }

    // MARK: Events

    public mutating func clientSent(type: UInt8) {
        switch type {
        case FrontendMessage.query, FrontendMessage.functionCall:
            // FunctionCall, like Query, is answered with its own ReadyForQuery.
            appendUnit(sync: false)
        case FrontendMessage.sync:
            appendUnit(sync: true)
            openExtendedBatch = false
        case FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.execute, FrontendMessage.describe,
             FrontendMessage.close, FrontendMessage.flush:
            openExtendedBatch = true
        default:
            break
        }
    }

    /// A CopyInResponse arrived. If the COPY came from an extended batch whose Sync was already sent, the server
    /// ignores that Sync while in copy-in mode and libpq sends another after CopyDone: forget the first one.
    public mutating func copyInStarted() {
        inCopy = true
        if pendingReadyForQuery > 0, extendedUnits & 1 == 1 {
            dropOldestUnit()
        }
    }

    /// A CopyOutResponse or CopyBothResponse arrived.
    public mutating func copyOutStarted() {
        inCopy = true
    }

    /// A CommandComplete or ErrorResponse arrived: whatever COPY was running has ended.
    public mutating func commandEnded() {
        inCopy = false
    }

    /// A ReadyForQuery arrived; returns whether the server is now releasable.
    @discardableResult
    public mutating func readyForQueryReceived(_ status: TransactionStatus) -> Bool {
        transactionStatus = status
        inCopy = false
        if pendingReadyForQuery > 0 { dropOldestUnit() }
        return isReleasable
    }

    /// Forget everything, e.g. when the tracker moves to a fresh server after a reset.
    public mutating func reset() {
        self = TransactionTracker()
    }

    // MARK: Units

    private mutating func appendUnit(sync: Bool) {
        if sync && pendingReadyForQuery < 64 { extendedUnits |= (1 << UInt64(pendingReadyForQuery)) }
        pendingReadyForQuery += 1
    }

    private mutating func dropOldestUnit() {
        pendingReadyForQuery -= 1
        extendedUnits >>= 1
    }
}

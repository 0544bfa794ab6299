import PostgresWire

/// Session settings a client changed with SQL (`SET`, `RESET`, `RESET ALL`, `DISCARD ALL`), held until
/// PostgreSQL confirms them — Shoal's view of a server (and of its client) is what the server confirmed, never
/// what was sent.
///
/// A change belongs to the unit (Query, or the Sync after a Parse) that carried it. At that unit's
/// ReadyForQuery it is:
/// - **confirmed** when the unit had no error and no ROLLBACK and the server is outside a transaction block;
/// - **held for the block** when the server is inside one: confirmed at the ReadyForQuery that ends the block
///   with a clean COMMIT, and uncertain when the block failed, rolled back, or rolled back to a savepoint;
/// - **uncertain** otherwise. An uncertain change may or may not have taken effect (`BEGIN; SET …; COMMIT;
///   SELECT 1/0` in one Query commits the SET and still fails): the client forgets it, and the server's view
///   marks the name unknown, so whoever gets that server next has it set or reset explicitly.
public struct SettingsLedger: Sendable {
    public typealias Change = StatementEffects.SettingChange

    struct Entry: Sendable {
        var change: Change
        /// Client ReadyForQuery messages still to come before the one that answers this change's unit.
        var ahead: Int
    }

    private var inFlight: [Entry] = []
    private var inBlock: [Change] = []
    /// A ROLLBACK (TO SAVEPOINT) ran inside the open block: what it holds may be partly undone.
    private var blockUncertain = false
    private var unitFailed = false
    private var unitRolledBack = false

    public init() {}

    /// Nothing awaits confirmation: the server side need not read command tags.
    @inlinable public var isEmpty: Bool { inFlightCount == 0 && inBlockCount == 0 }
    public var inFlightCount: Int { inFlight.count }
    public var inBlockCount: Int { inBlock.count }

    public struct Resolution: Sendable, Equatable {
        public var confirmed: [Change] = []
        public var uncertain: [Change] = []
        public init(confirmed: [Change] = [], uncertain: [Change] = []) {
            self.confirmed = confirmed
            self.uncertain = uncertain
        }
        public var isEmpty: Bool { confirmed.isEmpty && uncertain.isEmpty }
    }

    // MARK: Events

    /// The client sent `change` in a unit answered after `unitsAhead` other client ReadyForQuery messages.
    public mutating func sent(_ change: Change, unitsAhead: Int) {
        inFlight.append(Entry(change: change, ahead: max(0, unitsAhead)))
    }

    /// An ErrorResponse answered the client's current unit.
    public mutating func errorReceived() {
        guard !isEmpty else { return }
        unitFailed = true
    }

    /// A CommandComplete whose tag says ROLLBACK (a ROLLBACK, a ROLLBACK TO SAVEPOINT, a COMMIT of a failed block).
    public mutating func rollbackCompleted() {
        unitRolledBack = true
    }

    /// An extended-protocol COPY's Sync was ignored by the server (copy-in mode): changes of that unit are
    /// answered with the unit the client's next Sync opens, `pendingAfter` units from now.
    public mutating func unitDropped(pendingAfter: Int) {
        for index in inFlight.indices {
            if inFlight[index].ahead == 0 { inFlight[index].ahead = pendingAfter } else { inFlight[index].ahead -= 1 }
        }
    }

    /// A ReadyForQuery answered the client's oldest unit.
    public mutating func readyForQueryReceived(_ status: TransactionStatus) -> Resolution {
        let failed = unitFailed, rolledBack = unitRolledBack
        unitFailed = false
        unitRolledBack = false
        if isEmpty { return Resolution() }
        var answered: [Change] = []
        if !inFlight.isEmpty {
            var keep: [Entry] = []
            keep.reserveCapacity(inFlight.count)
            for var entry in inFlight {
                if entry.ahead == 0 {
                    answered.append(entry.change)
                } else {
                    entry.ahead -= 1
                    keep.append(entry)
                }
            }
            inFlight = keep
        }
        var resolution = Resolution()
        switch status {
        case .idle:
            let clean = !failed && !rolledBack && !blockUncertain
            let ended = inBlock + answered
            inBlock = []
            blockUncertain = false
            if clean { resolution.confirmed = ended } else { resolution.uncertain = ended }
        case .inTransaction:
            if rolledBack || failed { blockUncertain = true }
            inBlock += answered
        case .failed:
            // The block is failed; a ROLLBACK TO SAVEPOINT could still save part of it, so what it held is
            // uncertain now rather than later.
            resolution.uncertain = inBlock + answered
            inBlock = []
            blockUncertain = false
        }
        return resolution
    }

    /// The server is gone or the units were never sent: every change not yet confirmed is dropped.
    public mutating func reset() {
        self = SettingsLedger()
    }
}

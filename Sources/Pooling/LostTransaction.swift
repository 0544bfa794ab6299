import NIOCore
import PostgresWire

/// Answers, without a server, a client whose server connection died inside its transaction block (a failover,
/// a crash): PostgreSQL would keep that transaction failed until the client ends it, and so does Shoal, so the
/// client's own error handling (ROLLBACK, or COMMIT answered ROLLBACK) runs as it would against a failed
/// transaction, and its connection to Shoal survives. Nothing is replayed.
///
/// Fed the client's bytes from a message boundary on; `respond` writes PostgreSQL's answers and stops right
/// after the message that ends the transaction (or before a Terminate), so what follows goes to a server.
public struct LostTransaction: Sendable {
    private var scanner = FrameScanner(maxMessageLength: 1 << 30)
    private var state: Answers
    public var ended: Bool { state.ended }

    /// What has been answered so far.
    private struct Answers: Sendable {
        /// The error the client has not seen yet (the lost connection), sent in place of the first 25P02.
        var pendingError: (code: String, message: String, detail: String)?
        /// An error was sent in the current extended-protocol batch: the rest up to Sync is skipped, as PostgreSQL does.
        var failedInBatch: Bool
        /// The transaction status to report: `.failed` in the block, `.idle` once only the current batch remains.
        var status: TransactionStatus
        /// An extended batch that is a ROLLBACK/COMMIT (PostgreSQL runs it in a failed transaction).
        var batchEndsTransaction = false
        /// An extended batch whose COMMIT failed: its Sync ends the transaction, as after a failed COMMIT.
        var batchCommitFailed = false
        var ended: Bool

        mutating func error(into out: inout ByteBuffer) {
            if let pending = pendingError {
                pendingError = nil
                out.writeErrorResponse(severity: "ERROR", code: pending.code, message: pending.message, detail: pending.detail)
            } else {
                out.writeErrorResponse(severity: "ERROR", code: "25P02",
                                       message: "current transaction is aborted, commands ignored until end of transaction block")
            }
        }
    }

    /// `inBlock`: the client was inside BEGIN … (status T or E). `errorSent`: the client was told already (an
    /// answer it awaited carried the error). `openBatch`: it had sent extended messages without their Sync.
    public init(inBlock: Bool, errorSent: Bool, openBatch: Bool, code: String = "08006", message: String, detail: String) {
        state = Answers(pendingError: errorSent ? nil : (code, message, detail), failedInBatch: openBatch && errorSent,
                        status: inBlock ? .failed : .idle, ended: !inBlock && !openBatch)
    }

    /// Answers the messages in `bytes`; returns how many bytes it consumed (all unless the transaction ended
    /// or a Terminate came).
    public mutating func respond(to bytes: ByteBuffer, into out: inout ByteBuffer) -> Int {
        guard !ended else { return 0 }
        var visitor = Visitor(state: state, out: out)
        let consumed = (try? scanner.scan(bytes, visitor: &visitor)) ?? bytes.readableBytes
        state = visitor.state
        out = visitor.out
        return consumed
    }

    enum Ending { case commit, rollback }

    /// COMMIT/END or ROLLBACK/ABORT (not ROLLBACK TO SAVEPOINT, not ROLLBACK/COMMIT PREPARED): what ends a failed
    /// transaction. The savepoints were on the lost server.
    static func ending(_ sql: ByteBuffer) -> Ending? {
        sql.withUnsafeReadableBytes { bytes in
            var words = SessionStateScanner.Words(bytes, 0, bytes.firstIndex(of: 0) ?? bytes.count)
            guard let first = words.next(), ["rollback", "abort", "commit", "end"].contains(first) else { return nil }
            let second = words.next()
            guard second != "to" && second != "prepared" else { return nil }
            return first == "commit" || first == "end" ? .commit : .rollback
        }
    }

    private struct Visitor: FrameVisitor {
        var state: Answers
        var out: ByteBuffer

        func wantsBody(type: UInt8) -> Bool { type == FrontendMessage.query || type == FrontendMessage.parse }

        mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
            if state.ended || type == FrontendMessage.terminate { return false }
            switch type {
            case FrontendMessage.query, FrontendMessage.parse:
                break // answered with the body
            case FrontendMessage.bind:
                if state.batchEndsTransaction && !state.failedInBatch { out.writePostgresMessage(UInt8(ascii: "2")) { _ in } }
                else { batchError() }
            case FrontendMessage.describe:
                if state.batchEndsTransaction && !state.failedInBatch { out.writePostgresMessage(UInt8(ascii: "n")) { _ in } }
                else { batchError() }
            case FrontendMessage.execute:
                if state.batchEndsTransaction && !state.failedInBatch { out.writeCommandComplete("ROLLBACK") }
                else { batchError() }
            case FrontendMessage.close:
                if state.batchEndsTransaction && !state.failedInBatch { out.writePostgresMessage(UInt8(ascii: "3")) { _ in } }
                else { batchError() }
            case FrontendMessage.sync:
                let endsNow = (state.batchEndsTransaction && !state.failedInBatch) || state.batchCommitFailed
                state.batchCommitFailed = false
                if endsNow || state.status == .idle {
                    out.writeReadyForQuery(.idle)
                    state.ended = true
                } else {
                    out.writeReadyForQuery(.failed)
                }
                state.failedInBatch = false
                state.batchEndsTransaction = false
            case FrontendMessage.functionCall:
                state.error(into: &out)
                out.writeReadyForQuery(state.status == .failed ? .failed : .idle)
                if state.status == .idle { state.ended = true }
            default:
                break // Flush, CopyData/CopyDone/CopyFail of a COPY the lost server was in: nothing to answer
            }
            return true
        }

        mutating func messageBody(type: UInt8, body: ByteBuffer) {
            var body = body
            if type == FrontendMessage.query {
                if state.status == .failed, let ending = LostTransaction.ending(body) {
                    if state.pendingError != nil && ending == .commit {
                        // The client never heard that its transaction was lost: its COMMIT fails with that error
                        // (a ROLLBACK tag alone would read as committed to most drivers — an acknowledged commit
                        // that never happened). PostgreSQL's failed COMMIT leaves the session idle, as here.
                        state.error(into: &out)
                    } else {
                        out.writeCommandComplete("ROLLBACK")
                    }
                    out.writeReadyForQuery(.idle)
                    state.ended = true
                } else {
                    state.error(into: &out)
                    out.writeReadyForQuery(state.status == .failed ? .failed : .idle)
                    if state.status == .idle { state.ended = true }
                }
                return
            }
            // Parse: a ROLLBACK/COMMIT batch is answered as PostgreSQL answers it in a failed transaction.
            _ = body.readNullTerminatedString()
            if state.status == .failed && !state.failedInBatch, let ending = LostTransaction.ending(body) {
                if state.pendingError != nil && ending == .commit {
                    // As for a simple COMMIT above: it fails with the error the client has not seen.
                    batchError()
                    state.batchCommitFailed = true
                    return
                }
                state.batchEndsTransaction = true
                out.writePostgresMessage(UInt8(ascii: "1")) { _ in }
            } else {
                batchError()
            }
        }

        private mutating func batchError() {
            guard !state.failedInBatch else { return }
            state.failedInBatch = true
            state.batchEndsTransaction = false
            state.error(into: &out)
        }
    }
}

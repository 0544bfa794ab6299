import Pooling
import PostgresWire
import Testing

/// Thousands of random pipelines of SET/RESET/BEGIN/COMMIT/ROLLBACK/SAVEPOINT/errors, answered by a model of
/// PostgreSQL's transactional settings, fed to `SettingsLedger` and `TransactionTracker` as Shoal feeds them.
/// After every ReadyForQuery: Shoal's view of the server never holds a definite value the server does not have
/// (a name is either right or marked unknown, which forces a reset before reuse), and the tracker never calls
/// the server releasable while a reply is owed or a block is open.
@Suite struct SettingsLedgerRandomTests {
    enum Statement: CaseIterable {
        case begin, commit, rollback, set, reset, resetAll, savepoint, rollbackToSavepoint, error, select
    }

    /// PostgreSQL's behaviour for what the test sends: session settings with transactional semantics (a simple
    /// Query outside a block is its own implicit transaction; an error ends the Query and fails or rolls back).
    struct ModelServer {
        var committed: [String: String] = [:]
        var current: [String: String] = [:]
        var savepoints: [[String: String]] = []
        enum Block { case none, open, failed }
        var block = Block.none

        /// Runs one Query's statements; returns the messages the server sends, in order.
        mutating func run(_ statements: [(Statement, String, String)]) -> [Reply] {
            var replies: [Reply] = []
            for (statement, name, value) in statements {
                if block == .failed, ![.commit, .rollback, .rollbackToSavepoint].contains(statement) {
                    return failed(replies)
                }
                switch statement {
                case .begin:
                    if block == .none { block = .open }
                    replies.append(.complete("BEGIN"))
                case .commit:
                    if block == .failed {
                        current = committed
                        replies.append(.complete("ROLLBACK"))
                    } else {
                        committed = current
                        replies.append(.complete("COMMIT"))
                    }
                    block = .none
                    savepoints = []
                case .rollback:
                    current = committed
                    block = .none
                    savepoints = []
                    replies.append(.complete("ROLLBACK"))
                case .set:
                    current[name] = value
                    replies.append(.complete("SET"))
                case .reset:
                    current[name] = nil
                    replies.append(.complete("RESET"))
                case .resetAll:
                    current = [:]
                    replies.append(.complete("RESET"))
                case .savepoint:
                    guard block == .open else { return failed(replies) }
                    savepoints.append(current)
                    replies.append(.complete("SAVEPOINT"))
                case .rollbackToSavepoint:
                    guard block != .none, let saved = savepoints.last else { return failed(replies) }
                    current = saved
                    block = .open
                    replies.append(.complete("ROLLBACK"))
                case .error:
                    return failed(replies)
                case .select:
                    replies.append(.complete("SELECT 1"))
                }
            }
            if block == .none { committed = current } // the implicit transaction commits
            return replies + [.ready(status)]
        }

        /// An error ends the Query: an explicit block fails, an implicit transaction rolls back.
        private mutating func failed(_ replies: [Reply]) -> [Reply] {
            if block == .none { current = committed } else { block = .failed }
            return replies + [.error, .ready(status)]
        }

        var status: TransactionStatus {
            switch block {
            case .none: .idle
            case .open: .inTransaction
            case .failed: .failed
            }
        }
    }

    enum Reply: Equatable {
        case complete(String)
        case error
        case ready(TransactionStatus)
    }

    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func shoalsViewOfTheServerIsNeverDefinitelyWrong() {
        var random = SplitMix64(state: 0x5140A1)
        let names = ["search_path", "work_mem", "statement_timeout"]
        var checks = 0
        for sequence in 0..<10_000 {
            var server = ModelServer()
            var view = ParameterSet()
            var ledger = SettingsLedger()
            var tracker = TransactionTracker()
            for _ in 0..<Int.random(in: 1...6, using: &random) {
                // A pipeline of 1…4 Queries sent before any answer.
                var queries: [[(Statement, String, String)]] = []
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    queries.append((0..<Int.random(in: 1...3, using: &random)).map { _ in
                        (Statement.allCases.randomElement(using: &random)!, names.randomElement(using: &random)!,
                         "v\(Int.random(in: 0...3, using: &random))")
                    })
                }
                for query in queries {
                    tracker.clientSent(type: FrontendMessage.query)
                    for (statement, name, value) in query {
                        switch statement {
                        case .set: ledger.sent(.set(name: name, value: value), unitsAhead: tracker.pendingReadyForQuery - 1)
                        case .reset: ledger.sent(.reset(name: name), unitsAhead: tracker.pendingReadyForQuery - 1)
                        case .resetAll: ledger.sent(.resetAll, unitsAhead: tracker.pendingReadyForQuery - 1)
                        default: break
                        }
                    }
                }
                for query in queries {
                    for reply in server.run(query) {
                        switch reply {
                        case .complete(let tag):
                            if tag.hasPrefix("ROLLBACK") && !ledger.isEmpty { ledger.rollbackCompleted() }
                        case .error:
                            ledger.errorReceived()
                        case .ready(let status):
                            tracker.readyForQueryReceived(status)
                            let resolution = ledger.readyForQueryReceived(status)
                            for change in resolution.confirmed { view.apply(change) }
                            for change in resolution.uncertain { view.markUncertain(change) }
                            if tracker.isReleasable {
                                #expect(server.block == .none, "sequence \(sequence): releasable inside a block")
                            }
                            if status == .idle {
                                checks += 1
                                for name in names {
                                    let believed = view.session[name]
                                    guard believed != ParameterSet.unknownValue else { continue }
                                    #expect(believed == server.current[name],
                                            "sequence \(sequence): Shoal believes \(name) = \(believed ?? "default"), server has \(server.current[name] ?? "default")")
                                }
                            }
                        }
                    }
                }
                #expect(tracker.pendingReadyForQuery == 0)
            }
        }
        #expect(checks > 10_000)
    }
}

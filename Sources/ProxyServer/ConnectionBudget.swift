import NIOConcurrencyHelpers

/// Server connections counted per database and per user across pools, for max_db_connections and
/// max_user_connections. Taken before a dial, given back when that server closes (or never came up).
final class ConnectionBudget: @unchecked Sendable {
    private let lock = NIOLock()
    private var perDatabase: [String: Int] = [:]
    private var perUser: [String: Int] = [:]

    /// Takes one slot for (database, user) if both limits allow (0 = no limit).
    func tryAcquire(database: String, user: String, maxDatabase: Int, maxUser: Int) -> Bool {
        lock.withLock {
            let db = perDatabase[database, default: 0]
            let us = perUser[user, default: 0]
            if maxDatabase > 0 && db >= maxDatabase { return false }
            if maxUser > 0 && us >= maxUser { return false }
            perDatabase[database] = db + 1
            perUser[user] = us + 1
            return true
        }
    }

    func release(database: String, user: String) {
        lock.withLock {
            perDatabase[database, default: 1] -= 1
            perUser[user, default: 1] -= 1
        }
    }
}

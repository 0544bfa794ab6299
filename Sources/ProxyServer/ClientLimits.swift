import NIOConcurrencyHelpers

/// Clients per database and per user across every EventLoop: max_db_client_connections and
/// max_user_client_connections (PgBouncer's keys; 0 = no limit). One lock per login and per logout.
final class ClientLimits: Sendable {
    private struct Counts {
        var databases: [String: Int] = [:]
        var users: [String: Int] = [:]
    }
    private let counts = NIOLockedValueBox(Counts())

    /// Counts a client in, or returns PgBouncer's refusal when either limit is reached.
    func admit(database: String, user: String, databaseLimit: Int, userLimit: Int) -> String? {
        counts.withLockedValue { counts in
            if databaseLimit > 0 && counts.databases[database, default: 0] >= databaseLimit {
                return "client connections exceeded (max_db_client_connections)"
            }
            if userLimit > 0 && counts.users[user, default: 0] >= userLimit {
                return "client connections exceeded (max_user_client_connections)"
            }
            counts.databases[database, default: 0] += 1
            counts.users[user, default: 0] += 1
            return nil
        }
    }

    func left(database: String, user: String) {
        counts.withLockedValue { counts in
            counts.databases[database] = counts.databases[database].flatMap { $0 > 1 ? $0 - 1 : nil }
            counts.users[user] = counts.users[user].flatMap { $0 > 1 ? $0 - 1 : nil }
        }
    }
}

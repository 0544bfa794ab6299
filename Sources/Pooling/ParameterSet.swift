import Foundation

/// The tracked run-time parameters (PgBouncer's varcache): those a client expects to keep whichever server
/// connection it lands on. Names compare case-insensitively; values compare case-insensitively too, as PgBouncer does.
public struct ParameterSet: Sendable, Equatable {
    /// lower-cased name → (name as PostgreSQL reports it, value)
    public private(set) var values: [String: (name: String, value: String)] = [:]

    /// Session settings the client made with SQL `SET` (names PostgreSQL does not report, such as
    /// statement_timeout or search_path): lower-cased name → the value as the client wrote it.
    public private(set) var session: [String: String] = [:]

    public static let alwaysTracked = ["client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name"]

    /// Parameters PostgreSQL reports but no client can SET (or that only `SET SESSION AUTHORIZATION`, tracked as a
    /// session setting, changes): they describe the server, are passed on as it reports them, and are never
    /// replayed — `SET in_hot_standby` fails on every server.
    public static let serverOwned: Set<String> = [
        "server_version", "server_encoding", "integer_datetimes", "in_hot_standby", "is_superuser", "session_authorization",
    ]

    public init() {}

    public static func == (a: ParameterSet, b: ParameterSet) -> Bool {
        a.values.count == b.values.count && a.values.allSatisfy { key, entry in b.values[key]?.value == entry.value }
            && a.session == b.session
    }

    public subscript(name: String) -> String? {
        values[name.lowercased()]?.value
    }

    public mutating func set(_ name: String, _ value: String) {
        set(key: name.lowercased(), name: name, value)
    }

    /// The value under an already lower-cased name.
    public func value(forKey key: String) -> String? { values[key]?.value }

    /// `set`, with `key` already lower-cased (the welcome's names are, once per pool).
    public mutating func set(key: String, name: String, _ value: String) {
        // Keep PostgreSQL's own spelling of the name once we have seen it.
        let spelled = values[key]?.name ?? name
        values[key] = (spelled, value)
    }

    public mutating func setSession(_ name: String, rawValue: String) { session[name.lowercased()] = rawValue }
    public mutating func resetSession(_ name: String) { session[name.lowercased()] = nil }
    public mutating func resetAllSession() { session = [:] }
    /// Copies the client's session settings onto a server's set once the server confirmed Shoal's replay.
    public mutating func adoptSession(of other: ParameterSet) { session = other.session }

    /// A value no client ever wants: a server whose setting may or may not have changed (a SET in a unit that
    /// failed or rolled back) has it set or reset explicitly before anyone uses it again.
    public static let unknownValue = "\u{1}unknown"

    /// A change PostgreSQL confirmed.
    public mutating func apply(_ change: StatementEffects.SettingChange) {
        switch change {
        case .set(let name, let value): setSession(name, rawValue: value)
        case .reset(let name): resetSession(name)
        case .resetAll: resetAllSession()
        }
    }

    /// A change that may or may not have taken effect on a server: the names it touches become unknown (a RESET
    /// ALL: every session setting Shoal knew of).
    public mutating func markUncertain(_ change: StatementEffects.SettingChange) {
        switch change {
        case .set(let name, _), .reset(let name): session[name.lowercased()] = Self.unknownValue
        case .resetAll: for name in session.keys { session[name] = Self.unknownValue }
        }
    }

    /// After a replay the server refused: the client takes the server's confirmed values, so its next
    /// statement runs instead of failing again. Unknown settings are dropped.
    public mutating func adoptConfirmed(of server: ParameterSet) {
        for (key, entry) in server.values { values[key] = entry }
        session = server.session.filter { $0.value != Self.unknownValue }
    }

    /// The statement that moves a server whose parameters are `server` to this set's values, or nil if none differ.
    /// Session settings the server has and this client does not are RESET, so none leaks from one client to the next.
    /// Values whose quoted form is over 128 bytes are skipped, like PgBouncer.
    public func setStatement(from server: ParameterSet) -> String? {
        difference(from: server).sql
    }

    /// `setStatement`, and whether the two sets are also equal to the letter (`equalsToTheLetter`), found in the
    /// same pass: a link asks both, and the server then takes this set's storage (`takeStorage`).
    public func difference(from server: ParameterSet) -> (sql: String?, toTheLetter: Bool) {
        // The commonest case: the server took this client's storage at an earlier link.
        if sharesStorage(with: server) { return (nil, true) }
        // The common case on every link: nothing differs. Check without sorting or allocating.
        var anyDifferent = false
        var toTheLetter = values.count == server.values.count
        for (key, wanted) in values {
            guard let current = server.values[key] else { anyDifferent = true; break }
            if current.value != wanted.value {
                toTheLetter = false
                if current.value.lowercased() != wanted.value.lowercased() {
                    anyDifferent = true
                    break
                }
            } else if current.name != wanted.name {
                toTheLetter = false
            }
        }
        guard anyDifferent || session != server.session else { return (nil, toTheLetter) }
        var sql = ""
        for key in values.keys.sorted() {
            let wanted = values[key]!
            if let current = server.values[key], current.value == wanted.value || current.value.lowercased() == wanted.value.lowercased() { continue }
            let literal = Self.quoteLiteral(wanted.value)
            if literal.utf8.count > 128 { continue }
            sql += "SET \(wanted.name)=\(literal);"
        }
        for name in server.session.keys.sorted() where session[name] == nil {
            sql += "RESET \(name);"
        }
        for name in session.keys.sorted() where server.session[name] != session[name] {
            let value = session[name]!
            sql += name == "role" || name == "session authorization" ? "SET \(name) \(value);" : "SET \(name) = \(value);"
        }
        return (sql.isEmpty ? nil : sql, false)
    }

    /// Whether both sets hold the very same dictionaries (one took the other's with `shareStorage`): then they are
    /// equal, known without a lookup. Every link compared the client's parameters with its server's key by key
    /// (hashing each name: 6 % of Shoal's user-space samples under pgbench -S); clients of a pool share the
    /// welcome's storage, so once a server has taken it, the comparison is two pointer comparisons. A Dictionary
    /// is one reference to its storage, so equal bits mean the same storage; unequal bits mean nothing.
    public func sharesStorage(with other: ParameterSet) -> Bool {
        Self.sameBits(values, other.values) && Self.sameBits(session, other.session)
    }

    private static func sameBits<T>(_ a: T, _ b: T) -> Bool {
        withUnsafeBytes(of: a) { a in withUnsafeBytes(of: b) { b in a.elementsEqual(b) } }
    }

    /// Takes `other`'s storage when both hold exactly the same names, spellings and values (not merely values
    /// equal but for case, as `setStatement` accepts): the contents do not change, so a server's set still says
    /// only what PostgreSQL confirmed; the next comparison is an identity check.
    public mutating func shareStorage(ifEqualTo other: ParameterSet) {
        guard !sharesStorage(with: other), sameContents(as: other) else { return }
        takeStorage(of: other)
    }

    /// `shareStorage` for a caller that has found the two equal to the letter already (`difference`).
    public mutating func takeStorage(of other: ParameterSet) {
        assert(equalsToTheLetter(other), "a server's set may only take storage holding the same contents")
        values = other.values
        session = other.session
    }

    /// The same names as spelled, values and session settings (`==` compares values only).
    public func equalsToTheLetter(_ other: ParameterSet) -> Bool {
        sharesStorage(with: other) || sameContents(as: other)
    }

    /// `equalsToTheLetter`, entry by entry.
    private func sameContents(as other: ParameterSet) -> Bool {
        guard values.count == other.values.count, session == other.session else { return false }
        for (key, entry) in values {
            guard let theirs = other.values[key], theirs.name == entry.name, theirs.value == entry.value else { return false }
        }
        return true
    }

    static func quoteLiteral(_ value: String) -> String {
        if value.contains("\\") {
            return "E'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''") + "'"
        }
        return "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
    }
}


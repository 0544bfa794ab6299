import NIOCore

/// Kinds of state a statement can leave on its server connection beyond its transaction.
public struct SessionStateKinds: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let heldCursor = SessionStateKinds(rawValue: 1 << 0)
    public static let advisoryLock = SessionStateKinds(rawValue: 1 << 1)
    public static let tempTable = SessionStateKinds(rawValue: 1 << 2)
    public static let preparedStatement = SessionStateKinds(rawValue: 1 << 3)
    public static let listen = SessionStateKinds(rawValue: 1 << 4)

    /// For SHOW CLIENTS and logs: `held_cursor,advisory_lock`.
    public var names: String {
        var parts: [String] = []
        if contains(.heldCursor) { parts.append("held_cursor") }
        if contains(.advisoryLock) { parts.append("advisory_lock") }
        if contains(.tempTable) { parts.append("temp_table") }
        if contains(.preparedStatement) { parts.append("prepared_statement") }
        if contains(.listen) { parts.append("listen") }
        return parts.joined(separator: ",")
    }
}

/// What the statements of one Query (or one Parse) do to session state, found by a lexical look at each
/// statement's leading keywords and at advisory-lock function names — never a SQL parse.
///
/// It errs towards noticing: whatever it reports is confirmed with the server afterwards (`SessionStateProbe`),
/// so a false alarm costs one probe query, never a wrong pin.
public struct StatementEffects: Sendable, Equatable {
    /// State that may now exist (DECLARE … WITH HOLD, pg_advisory_lock, CREATE TEMP, PREPARE, LISTEN).
    public var creates: SessionStateKinds = []
    /// State that may now be gone (CLOSE, pg_advisory_unlock*, DROP, DISCARD, DEALLOCATE, UNLISTEN).
    public var mayRelease = false
    /// Session-level `SET name …` / `RESET name` / `RESET ALL` / `DISCARD ALL`, in order.
    public var settings: [SettingChange] = []
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement of the session is gone.
    public var deallocatesAll = false
    /// `set_config(name, value, false)` (or with a non-literal third argument): a session setting Shoal cannot
    /// follow by name and value. The server is cleaned with DISCARD ALL before another client uses it.
    public var opaqueSetting = false

    public enum SettingChange: Sendable, Equatable {
        /// `SET [SESSION] name {=|TO} value`; `value` is the raw SQL text, re-sent as written.
        case set(name: String, value: String)
        case reset(name: String)
        case resetAll
    }

    public init() {}

    public var isEmpty: Bool { creates.isEmpty && !mayRelease && settings.isEmpty && !deallocatesAll && !opaqueSetting }
}

public enum SessionStateScanner {
    /// Scans SQL text (UTF-8 bytes, without the terminating zero).
    public static func scan(_ sql: UnsafeRawBufferPointer) -> StatementEffects {
        var effects = StatementEffects()
        var start = 0
        let count = sql.count
        while start < count {
            let end = statementEnd(sql, from: start)
            examine(sql, start, end, &effects)
            start = end + 1
        }
        return effects
    }

    public static func scan(_ sql: String) -> StatementEffects {
        var copy = sql
        return copy.withUTF8 { scan(UnsafeRawBufferPointer($0)) }
    }

    /// The body of a Query message: the SQL, zero-terminated.
    public static func scanQuery(_ body: ByteBuffer) -> StatementEffects {
        body.withUnsafeReadableBytes { bytes in
            let length = bytes.firstIndex(of: 0) ?? bytes.count
            return scan(UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
        }
    }

    /// The body of a Parse message: statement name, then the SQL, both zero-terminated.
    public static func scanParse(_ body: ByteBuffer) -> StatementEffects {
        body.withUnsafeReadableBytes { bytes in
            guard let nameEnd = bytes.firstIndex(of: 0) else { return StatementEffects() }
            let rest = bytes[(nameEnd + 1)...]
            let sqlEnd = rest.firstIndex(of: 0) ?? bytes.count
            return scan(UnsafeRawBufferPointer(rebasing: bytes[(nameEnd + 1)..<sqlEnd]))
        }
    }

    // MARK: Statements

    /// The index of the `;` ending the statement that starts at `start` (or the end), skipping quotes and comments.
    static func statementEnd(_ sql: UnsafeRawBufferPointer, from start: Int) -> Int {
        var index = start
        let count = sql.count
        while index < count {
            switch sql[index] {
            case UInt8(ascii: ";"):
                return index
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                let quote = sql[index]
                index += 1
                while index < count && sql[index] != quote { index += 1 }
            case UInt8(ascii: "-") where index + 1 < count && sql[index + 1] == UInt8(ascii: "-"):
                while index < count && sql[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "/") where index + 1 < count && sql[index + 1] == UInt8(ascii: "*"):
                index += 2
                while index + 1 < count && !(sql[index] == UInt8(ascii: "*") && sql[index + 1] == UInt8(ascii: "/")) { index += 1 }
                index += 1
            case UInt8(ascii: "$"):
                // Dollar quoting: $tag$ … $tag$.
                var tagEnd = index + 1
                while tagEnd < count && isIdentifier(sql[tagEnd]) && sql[tagEnd] != UInt8(ascii: "$") { tagEnd += 1 }
                if tagEnd < count && sql[tagEnd] == UInt8(ascii: "$") {
                    let tag = Array(sql[index...tagEnd])
                    var probe = tagEnd + 1
                    while probe + tag.count <= count && !sql[probe..<(probe + tag.count)].elementsEqual(tag) { probe += 1 }
                    index = probe + tag.count - 1
                }
            default:
                break
            }
            index += 1
        }
        return count
    }

    private static func examine(_ sql: UnsafeRawBufferPointer, _ start: Int, _ end: Int, _ effects: inout StatementEffects) {
        var words = Words(sql, start, end)
        guard let first = words.next() else { return }
        switch first {
        case "declare":
            // Only WITH HOLD cursors outlive their transaction; HOLD comes before FOR.
            while let word = words.next(), word != "for" {
                if word == "hold" { effects.creates.insert(.heldCursor); break }
            }
        case "close", "drop", "unlisten":
            effects.mayRelease = true
        case "deallocate":
            effects.mayRelease = true
            var word = words.next()
            if word == "prepare" { word = words.next() }
            if word == "all" { effects.deallocatesAll = true }
        case "discard":
            effects.mayRelease = true
            if words.next() == "all" {
                effects.settings.append(.resetAll)
                effects.deallocatesAll = true
            }
        case "create":
            var word = words.next()
            if word == "global" || word == "local" { word = words.next() }
            if word == "temp" || word == "temporary" { effects.creates.insert(.tempTable) }
        case "prepare":
            if words.next() != "transaction" { effects.creates.insert(.preparedStatement) }
        case "listen":
            effects.creates.insert(.listen)
        case "set":
            if let change = setting(&words, sql, end) { effects.settings.append(change) }
        case "reset":
            guard let name = words.next() else { return }
            effects.settings.append(name == "all" ? .resetAll : .reset(name: name))
        default:
            functionCalls(sql, start, end, &effects)
        }
    }

    /// `SET [SESSION] name {=|TO} value` → the name and the raw value text. `SET LOCAL` and `SET TRANSACTION`
    /// last one transaction only; `SET TIME ZONE x` is `TimeZone`, which PostgreSQL reports by itself.
    private static func setting(_ words: inout Words, _ sql: UnsafeRawBufferPointer, _ end: Int) -> StatementEffects.SettingChange? {
        guard var name = words.next() else { return nil }
        if name == "session" {
            guard let next = words.next() else { return nil }
            if next == "authorization" { return .set(name: "session authorization", value: words.rest()) }
            name = next
        }
        if name == "local" || name == "transaction" || name == "constraints" { return nil }
        if name == "time" { return nil } // SET TIME ZONE: TimeZone is a reported parameter, kept by the varcache
        if name == "role" { return .set(name: "role", value: words.rest()) }
        words.skipSpaces()
        guard words.consume(UInt8(ascii: "=")) || words.next() == "to" else { return nil }
        let value = words.rest()
        return value.isEmpty ? nil : .set(name: name, value: value)
    }

    /// Functions anywhere in the statement, in one walk over its identifiers: session-level advisory locks (the
    /// `_xact_` ones end with the transaction), and `set_config(…)` whose third argument is not the literal
    /// `true` (transaction-local). Quotes are not skipped: a name in a string errs towards noticing.
    private static func functionCalls(_ sql: UnsafeRawBufferPointer, _ start: Int, _ end: Int, _ effects: inout StatementEffects) {
        var index = start
        while index < end {
            guard isIdentifier(sql[index]) else { index += 1; continue }
            var to = index + 1
            while to < end && isIdentifier(sql[to]) { to += 1 }
            let first = lower(sql[index]), length = to - index
            // "pg_" before lower-casing the word into a String: a table named like pgbench_accounts (16 letters,
            // a "p" first) cost an allocation per statement.
            if first == UInt8(ascii: "p"), length >= 16, length <= 27, lower(sql[index + 1]) == UInt8(ascii: "g"),
               sql[index + 2] == UInt8(ascii: "_") {
                switch lowercased(sql, index, to) {
                case "pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock_shared":
                    effects.creates.insert(.advisoryLock)
                case "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all":
                    effects.mayRelease = true
                default:
                    break
                }
            } else if first == UInt8(ascii: "s"), length == 10, lowercased(sql, index, to) == "set_config",
                      !effects.opaqueSetting, let close = setConfigIsSessionWide(sql, after: to, end) {
                effects.opaqueSetting = close.sessionWide
                to = close.end
            }
            index = to
        }
    }

    /// Reads the arguments of a `set_config` call that starts after `from`: whether its last argument is anything
    /// but the literal `true`, and where the call ends. Nil when no parenthesis follows (not a call).
    private static func setConfigIsSessionWide(_ sql: UnsafeRawBufferPointer, after from: Int, _ end: Int) -> (sessionWide: Bool, end: Int)? {
        var cursor = from
        while cursor < end && sql[cursor] == UInt8(ascii: " ") { cursor += 1 }
        guard cursor < end, sql[cursor] == UInt8(ascii: "(") else { return nil }
        var depth = 0
        var lastComma = cursor
        var close = end
        var position = cursor
        while position < end {
            let byte = sql[position]
            if byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"") {
                position += 1
                while position < end && sql[position] != byte { position += 1 }
            } else if byte == UInt8(ascii: "(") {
                depth += 1
            } else if byte == UInt8(ascii: ")") {
                depth -= 1
                if depth == 0 { close = position; break }
            } else if byte == UInt8(ascii: ","), depth == 1 {
                lastComma = position
            }
            position += 1
        }
        var words = Words(sql, lastComma + 1, close)
        let local = words.next() == "true" && words.next() == nil
        return (!local, min(close + 1, end))
    }

    /// The bytes `from..<to` as a lower-cased String, written in place: keywords fit a small string, so looking
    /// at every Query's first word allocates nothing.
    static func lowercased(_ sql: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> String {
        String(unsafeUninitializedCapacity: to - from) { buffer in
            for offset in 0..<(to - from) { buffer[offset] = lower(sql[from + offset]) }
            return to - from
        }
    }

    @inline(__always) static func lower(_ byte: UInt8) -> UInt8 {
        byte >= 65 && byte <= 90 ? byte + 32 : byte
    }

    @inline(__always) static func isIdentifier(_ byte: UInt8) -> Bool {
        (byte >= 97 && byte <= 122) || (byte >= 65 && byte <= 90) || (byte >= 48 && byte <= 57) || byte == 95 || byte == 36 || byte >= 128
    }

    /// Lower-cased words (identifiers, dotted names, quoted identifiers) of one statement, skipping comments.
    struct Words {
        let sql: UnsafeRawBufferPointer
        var index: Int
        let end: Int

        init(_ sql: UnsafeRawBufferPointer, _ start: Int, _ end: Int) {
            self.sql = sql
            self.index = start
            self.end = end
        }

        mutating func skipSpaces() {
            while index < end {
                let byte = sql[index]
                if byte == 32 || byte == 9 || byte == 10 || byte == 13 || byte == 12 {
                    index += 1
                } else if byte == UInt8(ascii: "-"), index + 1 < end, sql[index + 1] == UInt8(ascii: "-") {
                    while index < end && sql[index] != 10 { index += 1 }
                } else if byte == UInt8(ascii: "/"), index + 1 < end, sql[index + 1] == UInt8(ascii: "*") {
                    index += 2
                    while index + 1 < end && !(sql[index] == UInt8(ascii: "*") && sql[index + 1] == UInt8(ascii: "/")) { index += 1 }
                    index += 2
                } else {
                    return
                }
            }
        }

        mutating func consume(_ byte: UInt8) -> Bool {
            guard index < end, sql[index] == byte else { return false }
            index += 1
            return true
        }

        mutating func next() -> String? {
            skipSpaces()
            guard index < end else { return nil }
            if sql[index] == UInt8(ascii: "\"") {
                var to = index + 1
                while to < end && sql[to] != UInt8(ascii: "\"") { to += 1 }
                let word = String(decoding: sql[(index + 1)..<min(to, end)], as: UTF8.self)
                index = min(to + 1, end)
                return word
            }
            var to = index
            while to < end && (SessionStateScanner.isIdentifier(sql[to]) || sql[to] == UInt8(ascii: ".")) { to += 1 }
            guard to > index else { return nil }
            let word = SessionStateScanner.lowercased(sql, index, to)
            index = to
            return word
        }

        /// The rest of the statement, trimmed, as written.
        mutating func rest() -> String {
            skipSpaces()
            var to = end
            while to > index, [32, 9, 10, 13].contains(sql[to - 1]) { to -= 1 }
            return index < to ? String(decoding: sql[index..<to], as: UTF8.self) : ""
        }
    }
}

/// The query Shoal runs on a pinned client's server connection, between the client's transactions, to learn
/// exactly which session state is still there. One row of five counts, in `SessionStateKinds` order.
public enum SessionStateProbe {
    public static let sql = """
        SELECT (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
        (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND granted), \
        (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()), \
        (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
        (SELECT count(*) FROM pg_catalog.pg_listening_channels())
        """

    /// The kinds whose count in the probe's row is above zero (nil if the row does not parse).
    public static func kinds(fromDataRow body: ByteBuffer) -> SessionStateKinds? {
        var body = body
        guard let columns = body.readInteger(as: Int16.self), columns == 5 else { return nil }
        var kinds: SessionStateKinds = []
        let all: [SessionStateKinds] = [.heldCursor, .advisoryLock, .tempTable, .preparedStatement, .listen]
        for kind in all {
            guard let length = body.readInteger(as: Int32.self), length > 0, let text = body.readString(length: Int(length)),
                  let count = Int(text) else { return nil }
            if count > 0 { kinds.insert(kind) }
        }
        return kinds
    }
}

/// What one virtual user does per request. Statements run in order; `$n` parameters come from `parameters`.
public struct Statement: Sendable {
    public var sql: String
    /// Produces the parameter values for one execution (nil: simple query protocol, like pg_query).
    public var parameters: (@Sendable (inout RandomSource) -> [String])?

    public init(_ sql: String, parameters: (@Sendable (inout RandomSource) -> [String])? = nil) {
        self.sql = sql
        self.parameters = parameters
    }
}

public struct Workload: Sendable {
    public var name: String
    public var statements: [Statement]
    /// true: connect, run the statements, disconnect (a PHP request); false: keep the connection (pg_pconnect).
    public var connectPerRequest: Bool
    /// Run the statements once, then keep the connection open and say nothing more (an idle pg_pconnect worker
    /// after its last page: what the pooler keeps per client once a client has sent something).
    public var idleAfterFirstRequest = false

    public init(name: String, statements: [Statement], connectPerRequest: Bool, idleAfterFirstRequest: Bool = false) {
        self.name = name
        self.statements = statements
        self.connectPerRequest = connectPerRequest
        self.idleAfterFirstRequest = idleAfterFirstRequest
    }

    /// A Moodle page view: a few indexed SELECTs, then a short transaction logging the view and touching the user.
    public static func phpRequest(users: Int, courses: Int, persistent: Bool) -> Workload {
        Workload(
            name: persistent ? "php-persistent" : "php-request",
            statements: [
                Statement("SELECT id, username, firstname, lastname, lastaccess FROM mdl_user WHERE id = $1") { ["\($0.next(in: 1...users))"] },
                Statement("SELECT value FROM mdl_config WHERE name = $1") { _ in ["version"] },
                Statement("SELECT id, fullname, shortname FROM mdl_course WHERE id = $1") { ["\($0.next(in: 1...courses))"] },
                Statement("SELECT count(*) FROM mdl_user_enrolments WHERE userid = $1") { ["\($0.next(in: 1...users))"] },
                Statement("BEGIN"),
                Statement("INSERT INTO mdl_logstore_standard_log (userid, courseid, action, timecreated) VALUES ($1, $2, 'viewed', $3)") {
                    ["\($0.next(in: 1...users))", "\($0.next(in: 1...courses))", "\($0.next(in: 1_700_000_000...1_800_000_000))"]
                },
                Statement("UPDATE mdl_user SET lastaccess = $1 WHERE id = $2") {
                    ["\($0.next(in: 1_700_000_000...1_800_000_000))", "\($0.next(in: 1...users))"]
                },
                Statement("COMMIT"),
            ],
            connectPerRequest: !persistent
        )
    }

    /// Connect and stay connected, saying nothing: what an idle pg_pconnect worker costs a pooler.
    public static let idle = Workload(name: "idle", statements: [], connectPerRequest: false)

    /// One long statement (a VALUES list of `rows` rows, 4 bytes each: 8,192 rows make 32 KB, like a Moodle
    /// page's largest IN lists or inserts), then idle.
    public static func idleAfterQuery(rows: Int) -> Workload {
        let values = Array(repeating: "(1)", count: max(1, rows)).joined(separator: ",")
        return Workload(name: "idle-after-query", statements: [Statement("SELECT count(*) FROM (VALUES \(values)) v")],
                        connectPerRequest: false, idleAfterFirstRequest: true)
    }

    public static func selectOnly(users: Int) -> Workload {
        Workload(
            name: "select-only",
            statements: [Statement("SELECT id, username FROM mdl_user WHERE id = $1") { ["\($0.next(in: 1...users))"] }],
            connectPerRequest: false
        )
    }

    public enum ScriptError: Error, CustomStringConvertible {
        case empty(String)
        public var description: String {
            switch self {
            case .empty(let path): return "script \(path) has no statements"
            }
        }
    }

    /// A user script: SQL statements separated by `;` at line ends, `--` comment lines ignored, run with the
    /// simple query protocol over persistent connections.
    public static func script(text: String, path: String, connectPerRequest: Bool) throws -> Workload {
        var statements: [Statement] = []
        var current = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("--") || trimmed.isEmpty { continue }
            current += (current.isEmpty ? "" : "\n") + line
            if trimmed.hasSuffix(";") {
                statements.append(Statement(String(current.dropLast(current.hasSuffix(";") ? 1 : 0))))
                current = ""
            }
        }
        if !current.trimmingCharacters(in: .whitespaces).isEmpty { statements.append(Statement(current)) }
        guard !statements.isEmpty else { throw ScriptError.empty(path) }
        return Workload(name: "script", statements: statements, connectPerRequest: connectPerRequest)
    }
}

/// A small fast generator (xorshift*), one per harness: the random values only shape the load.
public struct RandomSource: Sendable {
    private var state: UInt64

    public init(seed: UInt64 = 0x9E37_79B9_7F4A_7C15) { state = seed == 0 ? 1 : seed }

    public mutating func next(in range: ClosedRange<Int>) -> Int {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        let value = state &* 2_685_821_657_736_338_717
        return range.lowerBound + Int(value % UInt64(range.count))
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: CharacterSetLike) -> String {
        String(self.drop(while: set.contains).reversed().drop(while: set.contains).reversed())
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: CharacterSetLike) -> String {
        String(self).trimmingCharacters(in: set)
    }
}

/// Just blanks; keeps this file free of Foundation.
struct CharacterSetLike {
    static let whitespaces = CharacterSetLike()
    func contains(_ character: Character) -> Bool { character == " " || character == "\t" || character == "\r" }
}

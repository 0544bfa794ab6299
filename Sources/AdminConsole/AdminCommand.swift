/// One statement of the admin console, parsed with PgBouncer's grammar (`src/admin.c`):
/// `CMD [ARG] [;]`, `SET key = value`, `SELECT x` as an alias of `SHOW x`. Words are `[0-9a-z_]+`
/// (case-insensitive) or `"double quoted"` with `""` escapes; a SET value may also be `'single quoted'`.
public enum AdminCommand: Equatable, Sendable {
    /// SHOW with its subject lower-cased (`pools`, `stats_totals`, …; validity is checked when it runs).
    case show(String)
    case pause(database: String?)
    case resume(database: String?)
    case suspend
    case disable(database: String)
    case enable(database: String)
    case reconnect(database: String?)
    case kill(database: String?)
    case killClient(id: String)
    case waitClose(database: String?)
    case reload
    case set(key: String, value: String)
    case shutdown(ShutdownMode)

    public enum ShutdownMode: String, Sendable {
        /// Exit at once, without a reply.
        case immediate
        /// Pause, close the TCP listeners, exit when no server connection remains.
        case waitForServers = "WAIT_FOR_SERVERS"
        /// Close the TCP listeners, exit when no client remains.
        case waitForClients = "WAIT_FOR_CLIENTS"
    }

    /// Whether stats_users may run it (every SHOW but FDS; SET only for the fake parameters, checked later).
    public var isReadOnly: Bool {
        if case .show(let subject) = self { return subject != "fds" }
        return false
    }

    /// The word PgBouncer logs as `<CMD> command issued`.
    public var logName: String {
        switch self {
        case .show: return "SHOW"
        case .pause: return "PAUSE"
        case .resume: return "RESUME"
        case .suspend: return "SUSPEND"
        case .disable: return "DISABLE"
        case .enable: return "ENABLE"
        case .reconnect: return "RECONNECT"
        case .kill: return "KILL"
        case .killClient: return "KILL_CLIENT"
        case .waitClose: return "WAIT_CLOSE"
        case .reload: return "RELOAD"
        case .set: return "SET"
        case .shutdown(.immediate): return "SHUTDOWN"
        case .shutdown(let mode): return "SHUTDOWN \(mode.rawValue)"
        }
    }
}

/// A console error: its text is sent as ERROR with SQLSTATE 08P01 (F0000 for a failed RELOAD).
public struct AdminError: Error, Equatable, Sendable {
    public var message: String
    public var code: String

    public init(_ message: String, code: String = "08P01") {
        self.message = message
        self.code = code
    }

    public static let badArguments = AdminError("bad arguments")
}

public enum AdminCommandParser {
    /// Parses one statement. An empty statement (only spaces and `;`) returns nil: it gets an EmptyQueryResponse.
    public static func parse(_ text: String) throws(AdminError) -> AdminCommand? {
        var lexer = Lexer(text)
        lexer.skipSpaces()
        if lexer.atEndOfStatement { return nil }
        let invalid = AdminError("invalid command '\(text)', use SHOW HELP;")
        guard let command = try lexer.word() else { throw invalid }
        lexer.skipSpaces()
        let verb = command.lowercased()
        if verb == "set" {
            guard let key = try lexer.word() else { throw invalid }
            lexer.skipSpaces()
            if lexer.consume("=") {
            } else if let to = try lexer.word(), to.lowercased() == "to" {
            } else {
                throw invalid
            }
            lexer.skipSpaces()
            guard let value = try lexer.word(allowSingleQuotes: true) else { throw invalid }
            lexer.skipSpaces()
            guard lexer.atEndOfStatement else { throw invalid }
            guard key.count <= 63, value.count <= 255 else { throw AdminError.badArguments }
            return .set(key: key, value: value)
        }
        let argument = try lexer.word()
        lexer.skipSpaces()
        guard lexer.atEndOfStatement else { throw invalid }
        guard command.count <= 15, (argument?.count ?? 0) <= 63 else { throw AdminError.badArguments }
        return try build(verb: verb, argument: argument, original: text)
    }

    private static func build(verb: String, argument: String?, original: String) throws(AdminError) -> AdminCommand {
        func none(_ command: AdminCommand) throws(AdminError) -> AdminCommand {
            guard argument == nil else { throw AdminError.badArguments }
            return command
        }
        switch verb {
        case "show", "select":
            return .show(argument?.lowercased() ?? "help")
        case "pause": return .pause(database: argument)
        case "resume": return .resume(database: argument)
        case "suspend": return try none(.suspend)
        case "disable":
            guard let argument else { throw AdminError("a database is required") }
            return .disable(database: argument)
        case "enable":
            guard let argument else { throw AdminError("a database is required") }
            return .enable(database: argument)
        case "reconnect": return .reconnect(database: argument)
        case "kill": return .kill(database: argument)
        case "kill_client":
            guard let argument else { throw AdminError("invalid client pointer supplied") }
            return .killClient(id: argument)
        case "wait_close": return .waitClose(database: argument)
        case "reload": return try none(.reload)
        case "shutdown":
            guard let argument else { return .shutdown(.immediate) }
            guard let mode = AdminCommand.ShutdownMode(rawValue: argument.uppercased()), mode != .immediate else {
                throw AdminError.badArguments
            }
            return .shutdown(mode)
        default:
            throw AdminError("invalid command '\(original)', use SHOW HELP;")
        }
    }
}

/// Reads words off a statement the way PgBouncer's console regex does.
private struct Lexer {
    private let scalars: [Unicode.Scalar]
    private var index = 0

    init(_ text: String) { scalars = Array(text.unicodeScalars) }

    mutating func skipSpaces() {
        while index < scalars.count, scalars[index].properties.isWhitespace { index += 1 }
    }

    /// Only spaces and semicolons remain.
    var atEndOfStatement: Bool {
        scalars[index...].allSatisfy { $0 == ";" || $0.properties.isWhitespace }
    }

    mutating func consume(_ character: Unicode.Scalar) -> Bool {
        guard index < scalars.count, scalars[index] == character else { return false }
        index += 1
        return true
    }

    /// A bare word, a "quoted" word, or (for SET values) a 'quoted' string. Nil when none starts here.
    mutating func word(allowSingleQuotes: Bool = false) throws(AdminError) -> String? {
        guard index < scalars.count else { return nil }
        let first = scalars[index]
        if first == "\"" || (allowSingleQuotes && first == "'") {
            index += 1
            var result = String.UnicodeScalarView()
            while index < scalars.count {
                let scalar = scalars[index]
                index += 1
                if scalar == first {
                    // A doubled quote is an escaped one.
                    if index < scalars.count, scalars[index] == first { result.append(first); index += 1; continue }
                    return String(result)
                }
                result.append(scalar)
            }
            throw AdminError.badArguments // unterminated quote
        }
        var result = String.UnicodeScalarView()
        while index < scalars.count, Self.isWordScalar(scalars[index]) {
            result.append(scalars[index])
            index += 1
        }
        return result.isEmpty ? nil : String(result)
    }

    private static func isWordScalar(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "0"..."9", "a"..."z", "A"..."Z", "_": return true
        default: return false
        }
    }
}

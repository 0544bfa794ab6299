/// userlist.txt: `"user" "secret"` per line, `""` inside a field is a quote, `;` starts a comment line.
/// Like PgBouncer, a broken line stops parsing and keeps the users read before it.
public struct UserList: Sendable, Equatable {
    public var secrets: [String: String]

    public init(secrets: [String: String] = [:]) { self.secrets = secrets }

    public struct ParseResult: Sendable {
        public var userList: UserList
        public var problem: ConfigDiagnostic?
    }

    public static func parse(_ text: String, file: String) -> ParseResult {
        var secrets: [String: String] = [:]
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var rest = rawLine.drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if rest.isEmpty || rest.first == ";" || rest.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { continue }
            func field() -> String? {
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                var value = ""
                while let c = rest.first {
                    rest = rest.dropFirst()
                    if c == "\"" {
                        if rest.first == "\"" { value.append("\""); rest = rest.dropFirst() } else { return value }
                    } else {
                        value.append(c)
                    }
                }
                return nil
            }
            guard let user = field() else {
                return ParseResult(userList: UserList(secrets: secrets), problem: ConfigDiagnostic(.error, file: file, line: lineNumber, "broken auth file"))
            }
            rest = rest.drop(while: { $0 != "\"" })
            guard let secret = field() else {
                return ParseResult(userList: UserList(secrets: secrets), problem: ConfigDiagnostic(.error, file: file, line: lineNumber, "broken auth file"))
            }
            guard user.utf8.count < 128 else {
                return ParseResult(userList: UserList(secrets: secrets), problem: ConfigDiagnostic(.error, file: file, line: lineNumber, "username too long in auth file"))
            }
            guard secret.utf8.count < 65531 else {
                return ParseResult(userList: UserList(secrets: secrets), problem: ConfigDiagnostic(.error, file: file, line: lineNumber, "password too long in auth file"))
            }
            secrets[user] = secret
        }
        return ParseResult(userList: UserList(secrets: secrets), problem: nil)
    }
}

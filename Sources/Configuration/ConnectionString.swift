/// Parses `[databases]`/`[users]` values: space-separated `key=value`, a value may be `'quoted'` with `''` for a quote.
public enum ConnectionString {
    public struct SyntaxError: Error, Equatable { public var message: String }

    public static func parse(_ text: String) throws(SyntaxError) -> [(String, String)] {
        var pairs: [(String, String)] = []
        var chars = Substring(text)
        func skipSpaces() { chars = chars.drop(while: { $0 == " " || $0 == "\t" }) }
        skipSpaces()
        while !chars.isEmpty {
            let key = chars.prefix(while: { $0 != "=" && $0 != " " && $0 != "\t" })
            chars = chars.dropFirst(key.count)
            skipSpaces()
            guard !key.isEmpty, chars.first == "=" else { throw SyntaxError(message: "syntax error in connection string") }
            chars = chars.dropFirst()
            skipSpaces()
            var value = ""
            if chars.first == "'" {
                chars = chars.dropFirst()
                var closed = false
                while let c = chars.first {
                    chars = chars.dropFirst()
                    if c == "'" {
                        if chars.first == "'" { value.append("'"); chars = chars.dropFirst() } else { closed = true; break }
                    } else {
                        value.append(c)
                    }
                }
                guard closed else { throw SyntaxError(message: "syntax error in connection string") }
            } else {
                let raw = chars.prefix(while: { $0 != " " && $0 != "\t" })
                chars = chars.dropFirst(raw.count)
                value = String(raw)
            }
            guard !value.isEmpty else { throw SyntaxError(message: "syntax error in connection string") }
            pairs.append((String(key), value))
            skipSpaces()
        }
        return pairs
    }
}

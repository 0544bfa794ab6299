/// Parses the startup `options` parameter the way PostgreSQL does for GUCs:
/// `-c name=value`, `-cname=value` and `--name=value`, separated by blanks, `\` escaping the next character.
public enum StartupOptions {
    public enum ParseError: Error, Equatable, Sendable {
        /// Something other than a GUC setting (e.g. `-d 5`).
        case unsupportedSyntax(String)
    }

    public static func parse(_ text: String) throws(ParseError) -> [(String, String)] {
        // Split into words honouring backslash escapes.
        var words: [String] = []
        var current = ""
        var hasWord = false
        var escaping = false
        for character in text {
            if escaping {
                current.append(character)
                escaping = false
                hasWord = true
            } else if character == "\\" {
                escaping = true
                hasWord = true
            } else if character == " " || character == "\t" || character == "\n" {
                if hasWord { words.append(current); current = ""; hasWord = false }
            } else {
                current.append(character)
                hasWord = true
            }
        }
        if hasWord { words.append(current) }

        var settings: [(String, String)] = []
        var index = 0
        while index < words.count {
            let word = words[index]
            var assignment: String
            if word == "-c" {
                index += 1
                guard index < words.count else { throw .unsupportedSyntax(text) }
                assignment = words[index]
            } else if word.hasPrefix("-c") {
                assignment = String(word.dropFirst(2))
            } else if word.hasPrefix("--") {
                assignment = String(word.dropFirst(2))
            } else {
                throw .unsupportedSyntax(text)
            }
            guard let equals = assignment.firstIndex(of: "="), equals != assignment.startIndex else {
                throw .unsupportedSyntax(text)
            }
            let name = assignment[..<equals].replacingOccurrences(of: "-", with: "_")
            assignment = String(assignment[assignment.index(after: equals)...])
            settings.append((name, assignment))
            index += 1
        }
        return settings
    }
}

extension Substring {
    fileprivate func replacingOccurrences(of target: Character, with replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }
}

import Foundation

/// One `key = value` line of an INI file, with where it came from.
public struct IniEntry: Sendable, Equatable {
    public var section: String
    public var key: String
    public var value: String
    public var file: String
    public var line: Int
}

/// A problem found while reading configuration, always with its place.
public struct ConfigDiagnostic: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Severity: Sendable { case warning, error }
    public var severity: Severity
    public var file: String
    public var line: Int
    public var key: String?
    public var message: String

    public init(_ severity: Severity, file: String, line: Int, key: String? = nil, _ message: String) {
        self.severity = severity
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        let place = "\(file):\(line)"
        if let key { return "\(message) (\(place), key \(key))" }
        return "\(message) (\(place))"
    }
}

/// Reads PgBouncer's INI dialect: `;`/`#` comment lines, indentation ignored, no inline comments,
/// `%include path` (relative to the working directory, nesting up to 10), quoted keys with single quotes.
public struct IniReader {
    public typealias FileLoader = (String) throws -> String
    private let load: FileLoader

    public init(load: @escaping FileLoader = { try String(contentsOfFile: $0, encoding: .utf8) }) {
        self.load = load
    }

    /// How this reader reads files (the files a config names, such as auth_hba_file, are read the same way).
    public var fileLoader: FileLoader { load }

    public func read(path: String) throws(ConfigDiagnostic) -> [IniEntry] {
        var entries: [IniEntry] = []
        var section = ""
        try read(path: path, includedFrom: nil, depth: 0, section: &section, into: &entries)
        return entries
    }

    private func read(path: String, includedFrom: (String, Int)?, depth: Int, section: inout String, into entries: inout [IniEntry]) throws(ConfigDiagnostic) {
        let text: String
        do {
            text = try load(path)
        } catch {
            if let (file, line) = includedFrom {
                throw ConfigDiagnostic(.error, file: file, line: line, "error processing include file in configuration: cannot read \(path)")
            }
            throw ConfigDiagnostic(.error, file: path, line: 0, "cannot load config file: \(error.localizedDescription)")
        }
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine.drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" })
            let trimmed = line.trimmingTrailingWhitespace()
            if trimmed.isEmpty || trimmed.first == ";" || trimmed.first == "#" { continue }
            if trimmed.hasPrefix("%include ") || trimmed.hasPrefix("%include\t") {
                let target = trimmed.dropFirst("%include".count).trimmingCharacters(in: .whitespaces)
                guard depth < 10 else {
                    throw ConfigDiagnostic(.error, file: path, line: lineNumber, "include nesting level too deep, stopping loading")
                }
                try read(path: target, includedFrom: (path, lineNumber), depth: depth + 1, section: &section, into: &entries)
                continue
            }
            if trimmed.first == "[" {
                guard trimmed.last == "]" else {
                    throw ConfigDiagnostic(.error, file: path, line: lineNumber, "syntax error in configuration, stopping loading")
                }
                section = String(trimmed.dropFirst().dropLast())
                guard ["pgbouncer", "databases", "users", "peers"].contains(section) else {
                    throw ConfigDiagnostic(.error, file: path, line: lineNumber, "invalid section \"\(section)\" in configuration")
                }
                continue
            }
            guard let (key, value) = Self.splitKeyValue(trimmed) else {
                throw ConfigDiagnostic(.error, file: path, line: lineNumber, "syntax error in configuration, stopping loading")
            }
            entries.append(IniEntry(section: section, key: key, value: value, file: path, line: lineNumber))
        }
    }

    /// `key = value` where key is `[A-Za-z0-9_.*-]+` or `'quoted'`.
    static func splitKeyValue(_ line: String) -> (String, String)? {
        var rest = Substring(line)
        var key = ""
        if rest.first == "'" {
            rest = rest.dropFirst()
            guard let close = rest.firstIndex(of: "'") else { return nil }
            key = String(rest[..<close])
            rest = rest[rest.index(after: close)...]
        } else {
            let allowed: (Character) -> Bool = { $0.isASCII && ($0.isLetter || $0.isNumber || "_.*-".contains($0)) }
            let keyPart = rest.prefix(while: allowed)
            guard !keyPart.isEmpty else { return nil }
            key = String(keyPart)
            rest = rest.dropFirst(keyPart.count)
        }
        rest = rest.drop(while: { $0 == " " || $0 == "\t" })
        guard rest.first == "=" else { return nil }
        rest = rest.dropFirst().drop(while: { $0 == " " || $0 == "\t" })
        return (key, String(rest))
    }
}

extension Substring {
    func trimmingTrailingWhitespace() -> String {
        var end = endIndex
        while end > startIndex, let c = self[index(before: end)].unicodeScalars.first, c == " " || c == "\t" || c == "\r" {
            end = index(before: end)
        }
        return String(self[startIndex..<end])
    }
}

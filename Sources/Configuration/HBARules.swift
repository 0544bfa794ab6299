import Foundation

/// auth_hba_file: PgBouncer's subset of pg_hba.conf, read once per load and evaluated per login.
///
/// Record types `local`, `host`, `hostssl`, `hostnossl`; database `all`, `sameuser`, names, `@file`; user `all`,
/// names, `@file`; address `a.b.c.d/bits`, an IPv6 prefix, or an address and a mask; methods `trust`, `reject`,
/// `md5`, `password`, `scram-sha-256`, `peer`, `cert`. The first rule that matches decides; none matching rejects.
///
/// One deliberate difference from PgBouncer: a line PgBouncer would skip with a warning (an unknown keyword, an
/// address with bits outside its mask, `map=`) makes the whole file refused here, with its file and line. A skipped
/// `reject` line, or one whose address can never match, would quietly let in whom it was written to keep out; a
/// refused file keeps the rules already running (RELOAD) or stops start-up.
public struct HBARules: Sendable, Equatable {
    public enum ConnectionType: String, Sendable { case local, host, hostssl, hostnossl }

    public enum Method: String, Sendable, CaseIterable {
        case trust, reject, md5, password, peer, cert
        case scramSHA256 = "scram-sha-256"
    }

    /// The database or user column.
    public struct Names: Sendable, Equatable {
        public var all = false
        /// Database column only: the database named like the user.
        public var sameUser = false
        public var names: Set<String> = []

        func matches(_ name: String, pair: String) -> Bool {
            all || (sameUser && name == pair) || names.contains(name)
        }
    }

    /// An address range: 4 bytes (IPv4) or 16 (IPv6), with its mask.
    public struct AddressRange: Sendable, Equatable {
        public var base: [UInt8]
        public var mask: [UInt8]

        func contains(_ address: [UInt8]) -> Bool {
            guard address.count == base.count else { return false }
            for i in 0..<base.count where address[i] & mask[i] != base[i] { return false }
            return true
        }
    }

    public struct Rule: Sendable, Equatable {
        public var type: ConnectionType
        public var databases: Names
        public var users: Names
        /// nil for `local`.
        public var address: AddressRange?
        public var method: Method
        public var file: String
        public var line: Int
    }

    public var rules: [Rule]

    public init(rules: [Rule] = []) { self.rules = rules }

    /// Where a client comes from.
    public enum Peer: Sendable {
        case unixSocket
        /// 4 bytes (IPv4) or 16 (IPv6); an IPv4-mapped IPv6 address counts as the IPv4 one.
        case inet([UInt8])
    }

    /// The first rule matching this login, or nil (rejected: no rule matched).
    public func rule(for peer: Peer, tls: Bool, database: String, user: String) -> Rule? {
        var address: [UInt8]?
        if case .inet(let bytes) = peer {
            let mappedPrefix: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
            address = bytes.count == 16 && Array(bytes[0..<12]) == mappedPrefix ? Array(bytes[12...]) : bytes
        }
        for rule in rules {
            switch (rule.type, address) {
            case (.local, nil): break
            case (.local, _?), (_, nil): continue
            case (.hostssl, _?) where !tls, (.hostnossl, _?) where tls: continue
            case (_, let bytes?):
                guard rule.address?.contains(bytes) == true else { continue }
            }
            guard rule.databases.matches(database, pair: user), rule.users.matches(user, pair: database) else { continue }
            return rule
        }
        return nil
    }

    // MARK: Reading

    /// Reads `path` (and the `@file` lists it names, relative to its directory).
    public static func load(path: String, read: @escaping (String) throws -> String = { try String(contentsOfFile: $0, encoding: .utf8) })
        throws(ConfigDiagnostic) -> HBARules {
        let text: String
        do { text = try read(path) } catch {
            throw ConfigDiagnostic(.error, file: path, line: 0, key: "auth_hba_file", "cannot read hba file \(path)")
        }
        var rules: [Rule] = []
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var parser = LineParser(text: Substring(line), file: path, line: lineNumber, read: read)
            if let rule = try parser.rule() { rules.append(rule) }
        }
        return HBARules(rules: rules)
    }

    enum Token: Equatable {
        /// A bare word: may be a keyword.
        case word(String)
        /// A double-quoted name: never a keyword (`"all"` is a database called all).
        case quoted(String)
        case comma
    }

    struct LineParser {
        var tokens: [Token] = []
        var index = 0
        let file: String
        let line: Int
        let read: (String) throws -> String

        init(text: Substring, file: String, line: Int, read: @escaping (String) throws -> String) {
            self.file = file
            self.line = line
            self.read = read
            tokens = Self.tokenize(text)
        }

        func refuse(_ message: String) -> ConfigDiagnostic {
            ConfigDiagnostic(.error, file: file, line: line, key: "auth_hba_file", "hba line \(line): \(message)")
        }

        /// Splits at spaces, tabs and commas; `#` outside quotes ends the line; `""` inside quotes is a quote.
        /// An unterminated quote comes back as a word starting with `"`, which the name reader refuses.
        static func tokenize(_ text: Substring) -> [Token] {
            var tokens: [Token] = []
            var rest = text[...]
            while let c = rest.first {
                if c == " " || c == "\t" || c == "\r" { rest = rest.dropFirst(); continue }
                if c == "#" { break }
                if c == "," { tokens.append(.comma); rest = rest.dropFirst(); continue }
                if c == "\"" {
                    rest = rest.dropFirst()
                    var value = ""
                    var closed = false
                    while let q = rest.first {
                        rest = rest.dropFirst()
                        if q == "\"" {
                            if rest.first == "\"" { value.append("\""); rest = rest.dropFirst() } else { closed = true; break }
                        } else {
                            value.append(q)
                        }
                    }
                    tokens.append(closed ? .quoted(value) : .word("\"" + value))
                    continue
                }
                let end = rest.firstIndex(where: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "," || $0 == "#" || $0 == "\"" }) ?? rest.endIndex
                tokens.append(.word(String(rest[..<end])))
                rest = rest[end...]
            }
            return tokens
        }

        mutating func next() -> Token? {
            guard index < tokens.count else { return nil }
            defer { index += 1 }
            return tokens[index]
        }

        mutating func rule() throws(ConfigDiagnostic) -> Rule? {
            guard let first = next() else { return nil }
            guard case .word(let typeWord) = first, let type = ConnectionType(rawValue: typeWord) else {
                throw refuse("unknown type \(Self.describe(first)) (local, host, hostssl or hostnossl)")
            }
            var databases = Names()
            try names(into: &databases, isDatabase: true, depth: 0)
            var users = Names()
            try names(into: &users, isDatabase: false, depth: 0)
            var address: AddressRange?
            if type != .local { address = try addressRange() }
            guard let methodToken = next() else { throw refuse("no authentication method") }
            guard case .word(let methodWord) = methodToken, let method = Method(rawValue: methodWord) else {
                throw refuse("unsupported method \(Self.describe(methodToken)) (trust, reject, md5, password, scram-sha-256, peer or cert)")
            }
            if method == .peer && type != .local { throw refuse("peer authentication is only supported on local sockets") }
            if let extra = next() { throw refuse("unsupported parameters after the method: \(Self.describe(extra))") }
            return Rule(type: type, databases: databases, users: users, address: address, method: method, file: file, line: line)
        }

        static func describe(_ token: Token) -> String {
            switch token {
            case .word(let word): return "\"\(word)\""
            case .quoted(let name): return "\"\\\"\(name)\\\"\""
            case .comma: return "\",\""
            }
        }

        /// A comma-separated list of names and keywords.
        mutating func names(into names: inout Names, isDatabase: Bool, depth: Int) throws(ConfigDiagnostic) {
            while true {
                guard let token = next() else { throw refuse(isDatabase ? "no database column" : "no user column") }
                try add(token, to: &names, isDatabase: isDatabase, depth: depth)
                guard index < tokens.count, tokens[index] == .comma else { return }
                index += 1
            }
        }

        func add(_ token: Token, to names: inout Names, isDatabase: Bool, depth: Int) throws(ConfigDiagnostic) {
            switch token {
            case .comma:
                throw refuse("empty name in a list")
            case .quoted(let name):
                names.names.insert(name)
            case .word("all"):
                names.all = true
            case .word("sameuser") where isDatabase:
                names.sameUser = true
            case .word(let word) where isDatabase && ["samerole", "samegroup", "replication"].contains(word):
                throw refuse("\(word) is not supported")
            case .word(let word) where word.hasPrefix("+"):
                throw refuse("group names (\(word)) are not supported")
            case .word(let word) where word.hasPrefix("\""):
                throw refuse("unterminated quote")
            case .word(let word) where word.hasPrefix("@"):
                try include(String(word.dropFirst()), into: &names, isDatabase: isDatabase, depth: depth)
            case .word(let word):
                names.names.insert(word)
            }
        }

        /// `@file`: names separated by spaces, commas or lines, relative to the including file's directory.
        func include(_ name: String, into names: inout Names, isDatabase: Bool, depth: Int) throws(ConfigDiagnostic) {
            guard depth < 10 else { throw refuse("@file nesting too deep") }
            let directory = (file as NSString).deletingLastPathComponent
            let path = name.hasPrefix("/") || directory.isEmpty ? name : (directory as NSString).appendingPathComponent(name)
            let text: String
            do { text = try read(path) } catch { throw refuse("cannot read \(path)") }
            var lineNumber = 0
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                lineNumber += 1
                let parser = LineParser(text: Substring(line), file: path, line: lineNumber, read: read)
                for token in parser.tokens where token != .comma {
                    try parser.add(token, to: &names, isDatabase: isDatabase, depth: depth + 1)
                }
            }
        }

        /// `addr/bits`, or `addr mask`.
        mutating func addressRange() throws(ConfigDiagnostic) -> AddressRange {
            guard case .word(let word)? = next() else { throw refuse("did not find an address") }
            let parts = word.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let base = IPAddressText.bytes(String(parts[0])) else {
                throw refuse("failed to parse address \"\(parts[0])\" (an IPv4 or IPv6 address; host names are not supported)")
            }
            var mask: [UInt8]
            if parts.count == 2 {
                guard let bits = Int(parts[1]), bits >= 0, bits <= base.count * 8 else { throw refuse("invalid mask \"/\(parts[1])\"") }
                mask = [UInt8](repeating: 0, count: base.count)
                for i in 0..<bits { mask[i / 8] |= 0x80 >> UInt8(i % 8) }
            } else {
                guard case .word(let maskWord)? = next() else { throw refuse("did not find a mask") }
                guard let bytes = IPAddressText.bytes(maskWord), bytes.count == base.count else {
                    throw refuse("failed to parse mask \"\(maskWord)\"")
                }
                mask = bytes
            }
            for i in 0..<base.count where base[i] & ~mask[i] != 0 {
                // PgBouncer only warns, and the rule then never matches anyone: a reject rule that silently does nothing.
                throw refuse("address \(parts[0]) has bits outside its mask")
            }
            return AddressRange(base: base, mask: mask)
        }
    }
}

/// Numeric IPv4/IPv6 text to bytes, via inet_pton.
public enum IPAddressText {
    public static func bytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// What a pool's new clients are welcomed with: the ParameterStatus list of the pool's first server login and the
/// server-owned facts in it. Built once per pool, with each name's lower-cased key worked out here, because the
/// welcome runs on every client login (PHP's connect-per-request) and lower-casing every name on every login
/// showed in connect-path profiles.
public final class Welcome: Sendable {
    public struct Entry: Sendable {
        /// The name as PostgreSQL reported it, and its lower-cased form (`ParameterSet`'s key).
        public let name: String
        public let key: String
        public let value: String
    }

    public let entries: [Entry]
    public let facts: ServerFacts

    public init(reported: [(String, String)]) {
        entries = reported.map { Entry(name: $0.0, key: $0.0.lowercased(), value: $0.1) }
        facts = ServerFacts(reported: reported)
    }
}

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
    /// The server's values of the parameters tracked when the welcome was learnt (`baseTracked`): the parameter
    /// set of a client that chose none of them. Clients start from it and share its storage until they differ,
    /// instead of each building (and keeping, while idle) a dictionary of their own.
    private let base: ParameterSet
    private let baseTracked: Set<String>

    public init(reported: [(String, String)], tracked: Set<String>) {
        entries = reported.map { Entry(name: $0.0, key: $0.0.lowercased(), value: $0.1) }
        facts = ServerFacts(reported: reported)
        var base = ParameterSet()
        for entry in entries where tracked.contains(entry.key) { base.set(key: entry.key, name: entry.name, entry.value) }
        self.base = base
        baseTracked = tracked
    }

    /// A client's parameters once welcomed: the server's value for each tracked parameter the client did not
    /// choose, or chose with the same value spelled differently ("utf8": the server's spelling wins); the
    /// client's own value otherwise.
    public func welcomedParameters(client: ParameterSet, tracked: Set<String>) -> ParameterSet {
        guard tracked == baseTracked else {
            // The tracked names changed since the welcome was learnt (a RELOAD): work it out from the entries.
            var result = client
            for entry in entries where tracked.contains(entry.key) {
                if let chosen = result.value(forKey: entry.key), chosen.lowercased() != entry.value.lowercased() { continue }
                result.set(key: entry.key, name: entry.name, entry.value)
            }
            return result
        }
        var result = base
        for (key, chosen) in client.values {
            if let server = result.value(forKey: key), server.lowercased() == chosen.value.lowercased() { continue }
            result.set(key: key, name: chosen.name, chosen.value)
        }
        result.adoptSession(of: client)
        return result
    }
}

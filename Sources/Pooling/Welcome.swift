import NIOConcurrencyHelpers
import NIOCore
import PostgresWire

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
    /// Every entry's ParameterStatus with the server's value, encoded once: most of a login's welcome is these
    /// bytes, copied (`writeStatus`), instead of about fifteen messages encoded per login.
    private let status: ByteBuffer
    private let statusRanges: [Range<Int>]
    /// Entry index by key, to find the few entries a client's own parameters change.
    private let indexByKey: [String: Int]
    /// The last client's parameters and what they were welcomed with. A pool's clients usually send the same
    /// startup parameters (one application, one driver): the next such client gets the same set, storage and all,
    /// so clients and servers share one dictionary and every link compares two pointers (`ParameterSet.sharesStorage`).
    private let lastWelcomed = NIOLockedValueBox<(client: ParameterSet, welcomed: ParameterSet)?>(nil)

    public init(reported: [(String, String)], tracked: Set<String>) {
        entries = reported.map { Entry(name: $0.0, key: $0.0.lowercased(), value: $0.1) }
        facts = ServerFacts(reported: reported)
        var base = ParameterSet()
        for entry in entries where tracked.contains(entry.key) { base.set(key: entry.key, name: entry.name, entry.value) }
        self.base = base
        baseTracked = tracked
        var status = ByteBufferAllocator().buffer(capacity: 512)
        var ranges: [Range<Int>] = []
        var indexByKey: [String: Int] = [:]
        for (index, entry) in entries.enumerated() {
            let start = status.writerIndex
            status.writeParameterStatus(name: entry.name, value: entry.value)
            ranges.append(start..<status.writerIndex)
            indexByKey[entry.key] = index
        }
        self.status = status
        statusRanges = ranges
        self.indexByKey = indexByKey
    }

    /// Writes the ParameterStatus list for a client whose parameters were `client` before the welcome and are
    /// `welcomed` (from `welcomedParameters`) after it: each entry with the value `welcomed` holds, or the server's.
    public func writeStatus(into out: inout ByteBuffer, client: ParameterSet, welcomed: ParameterSet, tracked: Set<String>) {
        // Only an entry the client chose a value for can differ from the server's bytes, and only while the
        // tracked names are the ones `base` was built with; otherwise (a RELOAD since, or more than 64
        // entries) every entry is looked up and encoded.
        var changed: UInt64 = 0
        let fast = entries.count <= 64 && tracked == baseTracked
        if fast {
            for key in client.values.keys {
                guard let index = indexByKey[key] else { continue }
                changed |= 1 << UInt64(index)
            }
        }
        if fast && changed == 0 {
            out.writeImmutableBuffer(status)
            return
        }
        for (index, entry) in entries.enumerated() {
            if fast && changed & (1 << UInt64(index)) == 0 {
                _ = status.withUnsafeReadableBytes { out.writeBytes(UnsafeRawBufferPointer(rebasing: $0[statusRanges[index]])) }
            } else {
                out.writeParameterStatus(name: entry.name, value: welcomed.value(forKey: entry.key) ?? entry.value)
            }
        }
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
        if let last = lastWelcomed.withLockedValue({ $0 }), last.client.equalsToTheLetter(client) { return last.welcomed }
        var result = base
        for (key, chosen) in client.values {
            if let server = result.value(forKey: key), server.lowercased() == chosen.value.lowercased() { continue }
            result.set(key: key, name: chosen.name, chosen.value)
        }
        result.adoptSession(of: client)
        lastWelcomed.withLockedValue { $0 = (client, result) }
        return result
    }
}

/// What a server reports about itself (`ParameterSet.serverOwned`: in_hot_standby, server_version, …) as one
/// shared, immutable value. Servers whose facts agree share one instance, so the link path compares pointers;
/// when a client moves to a server whose facts differ (a promoted host, another replica), it is sent the
/// differing values as ParameterStatus, as PostgreSQL itself does when a reported value changes.
public final class ServerFacts: Sendable {
    public let entries: [(name: String, value: String)]

    /// Keeps only the server-owned parameters of `reported`, in name order.
    public init(reported: [(String, String)]) {
        entries = reported.filter { ParameterSet.serverOwned.contains($0.0.lowercased()) }
            .map { (name: $0.0, value: $0.1) }
            .sorted { $0.name.lowercased() < $1.name.lowercased() }
    }

    private init(entries: [(name: String, value: String)]) { self.entries = entries }

    public func sameValues(as other: ServerFacts) -> Bool {
        entries.count == other.entries.count
            && zip(entries, other.entries).allSatisfy { $0.name.lowercased() == $1.name.lowercased() && $0.value == $1.value }
    }

    /// Whether these facts hold `name` with exactly `value`.
    public func reports(_ name: String, _ value: String) -> Bool {
        entries.contains { $0.name.lowercased() == name.lowercased() && $0.value == value }
    }

    /// The entries of `self` a client told `other` has not seen (new or changed values).
    public func differences(from other: ServerFacts?) -> [(name: String, value: String)] {
        guard let other else { return entries }
        return entries.filter { !other.reports($0.name, $0.value) }
    }

    /// These facts with one reported change (a no-op for a name that is not server-owned).
    public func with(_ name: String, _ value: String) -> ServerFacts {
        guard ParameterSet.serverOwned.contains(name.lowercased()) else { return self }
        var updated = entries.filter { $0.name.lowercased() != name.lowercased() }
        updated.append((name: name, value: value))
        return ServerFacts(entries: updated.sorted { $0.name.lowercased() < $1.name.lowercased() })
    }
}

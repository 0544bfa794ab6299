import Histogram

/// What one target's run produced. Latencies in microseconds.
public struct TargetStats: Sendable {
    public var name: String
    public var requests = 0
    public var statements = 0
    public var errors: [String: Int] = [:]
    public var seconds = 0.0
    public var connect = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    public var query = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    public var request = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    /// Requests completed in each second of the run (all rounds laid end to end).
    public var perSecond: [Int] = []

    public init(name: String) { self.name = name }

    public var requestsPerSecond: Double { seconds > 0 ? Double(requests) / seconds : 0 }
    public var errorCount: Int { errors.values.reduce(0, +) }

    public mutating func add(_ other: TargetStats) {
        requests += other.requests
        statements += other.statements
        for (code, count) in other.errors { errors[code, default: 0] += count }
        seconds += other.seconds
        connect.add(other.connect)
        query.add(other.query)
        request.add(other.request)
        perSecond += other.perSecond
    }
}

extension Histogram where Count == UInt64 {
    /// p50, p90, p99, p99.9 and max, in microseconds (zeros when empty).
    public var summary: [UInt64] {
        guard totalCount > 0 else { return [0, 0, 0, 0, 0] }
        return [valueAtPercentile(50), valueAtPercentile(90), valueAtPercentile(99), valueAtPercentile(99.9), max]
    }
}

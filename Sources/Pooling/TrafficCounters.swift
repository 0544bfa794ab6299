/// What a pool has carried, as PgBouncer's SHOW STATS counts it, plus the duration histograms the Prometheus
/// endpoint exposes. The glue keeps one copy per pool per EventLoop, written only on that loop (no lock on the
/// forwarding path); readers visit each loop and add the copies up.
public struct TrafficCounters: Sendable, Equatable {
    /// Times a client was linked to a server (PgBouncer's server_assignment_count).
    public var serverAssignments: UInt64 = 0
    public var transactions: UInt64 = 0
    public var queries: UInt64 = 0
    /// Bytes from clients.
    public var bytesReceived: UInt64 = 0
    /// Bytes from servers to clients.
    public var bytesSent: UInt64 = 0
    public var transactionMicros: UInt64 = 0
    public var queryMicros: UInt64 = 0
    public var waitMicros: UInt64 = 0
    public var clientParses: UInt64 = 0
    public var serverParses: UInt64 = 0
    public var binds: UInt64 = 0
    public var clientLogins: UInt64 = 0
    public var serverConnects: UInt64 = 0
    public var serverConnectFailures: UInt64 = 0
    public var transactionDurations = DurationHistogram()
    public var queryDurations = DurationHistogram()
    public var waitDurations = DurationHistogram()

    public init() {}

    public mutating func add(_ other: TrafficCounters) {
        serverAssignments &+= other.serverAssignments
        transactions &+= other.transactions
        queries &+= other.queries
        bytesReceived &+= other.bytesReceived
        bytesSent &+= other.bytesSent
        transactionMicros &+= other.transactionMicros
        queryMicros &+= other.queryMicros
        waitMicros &+= other.waitMicros
        clientParses &+= other.clientParses
        serverParses &+= other.serverParses
        binds &+= other.binds
        clientLogins &+= other.clientLogins
        serverConnects &+= other.serverConnects
        serverConnectFailures &+= other.serverConnectFailures
        transactionDurations.add(other.transactionDurations)
        queryDurations.add(other.queryDurations)
        waitDurations.add(other.waitDurations)
    }

    public mutating func recordQuery(micros: UInt64) {
        queries &+= 1
        queryMicros &+= micros
        queryDurations.record(micros: micros)
    }

    public mutating func recordTransaction(micros: UInt64) {
        transactions &+= 1
        transactionMicros &+= micros
        transactionDurations.record(micros: micros)
    }

    public mutating func recordAssignment(waitMicros wait: UInt64) {
        serverAssignments &+= 1
        waitMicros &+= wait
        waitDurations.record(micros: wait)
    }

    /// The twelve figures of SHOW STATS_TOTALS, in its column order.
    public var pgbouncerTotals: [UInt64] {
        [serverAssignments, transactions, queries, bytesReceived, bytesSent, transactionMicros, queryMicros, waitMicros,
         clientParses, serverParses, binds, clientLogins]
    }

    /// SHOW STATS_AVERAGES from two totals `seconds` apart: counts and bytes per second; transaction and query
    /// time per item; wait time per assignment — PgBouncer's definitions.
    public func pgbouncerAverages(since earlier: TrafficCounters, seconds: Double) -> [UInt64] {
        func rate(_ now: UInt64, _ then: UInt64) -> UInt64 {
            guard seconds > 0, now >= then else { return 0 }
            return UInt64((Double(now - then) / seconds).rounded())
        }
        func mean(_ total: UInt64, _ totalThen: UInt64, _ count: UInt64, _ countThen: UInt64) -> UInt64 {
            guard count > countThen, total >= totalThen else { return 0 }
            return (total - totalThen) / (count - countThen)
        }
        return [
            rate(serverAssignments, earlier.serverAssignments), rate(transactions, earlier.transactions),
            rate(queries, earlier.queries), rate(bytesReceived, earlier.bytesReceived), rate(bytesSent, earlier.bytesSent),
            mean(transactionMicros, earlier.transactionMicros, transactions, earlier.transactions),
            mean(queryMicros, earlier.queryMicros, queries, earlier.queries),
            mean(waitMicros, earlier.waitMicros, serverAssignments, earlier.serverAssignments),
            rate(clientParses, earlier.clientParses), rate(serverParses, earlier.serverParses),
            rate(binds, earlier.binds), rate(clientLogins, earlier.clientLogins),
        ]
    }
}

/// A fixed-bucket histogram of durations, in the shape Prometheus exposes (upper bounds in seconds).
public struct DurationHistogram: Sendable, Equatable {
    /// Upper bounds in seconds: 100 µs to 60 s, roughly ×2.5 apart — a web request's queries sit in the first
    /// half, a report's or a lock wait's in the second.
    public static let upperBounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
    private static let upperBoundsMicros: [UInt64] = upperBounds.map { UInt64(($0 * 1_000_000).rounded()) }

    /// Observations per bucket (not cumulative); the last one is above every bound.
    public private(set) var counts = [UInt64](repeating: 0, count: DurationHistogram.upperBounds.count + 1)
    public private(set) var sumMicros: UInt64 = 0

    public init() {}

    public mutating func record(micros: UInt64) {
        var index = 0
        let bounds = Self.upperBoundsMicros
        while index < bounds.count && micros > bounds[index] { index += 1 }
        counts[index] &+= 1
        sumMicros &+= micros
    }

    public mutating func add(_ other: DurationHistogram) {
        for index in counts.indices { counts[index] &+= other.counts[index] }
        sumMicros &+= other.sumMicros
    }

    public var count: UInt64 { counts.reduce(0, &+) }

    /// Cumulative counts per upper bound, then the total (the `+Inf` bucket).
    public var cumulative: [UInt64] {
        var running: UInt64 = 0
        return counts.map { running &+= $0; return running }
    }
}

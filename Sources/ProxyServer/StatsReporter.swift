import NIOCore
import Pooling

/// Every stats_period: works out per-database averages over the period (SHOW STATS, STATS_AVERAGES) and,
/// with log_stats, logs PgBouncer's `stats:` line for the whole process.
final class StatsReporter: @unchecked Sendable {
    private let runtime: ShoalRuntime
    private var task: RepeatedTask?
    /// Touched on loop 0 only.
    private var previous: [String: TrafficCounters] = [:]
    private var previousAll = TrafficCounters()
    private var previousAt = NIODeadline.now()

    init(runtime: ShoalRuntime) { self.runtime = runtime }

    func start() {
        // Like PgBouncer, the period is read once at start-up.
        // Bounded above (31 years) so the nanoseconds fit in a TimeAmount: a larger value would trap.
        let period = min(max(1, runtime.config.statsPeriod), 1_000_000_000)
        task = runtime.loops[0].scheduleRepeatedTask(initialDelay: .seconds(Int64(period)), delay: .seconds(Int64(period))) { [weak self] _ in
            self?.tick()
        }
    }

    func stop() { task?.cancel() }

    private func tick() {
        runtime.trafficTotals().whenSuccess { [self] totals in
            let now = NIODeadline.now()
            let seconds = Double((now - previousAt).nanoseconds) / 1e9
            var byDatabase: [String: TrafficCounters] = [:]
            var all = TrafficCounters()
            for (key, counters) in totals {
                byDatabase[key.database, default: TrafficCounters()].add(counters)
                all.add(counters)
            }
            var averages: [String: [UInt64]] = [:]
            for (database, counters) in byDatabase {
                averages[database] = counters.pgbouncerAverages(since: previous[database] ?? TrafficCounters(), seconds: seconds)
            }
            runtime.statsAverages.withLockedValue { $0 = averages }
            if runtime.snapshot.config.logStats {
                // Dropped pools make totals go down; averages() treats that as zero.
                let a = all.pgbouncerAverages(since: previousAll, seconds: seconds)
                runtime.logger.info("stats: \(a[1]) xacts/s, \(a[2]) queries/s, \(a[8]) client parses/s, \(a[9]) server parses/s, \(a[10]) binds/s, \(a[11]) client logins/s, in \(a[3]) B/s, out \(a[4]) B/s, xact \(a[5]) us, query \(a[6]) us, wait \(a[7]) us")
            }
            previous = byDatabase
            previousAll = all
            previousAt = now
        }
    }
}

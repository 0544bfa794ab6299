import Foundation

/// The end-of-run table for people and the JSON for machines.
public enum Report {
    public static func table(_ results: [TargetStats], baseline: String?) -> String {
        let base = results.first { $0.name == baseline } ?? results.first
        var lines: [String] = []
        lines.append("| target | requests/s | vs \(base?.name ?? "-") | connect p50/p90/p99/p99.9/max (ms) | statement p50/p90/p99/p99.9/max (ms) | request p50/p99/max (ms) | errors |")
        lines.append("|---|---:|---:|---|---|---|---|")
        for stats in results {
            let ratio = base.map { $0.requestsPerSecond > 0 ? String(format: "%.2f", stats.requestsPerSecond / $0.requestsPerSecond) : "-" } ?? "-"
            let connect = stats.connect.totalCount > 0 ? milliseconds(stats.connect.summary) : "(persistent)"
            let request = stats.request.summary
            let errors = stats.errors.isEmpty ? "0" : stats.errors.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: " ")
            lines.append("| \(stats.name) | \(String(format: "%.0f", stats.requestsPerSecond)) | \(ratio) | \(connect) | \(milliseconds(stats.query.summary)) | \(milliseconds([request[0], request[2], request[4]])) | \(errors) |")
        }
        return lines.joined(separator: "\n")
    }

    static func milliseconds(_ values: [UInt64]) -> String {
        values.map { String(format: "%.2f", Double($0) / 1000) }.joined(separator: " / ")
    }

    public static func json(_ results: [TargetStats], workload: String, mode: String) -> String {
        func histogram(_ values: [UInt64]) -> [String: UInt64] {
            ["p50_us": values[0], "p90_us": values[1], "p99_us": values[2], "p999_us": values[3], "max_us": values[4]]
        }
        let targets: [[String: Any]] = results.map { stats in
            [
                "name": stats.name, "requests": stats.requests, "statements": stats.statements, "seconds": stats.seconds,
                "requests_per_second": stats.requestsPerSecond, "errors": stats.errors,
                "connect": histogram(stats.connect.summary), "statement": histogram(stats.query.summary),
                "request": histogram(stats.request.summary), "requests_per_second_series": stats.perSecond,
            ]
        }
        let document: [String: Any] = ["workload": workload, "mode": mode, "targets": targets]
        let data = (try? JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

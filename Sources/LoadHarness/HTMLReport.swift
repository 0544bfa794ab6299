import Foundation

extension Report {
    static let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

    /// A self-contained page: request latency by percentile (log scale) and requests per second over time.
    public static func html(_ results: [TargetStats], title: String) -> String {
        var page = "<!doctype html><meta charset=utf-8><title>\(escape(title))</title>"
        page += "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>"
        page += "<h1>\(escape(title))</h1>"
        page += "<table><tr><th>target</th><th>requests/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>errors</th></tr>"
        for stats in results {
            let s = stats.request.summary
            page += "<tr><td>\(escape(stats.name))</td><td>\(String(format: "%.0f", stats.requestsPerSecond))</td>"
            page += [s[0], s[2], s[3], s[4]].map { "<td>\(String(format: "%.2f", Double($0) / 1000))</td>" }.joined()
            page += "<td>\(stats.errorCount)</td></tr>"
        }
        page += "</table><h2>Request latency by percentile</h2>" + percentileChart(results)
        page += "<h2>Requests per second over time</h2>" + throughputChart(results)
        return page
    }

    static func percentileChart(_ results: [TargetStats]) -> String {
        let width = 720.0, height = 320.0, left = 60.0, bottom = 40.0
        let percentiles = [0.0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100]
        // x: log scale of 1/(1-p), as HdrHistogram plots do; y: log scale of milliseconds.
        func x(_ p: Double) -> Double { left + (width - left - 20) * log10(1 / max(1e-4, 1 - p / 100)) / 4 }
        let values = results.flatMap { stats in percentiles.map { Double(stats.request.valueAtPercentile($0)) / 1000 } }.filter { $0 > 0 }
        let low = log10(max(0.01, values.min() ?? 0.1)), high = log10(max(1, values.max() ?? 1)) + 0.1
        func y(_ ms: Double) -> Double { height - bottom - (height - bottom - 10) * (log10(max(0.01, ms)) - low) / max(0.1, high - low) }
        var svg = "<svg width=\(Int(width)) height=\(Int(height)) xmlns='http://www.w3.org/2000/svg'>"
        svg += "<line x1=\(left) y1=\(height - bottom) x2=\(width - 20) y2=\(height - bottom) stroke=black />"
        svg += "<line x1=\(left) y1=10 x2=\(left) y2=\(height - bottom) stroke=black />"
        for p in [50.0, 90, 99, 99.9, 99.99] {
            svg += "<text x=\(x(p)) y=\(height - bottom + 16) font-size=11 text-anchor=middle>p\(p == p.rounded() ? String(Int(p)) : String(p))</text>"
        }
        var tick = pow(10, floor(low))
        while log10(tick) <= high {
            svg += "<text x=\(left - 6) y=\(y(tick) + 4) font-size=11 text-anchor=end>\(tick >= 1 ? String(Int(tick)) : String(tick)) ms</text>"
            tick *= 10
        }
        for (index, stats) in results.enumerated() where stats.request.totalCount > 0 {
            let colour = colours[index % colours.count]
            let points = percentiles.dropLast().map { "\(x($0)),\(y(Double(stats.request.valueAtPercentile($0)) / 1000))" }.joined(separator: " ")
            svg += "<polyline fill=none stroke='\(colour)' stroke-width=2 points='\(points)' />"
            svg += "<text x=\(left + 10) y=\(20 + 16 * Double(index)) fill='\(colour)' font-size=12>\(escape(stats.name))</text>"
        }
        return svg + "</svg>"
    }

    static func throughputChart(_ results: [TargetStats]) -> String {
        let width = 720.0, height = 240.0, left = 60.0, bottom = 30.0
        let longest = max(1, results.map(\.perSecond.count).max() ?? 1)
        let peak = max(1, results.flatMap(\.perSecond).max() ?? 1)
        func x(_ second: Int) -> Double { left + (width - left - 20) * Double(second) / Double(max(1, longest - 1)) }
        func y(_ count: Int) -> Double { height - bottom - (height - bottom - 10) * Double(count) / Double(peak) }
        var svg = "<svg width=\(Int(width)) height=\(Int(height)) xmlns='http://www.w3.org/2000/svg'>"
        svg += "<line x1=\(left) y1=\(height - bottom) x2=\(width - 20) y2=\(height - bottom) stroke=black />"
        svg += "<text x=\(left - 6) y=\(y(peak) + 4) font-size=11 text-anchor=end>\(peak)/s</text>"
        svg += "<text x=\(width / 2) y=\(height - 8) font-size=11 text-anchor=middle>seconds (rounds laid end to end)</text>"
        for (index, stats) in results.enumerated() where !stats.perSecond.isEmpty {
            let points = stats.perSecond.enumerated().map { "\(x($0.offset)),\(y($0.element))" }.joined(separator: " ")
            svg += "<polyline fill=none stroke='\(colours[index % colours.count])' stroke-width=2 points='\(points)' />"
        }
        return svg + "</svg>"
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

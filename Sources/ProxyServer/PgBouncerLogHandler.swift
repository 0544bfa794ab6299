import Foundation
import Logging
import NIOConcurrencyHelpers

/// Writes log lines in PgBouncer's format, so existing greps and alerts keep working:
/// `2026-11-25 17:34:59.123 UTC [1234] LOG C-17: db/user@127.0.0.1:50000 login attempt: …`
/// The connection prefix travels in the `prefix` metadata key. Connections also carry structured keys
/// (`client`, `server`, `addr`, `pool`): with `log_format = json` every line is a JSON object holding them;
/// in PgBouncer's text format they are already in the prefix and left out. Other metadata is appended as `key=value`.
public struct PgBouncerLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let sink: LogSink

    /// Metadata that the text format shows through the prefix instead.
    static let structuredKeys: Set<String> = ["client", "server", "addr", "pool"]

    public init(label: String, sink: LogSink, level: Logger.Level) {
        self.sink = sink
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = self.metadata
        if let explicit = event.metadata { all.merge(explicit) { $1 } }
        let prefix = all.removeValue(forKey: "prefix")
        if sink.json {
            sink.writeJSON(level: event.level, message: event.message.description, metadata: all)
            return
        }
        var text = (prefix.map { "\($0) " } ?? "") + event.message.description
        let extra = all.filter { !Self.structuredKeys.contains($0.key) }
        if !extra.isEmpty {
            text += " " + extra.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        sink.write(level: event.level, text: text)
    }
}

/// Where log lines go: stderr (unless quiet) and an optional log file, reopened on reload.
public final class LogSink: @unchecked Sendable {
    private let lock = NIOLock()
    private var file: FileHandle?
    private let quiet: Bool
    private let pid = ProcessInfo.processInfo.processIdentifier

    private var _json = false

    public init(quiet: Bool, logfile: String?, json: Bool = false) {
        self.quiet = quiet
        reopen(logfile: logfile, json: json)
    }

    /// JSON lines instead of PgBouncer's text (log_format = json).
    var json: Bool { lock.withLock { _json } }

    public func reopen(logfile: String?, json: Bool = false) {
        lock.withLock {
            _json = json
            try? file?.close()
            file = nil
            guard let logfile, !logfile.isEmpty else { return }
            if !FileManager.default.fileExists(atPath: logfile) {
                FileManager.default.createFile(atPath: logfile, contents: nil)
            }
            file = FileHandle(forWritingAtPath: logfile)
            _ = try? file?.seekToEnd()
        }
    }

    func write(level: Logger.Level, text: String) {
        let line = "\(Self.timestamp()) [\(pid)] \(Self.levelName(level)) \(text.replacingOccurrences(of: "\n", with: "\n\t"))\n"
        emit(line)
    }

    /// One JSON object per line: time (UTC, ISO 8601), pid, PgBouncer's level name, message, then the metadata.
    func writeJSON(level: Logger.Level, message: String, metadata: Logger.Metadata) {
        var fields: [(String, String)] = [("time", Self.isoTimestamp()), ("pid", String(pid)), ("level", Self.levelName(level)), ("msg", message)]
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { fields.append((key, "\(value)")) }
        let body = fields.map { key, value in
            key == "pid" ? "\"pid\":\(value)" : "\"\(Self.jsonEscape(key))\":\"\(Self.jsonEscape(value))\""
        }.joined(separator: ",")
        emit("{\(body)}\n")
    }

    private func emit(_ line: String) {
        let data = Data(line.utf8)
        lock.withLock {
            if !quiet { FileHandle.standardError.write(data) }
            file?.write(data)
        }
    }

    static func levelName(_ level: Logger.Level) -> String {
        let levelName: String
        switch level {
        case .critical: levelName = "FATAL"
        case .error: levelName = "ERROR"
        case .warning: levelName = "WARNING"
        case .notice, .info: levelName = "LOG"
        case .debug: levelName = "DEBUG"
        case .trace: levelName = "NOISE"
        }
        return levelName
    }

    static func jsonEscape(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func isoTimestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(now.tv_nsec / 1_000_000))
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S", &parts)
        let base = String(cString: Array(buffer[..<length]) + [0])
        var zone = [CChar](repeating: 0, count: 16)
        let zoneLength = strftime(&zone, zone.count, "%Z", &parts)
        let zoneName = String(cString: Array(zone[..<zoneLength]) + [0])
        return String(format: "%@.%03d %@", base, Int(now.tv_nsec / 1_000_000), zoneName)
    }
}

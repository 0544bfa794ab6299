import Foundation
import Logging
import NIOConcurrencyHelpers

/// Writes log lines in PgBouncer's format, so existing greps and alerts keep working:
/// `2026-11-25 17:34:59.123 UTC [1234] LOG C-0x55d1…: db/user@127.0.0.1:50000 login attempt: …`
/// The connection prefix travels in the `prefix` metadata key; other metadata is appended as `key=value`.
public struct PgBouncerLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let sink: LogSink

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
        let prefix = all.removeValue(forKey: "prefix").map { "\($0) " } ?? ""
        var text = prefix + event.message.description
        if !all.isEmpty {
            text += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
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

    public init(quiet: Bool, logfile: String?) {
        self.quiet = quiet
        reopen(logfile: logfile)
    }

    public func reopen(logfile: String?) {
        lock.withLock {
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
        let levelName: String
        switch level {
        case .critical: levelName = "FATAL"
        case .error: levelName = "ERROR"
        case .warning: levelName = "WARNING"
        case .notice, .info: levelName = "LOG"
        case .debug: levelName = "DEBUG"
        case .trace: levelName = "NOISE"
        }
        let line = "\(Self.timestamp()) [\(pid)] \(levelName) \(text.replacingOccurrences(of: "\n", with: "\n\t"))\n"
        let data = Data(line.utf8)
        lock.withLock {
            if !quiet { FileHandle.standardError.write(data) }
            file?.write(data)
        }
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

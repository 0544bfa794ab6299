import NIOCore
import PostgresWire

/// A console result set: column names and types as PgBouncer declares them, rows of text (nil is NULL).
public struct ResultTable: Sendable, Equatable {
    public enum ColumnType: Int32, Sendable {
        case text = 25
        case int4 = 23
        case int8 = 20
        case numeric = 1700
        case timestamptz = 1184
        case bytea = 17
    }

    public struct Column: Sendable, Equatable {
        public var name: String
        public var type: ColumnType
    }

    public var columns: [Column]
    public var rows: [[String?]] = []
    public var tag: String

    /// `spec` lists `name:type` pairs (`t` text, `i` int4, `I` int8, `n` numeric, `T` timestamptz, `b` bytea).
    public init(_ spec: String, tag: String = "SHOW") {
        columns = spec.split(separator: " ").map { pair in
            let parts = pair.split(separator: ":")
            let type: ColumnType
            switch parts.count > 1 ? parts[1] : "t" {
            case "i": type = .int4
            case "I": type = .int8
            case "n": type = .numeric
            case "T": type = .timestamptz
            case "b": type = .bytea
            default: type = .text
            }
            return Column(name: String(parts[0]), type: type)
        }
        self.tag = tag
    }

    public mutating func append(_ row: [String?]) {
        precondition(row.count == columns.count, "Invalid state: row of \(row.count) values for \(columns.count) columns")
        rows.append(row)
    }

    public var columnNames: [String] { columns.map(\.name) }

    /// RowDescription, one DataRow per row, CommandComplete.
    public func write(into buffer: inout ByteBuffer) {
        writeDescription(into: &buffer)
        writeRows(into: &buffer)
    }

    public func writeDescription(into buffer: inout ByteBuffer) {
        buffer.writeRowDescription(columns: columns.map { (name: $0.name, typeOID: $0.type.rawValue) })
    }

    /// The DataRows and CommandComplete: what an extended-protocol Execute returns.
    public func writeRows(into buffer: inout ByteBuffer) {
        for row in rows { buffer.writeDataRow(row) }
        buffer.writeCommandComplete(tag)
    }
}

/// What a console statement answers, before it is written to the wire.
public enum AdminReply: Sendable, Equatable {
    case table(ResultTable)
    /// A bare CommandComplete (`PAUSE`, `RELOAD`, …), optionally after NOTICEs.
    case done(tag: String, notices: [String] = [])
    /// SHOW HELP: a NOTICE with the command list as its detail, then `SHOW`.
    case help(String)
    case error(AdminError)
    /// No reply at all (plain SHUTDOWN).
    case silent

    /// Describe's answer: the RowDescription of a result set, NoData for anything else.
    public func writeDescription(into buffer: inout ByteBuffer) {
        if case .table(let table) = self {
            table.writeDescription(into: &buffer)
        } else {
            buffer.writePostgresMessage(UInt8(ascii: "n")) { _ in }
        }
    }

    /// The whole reply; `described` leaves out a RowDescription already sent for Describe.
    public func write(into buffer: inout ByteBuffer, described: Bool = false) {
        switch self {
        case .table(let table):
            if described { table.writeRows(into: &buffer) } else { table.write(into: &buffer) }
        case .done(let tag, let notices):
            for notice in notices {
                buffer.writeErrorResponse(severity: "NOTICE", code: "00000", message: notice, notice: true)
            }
            buffer.writeCommandComplete(tag)
        case .help(let text):
            buffer.writeErrorResponse(severity: "NOTICE", code: "00000", message: "Console usage", detail: text, notice: true)
            buffer.writeCommandComplete("SHOW")
        case .error(let error):
            buffer.writeErrorResponse(severity: "ERROR", code: error.code, message: error.message)
        case .silent:
            break
        }
    }
}

// A model of one PostgreSQL backend for driving `LinkStateMachine` in tests and fuzz targets: it answers the
// requests `LinkLives` generates (simple and extended queries, errors, blocks, SET/RESET, COPY FROM STDIN) the way
// PostgreSQL does, and tracks the session settings they leave.
import Foundation
import NIOCore
import PostgresWire

/// One PostgreSQL backend: reads complete frontend messages, answers as PostgreSQL does.
public struct ModelBackend: Sendable {
    public init() {}
    public internal(set) var settings: [String: String] = [:]
    var committed: [String: String] = [:]
    enum Block { case none, open, failed }
    var block = Block.none
    var inCopy = false
    /// An extended batch hit an error: the rest up to Sync is skipped.
    var skippingToSync = false
    var input = ByteBuffer()
    public internal(set) var output = ByteBuffer()
    /// Requests read whose ReadyForQuery has not been written yet (a Query or batch in progress).
    var openUnit = false

    public var owesNothing: Bool { input.readableBytes == 0 && output.readableBytes == 0 && !inCopy && block == .none && !openUnit }

    public mutating func receive(_ bytes: ByteBuffer) {
        var bytes = bytes
        input.writeBuffer(&bytes)
        while input.readableBytes >= 5 {
            let type = input.getInteger(at: input.readerIndex, as: UInt8.self)!
            let length = Int(input.getInteger(at: input.readerIndex + 1, as: Int32.self)!)
            guard input.readableBytes >= 1 + length else { return }
            input.moveReaderIndex(forwardBy: 5)
            let body = input.readSlice(length: length - 4)!
            handle(type, body)
        }
        input.discardReadBytes()
    }

    mutating func handle(_ type: UInt8, _ body: ByteBuffer) {
        var body = body
        switch type {
        case FrontendMessage.query:
            let sql = body.readNullTerminatedString() ?? ""
            runQuery(sql)
        case FrontendMessage.parse:
            openUnit = true
            guard !skippingToSync else { return }
            _ = body.readNullTerminatedString()
            let sql = body.readNullTerminatedString() ?? ""
            if sql.contains("1/0") || block == .failed {
                error(endsUnit: false)
                skippingToSync = true
            } else {
                output.writePostgresMessage(BackendMessage.parseComplete) { _ in }
            }
        case FrontendMessage.bind:
            openUnit = true
            guard !skippingToSync else { return }
            output.writePostgresMessage(UInt8(ascii: "2")) { _ in }
        case FrontendMessage.execute:
            openUnit = true
            guard !skippingToSync else { return }
            output.writeDataRow(["1"])
            output.writeCommandComplete("SELECT 1")
        case FrontendMessage.sync:
            guard !inCopy else { return } // ignored in copy-in
            skippingToSync = false
            ready()
        case FrontendMessage.copyData:
            break
        case FrontendMessage.copyDone:
            guard inCopy else { return }
            inCopy = false
            output.writeCommandComplete("COPY 1")
            ready()
        default:
            break
        }
    }

    mutating func runQuery(_ sql: String) {
        openUnit = true
        var implicit = block == .none
        let before = settings
        for statement in sql.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }) where !statement.isEmpty {
            if block == .failed && !statement.hasPrefix("ROLLBACK") && !statement.hasPrefix("COMMIT") {
                output.writeErrorResponse(severity: "ERROR", code: "25P02", message: "current transaction is aborted")
                return ready()
            }
            let words = statement.split(separator: " ").map(String.init)
            switch words[0] {
            case "BEGIN":
                block = .open
                implicit = false
                output.writeCommandComplete("BEGIN")
            case "COMMIT":
                if block == .failed { settings = committed; output.writeCommandComplete("ROLLBACK") } else {
                    committed = settings
                    output.writeCommandComplete("COMMIT")
                }
                block = .none
            case "ROLLBACK":
                settings = committed
                block = .none
                output.writeCommandComplete("ROLLBACK")
            case "SET":
                settings[words[1]] = words[3]
                output.writeCommandComplete("SET")
            case "RESET":
                settings[words[1]] = nil
                output.writeCommandComplete("RESET")
            case "COPY":
                inCopy = true
                output.writePostgresMessage(BackendMessage.copyInResponse) { $0.writeInteger(UInt8(0)); $0.writeInteger(Int16(0)) }
                return
            case "SELECT" where statement.contains("1/0"):
                if implicit { settings = before } else { block = .failed }
                return error(endsUnit: true)
            default:
                output.writeDataRow(["1"])
                output.writeCommandComplete("SELECT 1")
            }
        }
        if block == .none { committed = settings }
        ready()
    }

    /// An ErrorResponse; a Query's ends with its ReadyForQuery, an extended batch's waits for the Sync.
    mutating func error(endsUnit: Bool) {
        output.writeErrorResponse(severity: "ERROR", code: "22012", message: "division by zero")
        if block == .open { block = .failed }
        if endsUnit { ready() }
    }

    mutating func ready() {
        if block == .none { committed = settings }
        openUnit = false
        output.writeReadyForQuery(block == .none ? .idle : block == .open ? .inTransaction : .failed)
    }
}


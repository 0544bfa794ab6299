import CLibPQ
import Testing
import Foundation

/// A thin blocking libpq client for tests — the same library PHP's pgsql driver uses.
final class PQConnection {
    let handle: OpaquePointer

    init(_ conninfo: String) throws {
        guard let handle = PQconnectdb(conninfo) else { throw TestFailure("PQconnectdb returned nil") }
        self.handle = handle
        guard PQstatus(handle) == CONNECTION_OK else {
            // deinit runs for a throwing class initialiser once all properties are set: it calls PQfinish.
            let message = String(cString: PQerrorMessage(handle))
            throw PQError(sqlState: nil, message: message)
        }
    }

    deinit { PQfinish(handle) }

    /// Runs a statement; returns rows as text (NULL as nil). Throws PQError with the SQLSTATE on error.
    @discardableResult
    func query(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        let result: OpaquePointer?
        if parameters.isEmpty {
            result = PQexec(handle, sql)
        } else {
            let cStrings = parameters.map { $0.map { strdup($0) } ?? nil }
            defer { cStrings.forEach { free($0) } }
            result = cStrings.withUnsafeBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                    PQexecParams(handle, sql, Int32(parameters.count), nil, $0, nil, nil, 0)
                }
            }
        }
        guard let result else { throw PQError(sqlState: nil, message: String(cString: PQerrorMessage(handle))) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            var rows: [[String?]] = []
            for row in 0..<PQntuples(result) {
                rows.append((0..<PQnfields(result)).map { column in
                    PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                })
            }
            return rows
        default:
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            // The connection's message accumulates what arrived (a FATAL, then the lost connection), as PHP's
            // pg_last_error shows it; the result's message alone may carry only the last part.
            let message = String(cString: PQresultErrorMessage(result)) + String(cString: PQerrorMessage(handle))
            throw PQError(sqlState: state, message: message)
        }
    }

    /// PQprepare: a named protocol-level statement (Parse with a name, then Sync).
    func prepare(_ name: String, _ sql: String) throws {
        guard let result = PQprepare(handle, name, sql, 0, nil) else { throw PQError(sqlState: nil, message: String(cString: PQerrorMessage(handle))) }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COMMAND_OK else {
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            throw PQError(sqlState: state, message: String(cString: PQresultErrorMessage(result)))
        }
    }

    /// PQexecPrepared: Bind/Execute/Sync of a named statement; returns the first column of the first row.
    func executePrepared(_ name: String, _ parameters: [String?]) throws -> String? {
        let cStrings = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { cStrings.forEach { free($0) } }
        let result = cStrings.withUnsafeBufferPointer { buffer in
            buffer.baseAddress.map { base in
                base.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                    PQexecPrepared(handle, name, Int32(parameters.count), $0, nil, nil, 0)
                }
            } ?? PQexecPrepared(handle, name, 0, nil, nil, nil, 0)
        }
        guard let result else { throw PQError(sqlState: nil, message: String(cString: PQerrorMessage(handle))) }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_TUPLES_OK || PQresultStatus(result) == PGRES_COMMAND_OK else {
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            throw PQError(sqlState: state, message: String(cString: PQresultErrorMessage(result)))
        }
        return PQntuples(result) > 0 && PQgetisnull(result, 0, 0) == 0 ? String(cString: PQgetvalue(result, 0, 0)) : nil
    }

    func scalar(_ sql: String, _ parameters: [String?] = []) throws -> String? {
        try query(sql, parameters).first?.first ?? nil
    }

    /// Asks the server (through whatever is in between) to cancel the running query.
    func cancel() -> Bool {
        guard let cancel = PQgetCancel(handle) else { return false }
        defer { PQfreeCancel(cancel) }
        var buffer = [CChar](repeating: 0, count: 256)
        return PQcancel(cancel, &buffer, 256) == 1
    }

    var socket: Int32 { PQsocket(handle) }
}

struct PQError: Error, CustomStringConvertible {
    var sqlState: String?
    var message: String
    var description: String { "\(sqlState ?? "-----"): \(message)" }
}

/// Connects expecting to be refused and returns libpq's message; a login that succeeds is recorded as an issue
/// (and returns "", so a message check on it fails too).
func refusal(_ conninfo: String, sourceLocation: SourceLocation = #_sourceLocation) -> String {
    do {
        _ = try PQConnection(conninfo)
        Issue.record("login accepted: \(conninfo)", sourceLocation: sourceLocation)
        return ""
    } catch let error as PQError {
        return error.message
    } catch {
        return "\(error)"
    }
}

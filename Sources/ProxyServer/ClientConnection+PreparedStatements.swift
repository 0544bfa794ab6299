import NIOCore
import Pooling
import PostgresWire

/// Named prepared statements across server connections: holding back incomplete statement messages, and
/// rewriting them with the server's names on the way out.
extension ClientConnection {
    // MARK: Prepared statements

    /// How much of `buffer` can go on now: everything up to a Query/Parse/Bind/Describe/Close (or a header) that
    /// is not complete in it. Other messages (CopyData, big Executes) stream through unbuffered.
    static func completeMessagesLength(_ buffer: ByteBuffer, continuing: Int, maxLength: Int) -> Int {
        let end = buffer.readableBytes
        var index = min(continuing, end)
        while index < end {
            guard end - index >= 5 else { return index }
            let type = buffer.getInteger(at: buffer.readerIndex + index, as: UInt8.self)!
            let length = Int(buffer.getInteger(at: buffer.readerIndex + index + 1, as: Int32.self)!)
            guard length >= 4 && length <= maxLength else { return end } // the scanner reports it
            switch type {
            case FrontendMessage.query, FrontendMessage.parse, FrontendMessage.bind, FrontendMessage.describe, FrontendMessage.close:
                if end - index < 1 + length { return index }
            default:
                break
            }
            index += 1 + length
        }
        return end
    }

    /// Sends client bytes that hold Parse/Bind/Describe/Close messages, with statement names mapped to the
    /// server's and Parses injected where this server lacks a statement.
    func sendRewritten(_ buffer: ByteBuffer, continuing: Int, to server: ServerConnection) {
        // Built only once a message needs rewriting: unnamed statements (PHP's pg_query_params) go as they came.
        var out: ByteBuffer?
        let end = buffer.readableBytes
        var index = min(continuing, end)
        var copyFrom = 0
        while index < end {
            guard end - index >= 5 else { break }
            let start = buffer.readerIndex + index
            let type = buffer.getInteger(at: start, as: UInt8.self)!
            let length = Int(buffer.getInteger(at: start + 1, as: Int32.self)!)
            let next = index + 1 + length
            if type == FrontendMessage.parse || type == FrontendMessage.bind || type == FrontendMessage.describe || type == FrontendMessage.close,
               next <= end {
                let body = buffer.getSlice(at: start + 5, length: length - 4)!
                switch statements.rewrite(type: type, body: body, batch: unitsSent, server: &server.statements,
                                          names: runtime.statementNames, capacity: preparedCapacity) {
                case .forward:
                    break
                case .replace(let messages, let expecting):
                    if out == nil { out = ByteBuffer(); out!.reserveCapacity(buffer.readableBytes + 64) }
                    var before = buffer.getSlice(at: buffer.readerIndex + copyFrom, length: index - copyFrom)!
                    out!.writeBuffer(&before)
                    for var message in messages { out!.writeBuffer(&message) }
                    expectations.append(expecting)
                    copyFrom = next
                    // What the server really parses: Shoal's injected Parses count, a reuse of a prepared one does not.
                    let injected = expecting.filter { $0.type == UInt8(ascii: "1") && $0.drop }.count
                    statsShard?.counters.serverParses &+= UInt64(injected)
                }
            } else if type == FrontendMessage.query || type == FrontendMessage.sync || type == FrontendMessage.functionCall {
                unitsSent += 1
            }
            index = next
        }
        guard var rewritten = out else { return server.send(buffer, flush: server.eventLoop !== eventLoop) }
        if copyFrom < end {
            var rest = buffer.getSlice(at: buffer.readerIndex + copyFrom, length: end - copyFrom)!
            rewritten.writeBuffer(&rest)
        }
        server.send(rewritten, flush: server.eventLoop !== eventLoop)
    }

    /// Server responses for rewritten messages: drop Shoal's own, forget statements whose Parse failed.
    func responsesSettled(_ cancelled: [ExpectedResponse], on server: ServerConnection) {
        for expected in cancelled {
            if let serverName = expected.serverName { server.statements.remove(serverName) }
            if let clientName = expected.clientName { statements.parseFailed(clientName: clientName) }
        }
    }
}

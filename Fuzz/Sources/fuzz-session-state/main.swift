// The session-state scanner (SET/RESET/DISCARD/LISTEN/PREPARE/advisory locks/temp tables/cursors WITH HOLD…) on
// any SQL text, and the probe's row parser on any DataRow body: nothing traps, and a statement's effects are the
// same whether they are read from a Query body, a Parse body or the text itself.
import FuzzDriver
import NIOCore
import Pooling

fuzz { input in
    let input = input
    let sql = input.prefix { $0 != 0 }
    let direct = sql.withUnsafeBytes { SessionStateScanner.scan($0) }
    var query = ByteBuffer(bytes: input)
    query.writeInteger(UInt8(0))
    precondition(SessionStateScanner.scanQuery(query) == direct, "Query body and text disagree")
    var parse = ByteBuffer()
    parse.writeBytes(Array("s1".utf8) + [0])
    parse.writeBytes(sql)
    parse.writeBytes([0, 0, 0])
    precondition(SessionStateScanner.scanParse(parse) == direct, "Parse body and text disagree")
    _ = SessionStateProbe.kinds(fromDataRow: ByteBuffer(bytes: input))
    return
}

import LinkModel
import NIOCore
import Pooling
import PostgresWire
import Testing

@Suite struct LostTransactionTests {
    /// The answer as message types, an error shown by its SQLSTATE and ReadyForQuery by its status.
    func answer(_ lost: inout LostTransaction, _ build: (inout ByteBuffer) -> Void) -> (messages: [String], consumed: Int, total: Int) {
        var input = ByteBuffer()
        build(&input)
        var out = ByteBuffer()
        let consumed = lost.respond(to: input, into: &out)
        var messages: [String] = []
        while let type = out.readInteger(as: UInt8.self), let length = out.readInteger(as: Int32.self),
              var body = out.readSlice(length: Int(length) - 4) {
            switch type {
            case BackendMessage.errorResponse: messages.append("E:" + ErrorFields(body: body).code)
            case BackendMessage.readyForQuery: messages.append("Z:" + String(UnicodeScalar(body.readInteger(as: UInt8.self)!)))
            case BackendMessage.commandComplete: messages.append("C:" + (body.readNullTerminatedString() ?? ""))
            default: messages.append(String(UnicodeScalar(type)))
            }
        }
        return (messages, consumed, input.readableBytes)
    }

    func lostInBlock(errorSent: Bool = true) -> LostTransaction {
        LostTransaction(inBlock: true, errorSent: errorSent, openBatch: false, message: "server conn crashed?", detail: "")
    }

    @Test func statementsFailUntilRollbackThenTheRestGoesToAServer() {
        var lost = lostInBlock()
        #expect(answer(&lost) { $0.writeQuery("INSERT INTO t VALUES (1)") }.messages == ["E:25P02", "Z:E"])
        let result = answer(&lost) {
            $0.writeQuery("ROLLBACK;")
            $0.writeQuery("SELECT 1")
        }
        #expect(result.messages == ["C:ROLLBACK", "Z:I"])
        #expect(lost.ended)
        // Only the ROLLBACK was consumed: the SELECT is for a server.
        var first = ByteBuffer()
        first.writeQuery("ROLLBACK;")
        #expect(result.consumed == first.readableBytes && result.total > result.consumed)
    }

    @Test func commitOfAFailedTransactionIsAnsweredRollbackAsPostgresDoes() {
        var lost = lostInBlock()
        #expect(answer(&lost) { $0.writeQuery("  commit") }.messages == ["C:ROLLBACK", "Z:I"])
    }

    /// Found by Benchmarks/faults.sh (backend-kill): a client that had its INSERT answered, then lost its server
    /// before COMMIT, got `ROLLBACK` for its COMMIT with no error — psycopg counts that as committed, and the
    /// row was not there. A COMMIT (simple or extended) the client sends without having heard of the loss fails.
    @Test func aCommitNeverToldOfTheLossFails() {
        var simple = lostInBlock(errorSent: false)
        #expect(answer(&simple) { $0.writeQuery("COMMIT") }.messages == ["E:08006", "Z:I"])
        #expect(simple.ended)
        var extended = lostInBlock(errorSent: false)
        let batch = answer(&extended) { $0.writeExtendedBatch("COMMIT") }
        #expect(batch.messages == ["E:08006", "Z:I"])
        #expect(extended.ended)
        // A ROLLBACK needs no error: the client wanted the transaction gone.
        var rollback = lostInBlock(errorSent: false)
        #expect(answer(&rollback) { $0.writeQuery("ROLLBACK") }.messages == ["C:ROLLBACK", "Z:I"])
    }

    @Test func theClientLearnsOfTheLostConnectionFirstWhenItWasIdleInTheBlock() {
        var lost = lostInBlock(errorSent: false)
        #expect(answer(&lost) { $0.writeQuery("UPDATE t SET n = 2") }.messages == ["E:08006", "Z:E"])
        #expect(answer(&lost) { $0.writeQuery("SELECT 1") }.messages == ["E:25P02", "Z:E"])
        #expect(answer(&lost) { $0.writeQuery("ROLLBACK TO SAVEPOINT a") }.messages == ["E:25P02", "Z:E"])
        #expect(answer(&lost) { $0.writeQuery("abort") }.messages == ["C:ROLLBACK", "Z:I"])
    }

    @Test func extendedBatchesFailOnceUpToSyncAndAnExtendedRollbackEndsIt() {
        var lost = lostInBlock()
        let batch = answer(&lost) { $0.writeExtendedBatch("SELECT $1") }
        #expect(batch.messages == ["E:25P02", "Z:E"])
        let rollback = answer(&lost) { $0.writeExtendedBatch("ROLLBACK") }
        #expect(rollback.messages == ["1", "2", "C:ROLLBACK", "Z:I"])
        #expect(lost.ended)
    }

    @Test func anOpenBatchOutsideABlockEndsAtItsSync() {
        var lost = LostTransaction(inBlock: false, errorSent: false, openBatch: true, message: "server conn crashed?", detail: "")
        #expect(!lost.ended)
        let rest = answer(&lost) {
            $0.writePostgresMessage(FrontendMessage.execute) { $0.writeCString(""); $0.writeInteger(Int32(0)) }
            $0.writePostgresMessage(FrontendMessage.sync) { _ in }
        }
        #expect(rest.messages == ["E:08006", "Z:I"] && lost.ended)
        #expect(LostTransaction(inBlock: false, errorSent: true, openBatch: false, message: "", detail: "").ended)
    }

    @Test func terminateIsLeftForTheConnection() {
        var lost = lostInBlock()
        let result = answer(&lost) { $0.writeTerminate() }
        #expect(result.messages.isEmpty && result.consumed == 0)
    }
}

extension ByteBuffer {
    /// Parse, Bind, Execute, Sync of `sql` on the unnamed statement and portal, as drivers send one statement.
    mutating func writeExtendedBatch(_ sql: String) {
        var batch = Wire.join(Wire.parse("", sql), Wire.bind(""), Wire.execute(), Wire.sync())
        writeBuffer(&batch)
    }
}

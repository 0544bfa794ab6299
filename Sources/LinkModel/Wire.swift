import NIOCore
import PostgresWire

/// Messages as drivers and PostgreSQL send them, for feeding `LinkStateMachine` (tests, `LinkLives`).
public enum Wire {
    public static func query(_ sql: String) -> ByteBuffer { var b = ByteBuffer(); b.writeQuery(sql); return b }
    public static func parse(_ name: String, _ sql: String) -> ByteBuffer {
        message(FrontendMessage.parse) { $0.writeCString(name); $0.writeCString(sql); $0.writeInteger(Int16(0)) }
    }
    public static func bind(_ statement: String) -> ByteBuffer {
        message(FrontendMessage.bind) {
            $0.writeCString(""); $0.writeCString(statement)
            $0.writeInteger(Int16(0)); $0.writeInteger(Int16(0)); $0.writeInteger(Int16(0))
        }
    }
    public static func execute() -> ByteBuffer { message(FrontendMessage.execute) { $0.writeCString(""); $0.writeInteger(Int32(0)) } }
    public static func sync() -> ByteBuffer { message(FrontendMessage.sync) { _ in } }
    public static func terminate() -> ByteBuffer { message(FrontendMessage.terminate) { _ in } }
    public static func copyData(_ size: Int) -> ByteBuffer { message(FrontendMessage.copyData) { $0.writeRepeatingByte(65, count: size) } }
    public static func copyDone() -> ByteBuffer { message(FrontendMessage.copyDone) { _ in } }

    public static func ready(_ status: TransactionStatus) -> ByteBuffer { var b = ByteBuffer(); b.writeReadyForQuery(status); return b }
    public static func complete(_ tag: String) -> ByteBuffer { var b = ByteBuffer(); b.writeCommandComplete(tag); return b }
    public static func error(_ code: String = "22012", _ text: String = "division by zero") -> ByteBuffer {
        var b = ByteBuffer(); b.writeErrorResponse(severity: "ERROR", code: code, message: text); return b
    }
    public static func row(_ value: String) -> ByteBuffer { var b = ByteBuffer(); b.writeDataRow([value]); return b }
    public static func parseComplete() -> ByteBuffer { message(BackendMessage.parseComplete) { _ in } }
    public static func bindComplete() -> ByteBuffer { message(UInt8(ascii: "2")) { _ in } }
    public static func copyIn() -> ByteBuffer {
        message(BackendMessage.copyInResponse) { $0.writeInteger(UInt8(0)); $0.writeInteger(Int16(0)) }
    }
    public static func parameterStatus(_ name: String, _ value: String) -> ByteBuffer {
        var b = ByteBuffer(); b.writeParameterStatus(name: name, value: value); return b
    }

    public static func message(_ type: UInt8, _ body: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var b = ByteBuffer(); b.writePostgresMessage(type, body); return b
    }

    public static func join(_ parts: ByteBuffer...) -> ByteBuffer {
        var out = ByteBuffer()
        for var part in parts { out.writeBuffer(&part) }
        return out
    }
}

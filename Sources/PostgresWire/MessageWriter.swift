import NIOCore

/// Writers for the messages Shoal synthesises itself. Forwarded traffic never passes through here.
extension ByteBuffer {
    /// Writes `type`, a length placeholder, the body, then patches the length.
    @inlinable
    public mutating func writePostgresMessage(_ type: UInt8, _ body: (inout ByteBuffer) -> Void) {
        writeInteger(type)
        let lengthIndex = writerIndex
        writeInteger(Int32(0))
        body(&self)
        setInteger(Int32(writerIndex - lengthIndex), at: lengthIndex)
    }

    @inlinable
    public mutating func writeCString(_ string: String) {
        writeString(string)
        writeInteger(UInt8(0))
    }

    // MARK: Backend messages (to clients)

    public mutating func writeAuthenticationOk() {
        writePostgresMessage(BackendMessage.authentication) { $0.writeInteger(Int32(0)) }
    }

    public mutating func writeAuthenticationCleartextPassword() {
        writePostgresMessage(BackendMessage.authentication) { $0.writeInteger(Int32(3)) }
    }

    public mutating func writeAuthenticationMD5Password(salt: [UInt8]) {
        writePostgresMessage(BackendMessage.authentication) {
            $0.writeInteger(Int32(5))
            $0.writeBytes(salt)
        }
    }

    public mutating func writeAuthenticationSASL(mechanisms: [String]) {
        writePostgresMessage(BackendMessage.authentication) {
            $0.writeInteger(Int32(10))
            for mechanism in mechanisms { $0.writeCString(mechanism) }
            $0.writeInteger(UInt8(0))
        }
    }

    public mutating func writeAuthenticationSASLContinue(_ data: [UInt8]) {
        writePostgresMessage(BackendMessage.authentication) {
            $0.writeInteger(Int32(11))
            $0.writeBytes(data)
        }
    }

    public mutating func writeAuthenticationSASLFinal(_ data: [UInt8]) {
        writePostgresMessage(BackendMessage.authentication) {
            $0.writeInteger(Int32(12))
            $0.writeBytes(data)
        }
    }

    public mutating func writeParameterStatus(name: String, value: String) {
        writePostgresMessage(BackendMessage.parameterStatus) {
            $0.writeCString(name)
            $0.writeCString(value)
        }
    }

    public mutating func writeBackendKeyData(processID: Int32, secretKey: Int32) {
        writePostgresMessage(BackendMessage.backendKeyData) {
            $0.writeInteger(processID)
            $0.writeInteger(secretKey)
        }
    }

    public mutating func writeReadyForQuery(_ status: TransactionStatus) {
        writePostgresMessage(BackendMessage.readyForQuery) { $0.writeInteger(status.rawValue) }
    }

    /// ErrorResponse or NoticeResponse with the fields PgBouncer sends: S (and V), C, M, and D when given.
    public mutating func writeErrorResponse(severity: String, code: String, message: String, detail: String? = nil, notice: Bool = false) {
        writePostgresMessage(notice ? BackendMessage.noticeResponse : BackendMessage.errorResponse) {
            $0.writeInteger(UInt8(ascii: "S")); $0.writeCString(severity)
            $0.writeInteger(UInt8(ascii: "V")); $0.writeCString(severity)
            $0.writeInteger(UInt8(ascii: "C")); $0.writeCString(code)
            $0.writeInteger(UInt8(ascii: "M")); $0.writeCString(message)
            if let detail { $0.writeInteger(UInt8(ascii: "D")); $0.writeCString(detail) }
            $0.writeInteger(UInt8(0))
        }
    }

    /// `newestVersion` is the whole version number (3.0 = 196608), as PostgreSQL sends it (PG_PROTOCOL_LATEST),
    /// whatever the protocol documentation's "newest minor version" suggests: libpq 18 reads it that way, and a
    /// bare 0 makes it give up on a server it could have spoken 3.0 with.
    public mutating func writeNegotiateProtocolVersion(newestVersion: Int32, unrecognized: [String]) {
        writePostgresMessage(BackendMessage.negotiateProtocolVersion) {
            $0.writeInteger(newestVersion)
            $0.writeInteger(Int32(unrecognized.count))
            for name in unrecognized { $0.writeCString(name) }
        }
    }

    public mutating func writeRowDescription(columns: [(name: String, typeOID: Int32)]) {
        writePostgresMessage(BackendMessage.rowDescription) {
            $0.writeInteger(Int16(columns.count))
            for column in columns {
                $0.writeCString(column.name)
                $0.writeInteger(Int32(0)); $0.writeInteger(Int16(0))
                $0.writeInteger(column.typeOID)
                $0.writeInteger(Int16(-1)); $0.writeInteger(Int32(-1)); $0.writeInteger(Int16(0))
            }
        }
    }

    public mutating func writeDataRow(_ values: [String?]) {
        writePostgresMessage(BackendMessage.dataRow) { $0.writeTextValues(values) }
    }

    /// A count, then each value with its length (-1 for NULL): DataRow's columns, Bind's parameters.
    mutating func writeTextValues(_ values: [String?]) {
        writeInteger(Int16(values.count))
        for value in values {
            if let value {
                writeInteger(Int32(value.utf8.count))
                writeString(value)
            } else {
                writeInteger(Int32(-1))
            }
        }
    }

    public mutating func writeCommandComplete(_ tag: String) {
        writePostgresMessage(BackendMessage.commandComplete) { $0.writeCString(tag) }
    }

    // MARK: Frontend messages (to servers)

    public mutating func writeStartupMessage(parameters: [(String, String)]) {
        let lengthIndex = writerIndex
        writeInteger(Int32(0))
        writeInteger(Int32(196608))
        for (key, value) in parameters {
            writeCString(key)
            writeCString(value)
        }
        writeInteger(UInt8(0))
        setInteger(Int32(writerIndex - lengthIndex), at: lengthIndex)
    }

    public mutating func writeCancelRequest(processID: Int32, secretKey: Int32) {
        writeInteger(Int32(16))
        writeInteger(StartupPacket.cancelRequestCode)
        writeInteger(processID)
        writeInteger(secretKey)
    }

    /// One statement with text parameters on the unnamed statement and portal (Parse, Bind, Describe, Execute,
    /// Sync): values are never spliced into the SQL. The Describe makes a RowDescription start the rows, as a
    /// simple Query's do.
    public mutating func writeBoundStatement(_ sql: String, parameters: [String?]) {
        writePostgresMessage(FrontendMessage.parse) { $0.writeCString(""); $0.writeCString(sql); $0.writeInteger(Int16(0)) }
        writePostgresMessage(FrontendMessage.bind) {
            $0.writeCString(""); $0.writeCString("")
            $0.writeInteger(Int16(0))
            $0.writeTextValues(parameters)
            $0.writeInteger(Int16(0))
        }
        writePostgresMessage(FrontendMessage.describe) { $0.writeInteger(UInt8(ascii: "P")); $0.writeCString("") }
        writePostgresMessage(FrontendMessage.execute) { $0.writeCString(""); $0.writeInteger(Int32(0)) }
        writePostgresMessage(FrontendMessage.sync) { _ in }
    }

    public mutating func writeQuery(_ sql: String) {
        writePostgresMessage(FrontendMessage.query) { $0.writeCString(sql) }
    }

    public mutating func writePasswordMessage(_ password: String) {
        writePostgresMessage(FrontendMessage.password) { $0.writeCString(password) }
    }

    public mutating func writeSASLInitialResponse(mechanism: String, data: [UInt8]) {
        writePostgresMessage(FrontendMessage.password) {
            $0.writeCString(mechanism)
            $0.writeInteger(Int32(data.count))
            $0.writeBytes(data)
        }
    }

    public mutating func writeSASLResponse(_ data: [UInt8]) {
        writePostgresMessage(FrontendMessage.password) { $0.writeBytes(data) }
    }

    /// SSLRequest: the 8-byte packet that asks the server for TLS before the startup packet.
    public mutating func writeSSLRequest() {
        writeInteger(Int32(8))
        writeInteger(StartupPacket.sslRequestCode)
    }

    public mutating func writeTerminate() {
        writePostgresMessage(FrontendMessage.terminate) { _ in }
    }
}

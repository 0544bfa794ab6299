import NIOCore

/// The fields of an ErrorResponse or NoticeResponse body, by their one-letter codes.
public struct ErrorFields: Sendable, Equatable {
    public var fields: [UInt8: String]

    public init(body: ByteBuffer) {
        var body = body
        var fields: [UInt8: String] = [:]
        while let code = body.readInteger(as: UInt8.self), code != 0 {
            guard let value = body.readNullTerminatedString() else { break }
            fields[code] = value
        }
        self.fields = fields
    }

    public var severity: String { fields[UInt8(ascii: "V")] ?? fields[UInt8(ascii: "S")] ?? "ERROR" }
    public var code: String { fields[UInt8(ascii: "C")] ?? "XX000" }
    public var message: String { fields[UInt8(ascii: "M")] ?? "" }
}

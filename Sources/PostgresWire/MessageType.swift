/// Message type bytes of the PostgreSQL v3 protocol that Shoal looks at.
/// Everything else is forwarded without being named.
public enum FrontendMessage {
    public static let query: UInt8 = UInt8(ascii: "Q")
    public static let parse: UInt8 = UInt8(ascii: "P")
    public static let bind: UInt8 = UInt8(ascii: "B")
    public static let execute: UInt8 = UInt8(ascii: "E")
    public static let describe: UInt8 = UInt8(ascii: "D")
    public static let close: UInt8 = UInt8(ascii: "C")
    public static let sync: UInt8 = UInt8(ascii: "S")
    public static let flush: UInt8 = UInt8(ascii: "H")
    public static let terminate: UInt8 = UInt8(ascii: "X")
    public static let functionCall: UInt8 = UInt8(ascii: "F")
    public static let copyData: UInt8 = UInt8(ascii: "d")
    public static let copyDone: UInt8 = UInt8(ascii: "c")
    public static let copyFail: UInt8 = UInt8(ascii: "f")
    /// PasswordMessage, SASLInitialResponse and SASLResponse all use 'p'.
    public static let password: UInt8 = UInt8(ascii: "p")
}

public enum BackendMessage {
    public static let authentication: UInt8 = UInt8(ascii: "R")
    public static let backendKeyData: UInt8 = UInt8(ascii: "K")
    public static let parameterStatus: UInt8 = UInt8(ascii: "S")
    public static let readyForQuery: UInt8 = UInt8(ascii: "Z")
    public static let errorResponse: UInt8 = UInt8(ascii: "E")
    public static let noticeResponse: UInt8 = UInt8(ascii: "N")
    public static let copyInResponse: UInt8 = UInt8(ascii: "G")
    public static let copyOutResponse: UInt8 = UInt8(ascii: "H")
    public static let copyBothResponse: UInt8 = UInt8(ascii: "W")
    public static let commandComplete: UInt8 = UInt8(ascii: "C")
    public static let parseComplete: UInt8 = UInt8(ascii: "1")
    public static let closeComplete: UInt8 = UInt8(ascii: "3")
    public static let rowDescription: UInt8 = UInt8(ascii: "T")
    public static let dataRow: UInt8 = UInt8(ascii: "D")
    public static let emptyQueryResponse: UInt8 = UInt8(ascii: "I")
    public static let negotiateProtocolVersion: UInt8 = UInt8(ascii: "v")
    public static let notificationResponse: UInt8 = UInt8(ascii: "A")
}

/// Transaction status carried by ReadyForQuery.
public enum TransactionStatus: UInt8, Sendable {
    case idle = 73 // 'I'
    case inTransaction = 84 // 'T'
    case failed = 69 // 'E'
}

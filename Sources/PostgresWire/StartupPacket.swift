import NIOCore

/// The untyped packets a client may send before its first typed message.
public enum StartupPacket: Equatable, Sendable {
    case sslRequest
    case gssEncRequest
    case cancel(processID: Int32, secretKey: Int32)
    /// Protocol 3.x with its parameters in the order sent. `minorVersion` above 0 asks for NegotiateProtocolVersion.
    case startup(minorVersion: UInt16, parameters: [(String, String)])

    public static func == (lhs: StartupPacket, rhs: StartupPacket) -> Bool {
        switch (lhs, rhs) {
        case (.sslRequest, .sslRequest), (.gssEncRequest, .gssEncRequest): return true
        case let (.cancel(a, b), .cancel(c, d)): return a == c && b == d
        case let (.startup(a, p), .startup(b, q)):
            return a == b && p.count == q.count && zip(p, q).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public static let sslRequestCode: Int32 = 80877103
    public static let gssEncRequestCode: Int32 = 80877104
    public static let cancelRequestCode: Int32 = 80877102
    /// PostgreSQL refuses startup packets above this size; so do we.
    public static let maxLength = 10_000
}

public enum StartupPacketError: Error, Equatable, Sendable {
    /// Length outside 8...maxLength, or an unknown request code. Carries up to 8 header bytes for the log.
    case badHeader([UInt8])
    case oldProtocolVersion
    case invalidLayout
}

/// Decodes one startup-phase packet from the front of `buffer`, or returns nil when more bytes are needed.
public enum StartupPacketDecoder {
    public static func decode(_ buffer: inout ByteBuffer) throws(StartupPacketError) -> StartupPacket? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self) else { return nil }
        // Copied only for the error (it is an allocation on every login otherwise).
        let start = buffer.readerIndex
        var headerBytes: [UInt8] { buffer.getBytes(at: start, length: min(8, buffer.writerIndex - start)) ?? [] }
        guard length >= 8, Int(length) <= StartupPacket.maxLength else { throw .badHeader(headerBytes) }
        guard buffer.readableBytes >= Int(length) else { return nil }
        var packet = buffer.readSlice(length: Int(length))!
        packet.moveReaderIndex(forwardBy: 4)
        let code = packet.readInteger(as: Int32.self)!
        switch code {
        case StartupPacket.sslRequestCode:
            guard length == 8 else { throw .badHeader(headerBytes) }
            return .sslRequest
        case StartupPacket.gssEncRequestCode:
            guard length == 8 else { throw .badHeader(headerBytes) }
            return .gssEncRequest
        case StartupPacket.cancelRequestCode:
            guard length == 16 else { throw .badHeader(headerBytes) }
            return .cancel(processID: packet.readInteger()!, secretKey: packet.readInteger()!)
        default:
            let major = UInt16(truncatingIfNeeded: code >> 16)
            let minor = UInt16(truncatingIfNeeded: code & 0xFFFF)
            if major == 2 || major == 1 { throw .oldProtocolVersion }
            guard major == 3 else { throw .badHeader(headerBytes) }
            return .startup(minorVersion: minor, parameters: try parseParameters(&packet))
        }
    }

    static func parseParameters(_ packet: inout ByteBuffer) throws(StartupPacketError) -> [(String, String)] {
        // key\0value\0 … \0 — the last byte must be the terminator.
        guard packet.readableBytes >= 1, packet.getInteger(at: packet.writerIndex - 1, as: UInt8.self) == 0 else {
            throw .invalidLayout
        }
        var parameters: [(String, String)] = []
        parameters.reserveCapacity(8) // user, database and a few settings: no regrowth on a typical login
        while true {
            guard let key = packet.readNullTerminatedString() else { throw .invalidLayout }
            if key.isEmpty { break }
            guard let value = packet.readNullTerminatedString() else { throw .invalidLayout }
            parameters.append((key, value))
        }
        guard packet.readableBytes == 0 else { throw .invalidLayout }
        return parameters
    }
}

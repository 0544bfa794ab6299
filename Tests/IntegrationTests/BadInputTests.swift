import Foundation
import NIOCore
import PostgresWire
import Testing

/// Bytes no client should send. Each gets an answer (or a silent close where PgBouncer closes silently),
/// and a normal client is served right after.
@Suite(.serialized) struct BadInputTests {
    /// Opens a TCP connection, sends `bytes`, and returns what came back before the close (or after 3 s).
    func exchange(port: Int, _ bytes: [UInt8], thenClose: Bool = false) throws -> [UInt8] {
        let client = try RawClient(port: port, receiveTimeout: 3)
        // Not `send`: Shoal may close before it has read everything, and what came back is the point.
        _ = bytes.withUnsafeBytes { Foundation.send(client.fd, $0.baseAddress, $0.count, 0) }
        if thenClose { shutdown(client.fd, Int32(SHUT_WR)) }
        return client.readAll()
    }

    func errorMessage(_ bytes: [UInt8]) -> (code: String, message: String)? {
        var buffer = ByteBuffer(bytes: bytes)
        while let type = buffer.readInteger(as: UInt8.self), let length = buffer.readInteger(as: Int32.self) {
            guard let body = buffer.readSlice(length: Int(length) - 4) else { return nil }
            if type == BackendMessage.errorResponse {
                let fields = ErrorFields(body: body)
                return (fields.code, fields.message)
            }
        }
        return nil
    }

    func int32(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }

    @Test func garbageAbsurdLengthsTruncatedPacketsAndOldProtocolsAreSurvived() async throws {
        let shoal = try await ShoalInstance()
        defer { Task { await shoal.stop() } }

        let garbage = try exchange(port: shoal.port, Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(errorMessage(garbage)?.message.hasPrefix("bad packet header") == true)
        #expect(errorMessage(garbage)?.code == "08P01")

        let absurd = try exchange(port: shoal.port, int32(Int32.max) + int32(196608))
        #expect(errorMessage(absurd)?.message.hasPrefix("bad packet header") == true)

        let tooShort = try exchange(port: shoal.port, int32(2) + int32(196608))
        #expect(errorMessage(tooShort)?.code == "08P01")

        // Half a startup packet, then the client goes away: nothing to answer, nothing must break.
        _ = try exchange(port: shoal.port, int32(40) + int32(196608) + Array("user\0po".utf8), thenClose: true)

        let v2 = try exchange(port: shoal.port, int32(9) + int32(2 << 16) + [0])
        #expect(errorMessage(v2)?.message == "old V2 protocol not supported")

        let unknownVersion = try exchange(port: shoal.port, int32(9) + int32(9 << 16 | 9) + [0])
        #expect(errorMessage(unknownVersion)?.message.hasPrefix("bad packet header") == true)

        let layout = try exchange(port: shoal.port, int32(17) + int32(196608) + Array("user\0abc\0".utf8))
        #expect(errorMessage(layout)?.message == "invalid startup packet layout: expected terminator as last byte")

        // A client logged in before the last probe must still be served after it.
        let login = try PQConnection(shoal.conninfo)
        // A 3.2 request is answered with NegotiateProtocolVersion, then authentication goes on.
        let negotiated = try exchange(port: shoal.port, int32(8 + 15) + int32(3 << 16 | 2) + Array("user\0postgres\0\0".utf8))
        #expect(negotiated.first == BackendMessage.negotiateProtocolVersion)
        // The version offered is 3.0 as a whole number (196608), as PostgreSQL sends it; libpq 18 checks it.
        #expect(negotiated.count >= 13 && Array(negotiated[5..<9]) == int32(3 << 16), "\(negotiated.prefix(16))")

        // Through all that, normal clients are served.
        let after = try PQConnection(shoal.conninfo)
        #expect(try after.scalar("select 'served'") == "served")
        #expect(try login.scalar("select 'still here'") == "still here")
    }

    @Test func silentAndStalledLoginsEndAtClientLoginTimeout() async throws {
        // Deadlines are kept by each loop's sweeper (no timer per connection); each stalled stage must still end.
        // Without tcp_defer_accept: with it the kernel holds a silent connection back (45 s) before Shoal sees it.
        let shoal = try await ShoalInstance { $0.clientLoginTimeout = 1; $0.tcpDeferAccept = false }
        defer { Task { await shoal.stop() } }
        func stalled(_ start: (RawClient) throws -> Void = { _ in }) throws -> (code: String, message: String)? {
            let client = try RawClient(port: shoal.port, receiveTimeout: 6)
            try start(client)
            return errorMessage(client.readAll())
        }
        let silent = try stalled()
        #expect(silent?.message == "client_login_timeout", "\(String(describing: silent))")
        let halfStartup = try stalled { try $0.send(self.int32(40) + self.int32(196608) + Array("user\0po".utf8)) }
        #expect(halfStartup?.message == "client_login_timeout", "\(String(describing: halfStartup))")
        // A whole startup packet, then no answer to the SASL request.
        let midAuthentication = try stalled { try $0.sendStartup() }
        #expect(midAuthentication?.message == "client_login_timeout", "\(String(describing: midAuthentication))")
        #expect(try PQConnection(shoal.conninfo).scalar("select 'served'") == "served")
    }

    @Test func absurdMessageLengthAfterLoginIsAProtocolViolation() async throws {
        let shoal = try await ShoalInstance { $0.authType = .trust; $0.maxPacketSize = 1 << 20 }
        defer { Task { await shoal.stop() } }
        var startup = ByteBuffer()
        startup.writeStartupMessage(parameters: [("user", "postgres"), ("database", "postgres")])
        var query = ByteBuffer()
        query.writeInteger(FrontendMessage.query)
        query.writeInteger(Int32(50_000_000))
        let answer = try exchange(port: shoal.port, Array(startup.readableBytesView) + Array(query.readableBytesView))
        let error = errorMessage(answer)
        #expect(error?.code == "08P01")
        #expect(error?.message.hasPrefix("bad packet header") == true)
        let after = try PQConnection(shoal.conninfo)
        #expect(try after.scalar("select 1") == "1")
    }
}

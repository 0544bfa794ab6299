import NIOCore
import PostgresWire
import Testing

struct RecordingVisitor: FrameVisitor {
    var starts: [(UInt8, Int, Int)] = []
    var bodies: [(UInt8, [UInt8])] = []
    var wanted: Set<UInt8> = [UInt8(ascii: "Z")]
    var stopAt: UInt8? = nil
    func wantsBody(type: UInt8) -> Bool { wanted.contains(type) }
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        if type == stopAt { return false }
        starts.append((type, length, offset))
        return true
    }
    mutating func messageBody(type: UInt8, body: ByteBuffer) { bodies.append((type, Array(body.readableBytesView))) }
}

@Suite struct FrameScannerTests {
    func frames() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeCommandComplete("SELECT 1")
        buffer.writeReadyForQuery(.inTransaction)
        buffer.writeDataRow([String(repeating: "x", count: 1000)])
        buffer.writeReadyForQuery(.idle)
        return buffer
    }

    @Test func findsEveryMessageInOneBuffer() throws {
        var scanner = FrameScanner()
        var visitor = RecordingVisitor()
        let buffer = frames()
        #expect(try scanner.scan(buffer, visitor: &visitor) == buffer.readableBytes)
        #expect(visitor.starts.map(\.0) == [UInt8(ascii: "C"), UInt8(ascii: "Z"), UInt8(ascii: "D"), UInt8(ascii: "Z")])
        #expect(visitor.bodies.map(\.1) == [[UInt8(ascii: "T")], [UInt8(ascii: "I")]])
        #expect(scanner.atBoundary)
    }

    @Test func sameResultWhenSplitAtEveryByte() throws {
        let whole = frames()
        var scanner = FrameScanner()
        var visitor = RecordingVisitor()
        for index in 0..<whole.readableBytes {
            _ = try scanner.scan(whole.getSlice(at: index, length: 1)!, visitor: &visitor)
        }
        #expect(visitor.starts.map(\.0) == [UInt8(ascii: "C"), UInt8(ascii: "Z"), UInt8(ascii: "D"), UInt8(ascii: "Z")])
        #expect(visitor.bodies.map(\.1) == [[UInt8(ascii: "T")], [UInt8(ascii: "I")]])
        #expect(scanner.atBoundary)
    }

    @Test func rejectsAbsurdLengths() {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "Q"))
        buffer.writeInteger(Int32(2))
        var scanner = FrameScanner(maxMessageLength: 1000)
        var visitor = RecordingVisitor()
        #expect(throws: FrameScanError.self) { try scanner.scan(buffer, visitor: &visitor) }
        var big = ByteBuffer()
        big.writeInteger(UInt8(ascii: "Q"))
        big.writeInteger(Int32(5000))
        var second = FrameScanner(maxMessageLength: 1000)
        #expect(throws: FrameScanError.self) { try second.scan(big, visitor: &visitor) }
    }

    @Test func stopsBeforeAMessageTheVisitorRefuses() throws {
        var buffer = ByteBuffer()
        buffer.writeQuery("SELECT 1")
        let queryLength = buffer.readableBytes
        buffer.writeTerminate()
        var scanner = FrameScanner()
        var visitor = RecordingVisitor()
        visitor.stopAt = FrontendMessage.terminate
        #expect(try scanner.scan(buffer, visitor: &visitor) == queryLength)
    }
}

@Suite struct StartupPacketTests {
    @Test func decodesStartupWithParameters() throws {
        var buffer = ByteBuffer()
        buffer.writeStartupMessage(parameters: [("user", "moodle"), ("database", "moodle"), ("options", "--client_encoding=utf8")])
        let packet = try StartupPacketDecoder.decode(&buffer)
        guard case .startup(let minor, let parameters) = packet else { Issue.record("not a startup packet"); return }
        #expect(minor == 0)
        #expect(parameters.map(\.0) == ["user", "database", "options"])
        #expect(parameters[2].1 == "--client_encoding=utf8")
        #expect(buffer.readableBytes == 0)
    }

    @Test func decodesSSLAndCancelRequests() throws {
        var ssl = ByteBuffer()
        ssl.writeInteger(Int32(8)); ssl.writeInteger(StartupPacket.sslRequestCode)
        #expect(try StartupPacketDecoder.decode(&ssl) == .sslRequest)
        var cancel = ByteBuffer()
        cancel.writeCancelRequest(processID: 42, secretKey: -7)
        #expect(try StartupPacketDecoder.decode(&cancel) == .cancel(processID: 42, secretKey: -7))
    }

    @Test func waitsForMoreBytes() throws {
        var full = ByteBuffer()
        full.writeStartupMessage(parameters: [("user", "u")])
        var partial = full.getSlice(at: 0, length: full.readableBytes - 1)!
        #expect(try StartupPacketDecoder.decode(&partial) == nil)
    }

    @Test func rejectsBadInput() {
        var absurd = ByteBuffer()
        absurd.writeInteger(Int32(1_000_000)); absurd.writeInteger(Int32(196608))
        #expect(throws: StartupPacketError.self) { try StartupPacketDecoder.decode(&absurd) }
        var tiny = ByteBuffer()
        tiny.writeInteger(Int32(3)); tiny.writeInteger(Int32(196608))
        #expect(throws: StartupPacketError.self) { try StartupPacketDecoder.decode(&tiny) }
        var v2 = ByteBuffer()
        v2.writeInteger(Int32(9)); v2.writeInteger(Int32(2 << 16)); v2.writeInteger(UInt8(0))
        #expect(throws: StartupPacketError.oldProtocolVersion) { try StartupPacketDecoder.decode(&v2) }
        var unterminated = ByteBuffer()
        unterminated.writeInteger(Int32(13)); unterminated.writeInteger(Int32(196608)); unterminated.writeString("user\0")
        #expect(throws: StartupPacketError.invalidLayout) { try StartupPacketDecoder.decode(&unterminated) }
        var unknown = ByteBuffer()
        unknown.writeInteger(Int32(8)); unknown.writeInteger(Int32(7 << 16))
        #expect(throws: StartupPacketError.self) { try StartupPacketDecoder.decode(&unknown) }
    }

    @Test func errorResponseRoundTrips() {
        var buffer = ByteBuffer()
        buffer.writeErrorResponse(severity: "FATAL", code: "28P01", message: "password authentication failed")
        #expect(buffer.readInteger(as: UInt8.self) == BackendMessage.errorResponse)
        let length = Int(buffer.readInteger(as: Int32.self)!)
        let fields = ErrorFields(body: buffer.readSlice(length: length - 4)!)
        #expect(fields.code == "28P01")
        #expect(fields.severity == "FATAL")
        #expect(fields.message == "password authentication failed")
    }
}

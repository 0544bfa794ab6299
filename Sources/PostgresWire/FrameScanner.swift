import NIOCore

/// Receives what `FrameScanner` finds in a byte stream of typed v3 messages.
///
/// A generic visitor (not a protocol existential or closure) keeps the scan free of allocations.
public protocol FrameVisitor {
    /// Whether the whole body of a message of this type must be handed over, or whether its header is enough.
    func wantsBody(type: UInt8) -> Bool
    /// A message starts at `offset` of the buffer being scanned (a negative offset: it began in an earlier buffer).
    /// Returning `false` stops the scan right before this message; the scanner then holds no state for it.
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool
    /// The complete body of a message the visitor asked for.
    mutating func messageBody(type: UInt8, body: ByteBuffer)
    /// A message the visitor asked for is longer than the scanner collects across reads (`maxCollectedBody`):
    /// its body is passed over instead, and `messageBody` is not called for it.
    mutating func messageBodyOmitted(type: UInt8, length: Int)
}

extension FrameVisitor {
    public mutating func messageBodyOmitted(type: UInt8, length: Int) {}
}

public enum FrameScanError: Error, Equatable, Sendable {
    /// The length field is below 4 or above the configured maximum. `header` holds up to 8 bytes for the log line.
    case badLength(type: UInt8, length: Int, header: [UInt8])
    /// A message the reader would have to hold whole is longer than it holds (`limit`).
    case tooLongToHold(type: UInt8, length: Int, limit: Int)
}

/// Finds message boundaries in a stream of `type(1) length(4) body` frames without copying the stream.
///
/// The proxy forwards the buffers it reads as they are; the scanner only tells it where messages start and
/// hands over the bodies of the few message types that drive state (ReadyForQuery, ParameterStatus, …).
/// Large messages (DataRow, CopyData) are never buffered: only their remaining length is counted down.
public struct FrameScanner: Sendable {
    public let maxMessageLength: Int
    /// Stop before a header that the buffer holds only part of, leaving those bytes unconsumed, instead of
    /// gathering it across reads: the caller holds them back, so no message is ever forwarded in halves of a header.
    public let holdsPartialHeaders: Bool
    /// Body bytes of the current message still to come. Only meaningful when `headerFilled == 0`.
    @usableFromInline var remainingBody: Int = 0
    /// A header split across reads.
    @usableFromInline var header: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
    @usableFromInline var headerFilled: Int = 0
    /// A body being collected across reads for the visitor.
    @usableFromInline var pendingBody: ByteBuffer? = nil
    @usableFromInline var pendingType: UInt8 = 0

    /// The largest body gathered across reads for the visitor. A longer one is passed over (the visitor hears
    /// `messageBodyOmitted`), so one message cannot make the scanner hold up to `maxMessageLength` bytes. A body
    /// whole in one buffer is always handed over: it costs no copy.
    public let maxCollectedBody: Int

    public init(maxMessageLength: Int = Int(Int32.max), holdsPartialHeaders: Bool = false, maxCollectedBody: Int = Int(Int32.max)) {
        self.maxMessageLength = maxMessageLength
        self.holdsPartialHeaders = holdsPartialHeaders
        self.maxCollectedBody = maxCollectedBody
    }

    /// Body bytes of a message being passed over (not collected) that the next buffer begins with; nil when a
    /// header is split or a wanted body is being collected.
    public var continuingBodyBytes: Int? { headerFilled == 0 && pendingBody == nil ? remainingBody : nil }

    /// True when the scanner sits exactly at a message boundary.
    public var atBoundary: Bool { headerFilled == 0 && remainingBody == 0 && pendingBody == nil }

    /// Scans `buffer` (its readable bytes) and returns how many bytes were consumed; fewer than all only when the visitor stopped.
    @inlinable
    public mutating func scan<V: FrameVisitor>(_ buffer: ByteBuffer, visitor: inout V) throws(FrameScanError) -> Int {
        try scanImpl(buffer, visitor: &visitor)
    }

    // Inlinable so the proxy gets a copy specialised for its visitor: no generic dispatch per message.
    @inlinable
    mutating func scanImpl<V: FrameVisitor>(_ buffer: ByteBuffer, visitor: inout V) throws(FrameScanError) -> Int {
        let start = buffer.readerIndex
        let end = buffer.writerIndex
        var index = start
        while index < end {
            if var body = pendingBody {
                // Collecting a wanted body that began earlier.
                let take = min(remainingBody, end - index)
                var slice = buffer.getSlice(at: index, length: take)!
                body.writeBuffer(&slice)
                index += take
                remainingBody -= take
                if remainingBody == 0 {
                    pendingBody = nil
                    visitor.messageBody(type: pendingType, body: body)
                } else {
                    pendingBody = body
                }
                continue
            }
            if remainingBody > 0 {
                let take = min(remainingBody, end - index)
                index += take
                remainingBody -= take
                continue
            }
            // At a header.
            let headerOffset = index - start - headerFilled
            if headerFilled == 0 && end - index >= 5 {
                let type = buffer.getInteger(at: index, as: UInt8.self)!
                let length = Int(buffer.getInteger(at: index + 1, as: Int32.self)!)
                try checkLength(type: type, length: length, buffer: buffer, at: index)
                guard visitor.messageStarted(type: type, length: length, offset: headerOffset) else {
                    return index - start
                }
                index += 5
                try beginBody(type: type, length: length, buffer: buffer, index: &index, end: end, visitor: &visitor)
                continue
            }
            if holdsPartialHeaders && headerFilled == 0 { return index - start }
            // Split header: gather byte by byte (rare).
            let byte = buffer.getInteger(at: index, as: UInt8.self)!
            switch headerFilled {
            case 0: header.0 = byte
            case 1: header.1 = byte
            case 2: header.2 = byte
            case 3: header.3 = byte
            default: header.4 = byte
            }
            headerFilled += 1
            index += 1
            if headerFilled == 5 {
                headerFilled = 0
                let type = header.0
                let length = Int(Int32(bitPattern: UInt32(header.1) << 24 | UInt32(header.2) << 16 | UInt32(header.3) << 8 | UInt32(header.4)))
                if length < 4 || length > maxMessageLength {
                    throw .badLength(type: type, length: length, header: [header.0, header.1, header.2, header.3, header.4])
                }
                guard visitor.messageStarted(type: type, length: length, offset: index - start - 5) else {
                    // The header is consumed already; a stop here cannot be honoured cleanly, so the visitor
                    // must not stop on split headers. Treat it as consumed.
                    try beginBody(type: type, length: length, buffer: buffer, index: &index, end: end, visitor: &visitor)
                    continue
                }
                try beginBody(type: type, length: length, buffer: buffer, index: &index, end: end, visitor: &visitor)
            }
        }
        return index - start
    }

    @inlinable
    func checkLength(type: UInt8, length: Int, buffer: ByteBuffer, at index: Int) throws(FrameScanError) {
        if length < 4 || length > maxMessageLength {
            let available = min(8, buffer.writerIndex - index)
            throw .badLength(type: type, length: length, header: buffer.getBytes(at: index, length: available) ?? [])
        }
    }

    @inlinable
    mutating func beginBody<V: FrameVisitor>(type: UInt8, length: Int, buffer: ByteBuffer, index: inout Int, end: Int, visitor: inout V) throws(FrameScanError) {
        let bodyLength = length - 4
        if visitor.wantsBody(type: type) {
            if end - index >= bodyLength {
                visitor.messageBody(type: type, body: buffer.getSlice(at: index, length: bodyLength)!)
                index += bodyLength
            } else if bodyLength > maxCollectedBody {
                visitor.messageBodyOmitted(type: type, length: length)
                remainingBody = bodyLength
            } else {
                var body = ByteBufferAllocator().buffer(capacity: min(bodyLength, 1 << 16))
                var slice = buffer.getSlice(at: index, length: end - index)!
                body.writeBuffer(&slice)
                remainingBody = bodyLength - (end - index)
                index = end
                pendingBody = body
                pendingType = type
            }
        } else {
            remainingBody = bodyLength
        }
    }
}

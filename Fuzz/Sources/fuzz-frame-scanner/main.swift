// The frame scanner on any byte stream: it never traps, never consumes more than it was given, and finds the
// same messages whether the stream comes in one read or two (cut where the first input byte says).
import FuzzDriver
import NIOCore
import PostgresWire

struct Recorder: FrameVisitor {
    var wanted: UInt8
    var messages: [(type: UInt8, length: Int)] = []
    var bodies: [[UInt8]] = []
    func wantsBody(type: UInt8) -> Bool { type <= wanted }
    mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool {
        messages.append((type, length))
        return true
    }
    mutating func messageBody(type: UInt8, body: ByteBuffer) { bodies.append(Array(body.readableBytesView)) }
}

/// Scans `pieces` as successive reads; with `holdsPartialHeaders`, unconsumed bytes are re-sent with the next read
/// as the proxy does. Returns what the visitor saw and whether the scan stopped on an error.
func scan(_ pieces: [ByteBuffer], holds: Bool, wanted: UInt8, maxLength: Int) -> (Recorder, Bool) {
    var scanner = FrameScanner(maxMessageLength: maxLength, holdsPartialHeaders: holds)
    var visitor = Recorder(wanted: wanted)
    var carry = ByteBuffer()
    for piece in pieces {
        var input = carry
        var piece = piece
        input.writeBuffer(&piece)
        do {
            let consumed = try scanner.scan(input, visitor: &visitor)
            precondition(consumed <= input.readableBytes, "consumed \(consumed) of \(input.readableBytes)")
            if !holds { precondition(consumed == input.readableBytes, "stopped without a visitor asking") }
            carry = input.getSlice(at: input.readerIndex + consumed, length: input.readableBytes - consumed)!
            if holds { precondition(carry.readableBytes < 5, "held \(carry.readableBytes) bytes: more than a partial header") }
        } catch {
            return (visitor, true)
        }
    }
    return (visitor, false)
}

fuzz { input in
    guard input.count >= 2 else { return }
    let input = input
    let control = input[0]
    let holds = control & 1 == 1
    let wanted = control & 0x80 == 0 ? UInt8(ascii: "Z") : UInt8.max
    let maxLength = control & 2 == 0 ? 1 << 16 : 64
    let stream = ByteBuffer(bytes: input.dropFirst())
    let cut = Int(input[1]) % stream.readableBytes
    let whole = scan([stream], holds: holds, wanted: wanted, maxLength: maxLength)
    let split = scan([stream.getSlice(at: 0, length: cut)!, stream.getSlice(at: cut, length: stream.readableBytes - cut)!],
                     holds: holds, wanted: wanted, maxLength: maxLength)
    precondition(whole.1 == split.1, "error in one read: \(whole.1), in two: \(split.1)")
    precondition(whole.0.messages.count == split.0.messages.count
        && zip(whole.0.messages, split.0.messages).allSatisfy { $0.type == $1.type && $0.length == $1.length },
        "messages differ: \(whole.0.messages) vs \(split.0.messages)")
    precondition(whole.0.bodies == split.0.bodies, "bodies differ")
    return
}

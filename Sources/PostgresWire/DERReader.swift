/// Just enough DER to walk a certificate's outer structure.
struct DERReader {
    private let bytes: [UInt8]
    private var index = 0
    private var end: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.end = bytes.count
    }

    /// Reads a tag and length; returns the content range.
    private mutating func header(tag: UInt8) -> Range<Int>? {
        guard index + 2 <= end, bytes[index] == tag else { return nil }
        var length = Int(bytes[index + 1])
        var position = index + 2
        if length & 0x80 != 0 {
            let count = length & 0x7F
            guard count >= 1, count <= 4, position + count <= end else { return nil }
            length = 0
            for byte in bytes[position..<(position + count)] { length = length << 8 | Int(byte) }
            position += count
        }
        guard position + length <= end else { return nil }
        return position..<(position + length)
    }

    /// Steps into a constructed element.
    mutating func enter(tag: UInt8) -> Bool {
        guard let range = header(tag: tag) else { return false }
        index = range.lowerBound
        end = range.upperBound
        return true
    }

    mutating func skip(tag: UInt8) -> Bool {
        guard let range = header(tag: tag) else { return false }
        index = range.upperBound
        return true
    }

    mutating func read(tag: UInt8) -> [UInt8]? {
        guard let range = header(tag: tag) else { return nil }
        index = range.upperBound
        return Array(bytes[range])
    }

    /// The next element whatever its tag.
    mutating func readAny() -> (tag: UInt8, value: [UInt8])? {
        guard let tag = peekTag else { return nil }
        return read(tag: tag).map { (tag, $0) }
    }

    var peekTag: UInt8? { index < end ? bytes[index] : nil }
    var atEnd: Bool { index >= end }
}

/// Standard base64 (RFC 4648, with padding) on bytes, for SCRAM's messages and verifiers. Foundation's `Data`
/// versions go through a `Data` and a `String` each way, which showed in login profiles.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// 0...63 for each alphabet byte, 0xFF for every other byte.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(encodedCount(bytes.count))
        encode(bytes, appendingTo: &out)
        return out
    }

    public static func encodedCount(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    /// Appends the encoding to `out` (whose capacity the caller reserves): a SCRAM message is built in one array.
    public static func encode<Bytes: Collection>(_ bytes: Bytes, appendingTo out: inout [UInt8]) where Bytes.Element == UInt8 {
        var iterator = bytes.makeIterator()
        while let first = iterator.next() {
            let second = iterator.next(), third = iterator.next()
            let group = UInt32(first) << 16 | UInt32(second ?? 0) << 8 | UInt32(third ?? 0)
            out.append(alphabet[Int(group >> 18 & 63)])
            out.append(alphabet[Int(group >> 12 & 63)])
            out.append(second == nil ? UInt8(ascii: "=") : alphabet[Int(group >> 6 & 63)])
            out.append(third == nil ? UInt8(ascii: "=") : alphabet[Int(group & 63)])
        }
    }

    public static func encodedString<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        String(decoding: encode(bytes), as: UTF8.self)
    }

    /// Decodes padded base64, or returns nil for anything else (a wrong length, a byte outside the alphabet,
    /// padding anywhere but at the end, or non-zero bits under the padding).
    public static func decode<Bytes: Collection>(_ text: Bytes) -> [UInt8]? where Bytes.Element == UInt8 {
        guard text.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 4 * 3)
        var index = text.startIndex
        while index != text.endIndex {
            var group: UInt32 = 0
            var padding = 0
            for _ in 0..<4 {
                let byte = text[index]
                index = text.index(after: index)
                if byte == UInt8(ascii: "=") {
                    padding += 1
                    group <<= 6
                    continue
                }
                let value = values[Int(byte)]
                // A data byte after padding, or outside the alphabet.
                guard value != 0xFF, padding == 0 else { return nil }
                group = group << 6 | UInt32(value)
            }
            guard padding <= 2, padding == 0 || index == text.endIndex else { return nil }
            out.append(UInt8(group >> 16 & 0xFF))
            if padding < 2 { out.append(UInt8(group >> 8 & 0xFF)) } else if group >> 8 & 0xFF != 0 { return nil }
            if padding < 1 { out.append(UInt8(group & 0xFF)) } else if group & 0xFF != 0 { return nil }
        }
        return out
    }

    public static func decode(_ text: String) -> [UInt8]? { decode(Array(text.utf8)) }
}

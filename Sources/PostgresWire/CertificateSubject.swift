/// The subject's common name of a DER X.509 certificate, for `cert` authentication (the login's user name must
/// equal it, as in PgBouncer and PostgreSQL). swift-nio-ssl keeps its own accessor internal; this reads only the
/// few DER structures on the way to the subject and refuses anything it does not follow.
public enum CertificateSubject {
    /// The last (most specific) commonName in the subject; nil when there is none or the bytes are not DER.
    public static func commonName(der: [UInt8]) -> String? {
        var reader = DERReader(der)
        guard reader.enter(tag: 0x30), reader.enter(tag: 0x30) else { return nil } // Certificate, TBSCertificate
        if reader.peekTag == 0xA0 { _ = reader.skip(tag: 0xA0) } // version
        guard reader.skip(tag: 0x02), reader.skip(tag: 0x30), reader.skip(tag: 0x30), reader.skip(tag: 0x30), // serial, signature, issuer, validity
              reader.enter(tag: 0x30) else { return nil } // subject
        let commonNameOID: [UInt8] = [0x55, 0x04, 0x03]
        var found: String?
        while !reader.atEnd {
            guard let set = reader.read(tag: 0x31) else { return nil }
            var attributes = DERReader(set)
            while !attributes.atEnd {
                guard let pair = attributes.read(tag: 0x30) else { return nil }
                var parts = DERReader(pair)
                guard let oid = parts.read(tag: 0x06), let (tag, value) = parts.readAny() else { return nil }
                guard oid == commonNameOID else { continue }
                guard let text = decodeString(tag: tag, value[...]) else { return nil }
                found = text
            }
        }
        return found
    }

    static func decodeString(tag: UInt8, _ value: ArraySlice<UInt8>) -> String? {
        switch tag {
        case 0x0C, 0x13, 0x16: // UTF8String, PrintableString, IA5String
            return String(validating: value, as: UTF8.self)
        case 0x1E: // BMPString: UTF-16, big-endian
            guard value.count % 2 == 0 else { return nil }
            var units: [UInt16] = []
            var index = value.startIndex
            while index < value.endIndex {
                units.append(UInt16(value[index]) << 8 | UInt16(value[index + 1]))
                index += 2
            }
            return String(validating: units, as: UTF16.self)
        default:
            return nil
        }
    }
}

import Crypto

/// RFC 5929's `tls-server-end-point` channel-binding data: a hash of the server's DER certificate, with the hash
/// of the certificate's own signature algorithm, SHA-256 when that is MD5 or SHA-1 (what SCRAM-SHA-256-PLUS uses).
public enum TLSServerEndPoint {
    public static func bindingData(certificateDER der: [UInt8]) -> [UInt8] {
        switch signatureHash(der) {
        case .sha384: return Array(SHA384.hash(data: der))
        case .sha512: return Array(SHA512.hash(data: der))
        case .sha256: return Array(SHA256.hash(data: der))
        }
    }

    enum Hash { case sha256, sha384, sha512 }

    /// Reads Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … } just far
    /// enough to find the algorithm's OID. Anything unexpected falls back to SHA-256, the common case.
    static func signatureHash(_ der: [UInt8]) -> Hash {
        var reader = DERReader(der)
        guard reader.enter(tag: 0x30), reader.skip(tag: 0x30), reader.enter(tag: 0x30), let oid = reader.read(tag: 0x06) else {
            return .sha256
        }
        // 1.2.840.113549.1.1.12 / .13 (sha384/sha512WithRSAEncryption), 1.2.840.10045.4.3.3 / .4 (ecdsa-with-SHA384/512),
        // 1.2.840.113549.1.1.10 (RSASSA-PSS) is treated as SHA-256: its hash sits in the parameters, rarely other.
        let rsa: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01]
        let ecdsa: [UInt8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03]
        if oid == rsa + [0x0C] || oid == ecdsa + [0x03] { return .sha384 }
        if oid == rsa + [0x0D] || oid == ecdsa + [0x04] { return .sha512 }
        return .sha256
    }
}

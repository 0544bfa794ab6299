import Foundation
import PostgresWire
import Testing

/// RFC 7677 section 3: user "user", password "pencil".
@Suite struct SCRAMTests {
    let clientNonce = "rOprNGfwEbeRWgbNEkqO"
    let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    let salt = Array(Data(base64Encoded: "W22ZaJ0SNY7soEsUEjb6gQ==")!)
    let clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    let serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

    @Test func clientSideMatchesRFC7677() throws {
        var exchange = SCRAMClientExchange(secret: .password("pencil"), clientNonce: clientNonce, username: "user")
        #expect(String(decoding: exchange.clientFirst(), as: UTF8.self) == "n,,n=user,r=\(clientNonce)")
        let final = try exchange.receiveServerFirst(Array("r=\(clientNonce)\(serverNonce),s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".utf8))
        #expect(String(decoding: final, as: UTF8.self) == clientFinal)
        try exchange.receiveServerFinal(Array(serverFinal.utf8))
        #expect(throws: SCRAMClientExchange.Failure.invalidServerSignature) {
            try exchange.receiveServerFinal(Array("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".utf8))
        }
    }

    @Test func serverSideMatchesRFC7677AndRecoversClientKey() throws {
        let verifier = SCRAM.Verifier(password: "pencil", salt: salt, iterations: 4096)
        var exchange = SCRAMServerExchange(verifier: verifier, serverNonce: serverNonce)
        let first = try exchange.receiveClientFirst(Array("n,,n=user,r=\(clientNonce)".utf8))
        #expect(String(decoding: first, as: UTF8.self) == "r=\(clientNonce)\(serverNonce),s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        let final = try exchange.receiveClientFinal(Array(clientFinal.utf8))
        #expect(String(decoding: final, as: UTF8.self) == serverFinal)
        let salted = SCRAM.saltedPassword("pencil", salt: salt, iterations: 4096)
        #expect(exchange.clientKey == SCRAM.hmac(key: salted, "Client Key"))
    }

    @Test func serverRejectsWrongProofAndNonce() throws {
        let verifier = SCRAM.Verifier(password: "other", salt: salt, iterations: 4096)
        var exchange = SCRAMServerExchange(verifier: verifier, serverNonce: serverNonce)
        _ = try exchange.receiveClientFirst(Array("n,,n=user,r=\(clientNonce)".utf8))
        #expect(throws: SCRAMServerExchange.Failure.wrongProof) { try exchange.receiveClientFinal(Array(clientFinal.utf8)) }

        var other = SCRAMServerExchange(verifier: verifier, serverNonce: "different")
        _ = try other.receiveClientFirst(Array("n,,n=user,r=\(clientNonce)".utf8))
        #expect(throws: SCRAMServerExchange.Failure.nonceMismatch) { try other.receiveClientFinal(Array(clientFinal.utf8)) }
        #expect(throws: SCRAMServerExchange.Failure.malformedMessage) { try other.receiveClientFirst(Array("garbage".utf8)) }
    }

    @Test func verifierTextRoundTrips() throws {
        let verifier = SCRAM.Verifier(password: "pencil", salt: salt, iterations: 4096)
        let parsed = try #require(SCRAM.Verifier(parsing: verifier.text))
        #expect(parsed == verifier)
        #expect(SCRAM.Verifier(parsing: "md5abc") == nil)
        #expect(SCRAM.Verifier(parsing: "SCRAM-SHA-256$x:abc$def:ghi") == nil)
    }

    @Test func passThroughKeysLogInLikeThePassword() throws {
        let salted = SCRAM.saltedPassword("pencil", salt: salt, iterations: 4096)
        let keys = SCRAMClientExchange.Secret.keys(clientKey: SCRAM.hmac(key: salted, "Client Key"), serverKey: SCRAM.hmac(key: salted, "Server Key"))
        var exchange = SCRAMClientExchange(secret: keys, clientNonce: clientNonce, username: "user")
        _ = exchange.clientFirst()
        let final = try exchange.receiveServerFirst(Array("r=\(clientNonce)\(serverNonce),s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".utf8))
        #expect(String(decoding: final, as: UTF8.self) == clientFinal)
    }
}

@Suite struct Base64Tests {
    @Test func matchesRFC4648AndFoundation() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64.encodedString(Array(plain.utf8)) == encoded)
            #expect(Base64.decode(encoded) == Array(plain.utf8))
        }
        // Every length up to 3 blocks and every byte value, against Foundation.
        for length in 0..<50 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ length) }
            #expect(Base64.encodedString(bytes) == Data(bytes).base64EncodedString())
            #expect(Base64.decode(Data(bytes).base64EncodedString()) == bytes)
        }
    }

    @Test func rejectsWhatIsNotPaddedBase64() {
        for bad in ["Zg", "Zg=", "Z===", "Zm9v!A==", "Zg==Zg==", "Zm=v", "Zh==", "Zm9=", " Zm9v", "Zm9v\n"] {
            #expect(Base64.decode(bad) == nil, "\(bad)")
        }
    }
}

@Suite struct HMACTests {
    @Test func matchesRFC4231() {
        // Test cases 1 (20-byte key) and 6 (a key longer than the block, hashed first).
        #expect(MD5Password.hex(SCRAM.hmac(key: Array(repeating: 0x0B, count: 20), "Hi There"))
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(MD5Password.hex(SCRAM.hmac(key: Array(repeating: 0xAA, count: 131), "Test Using Larger Than Block-Size Key - Hash Key First"))
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }
}

@Suite struct MD5PasswordTests {
    @Test func matchesPostgreSQL() {
        // Expected values computed independently: 'md5' || md5('secretpw' || 'postgres'), then with salt 01020304.
        #expect(MD5Password.storedHash(user: "postgres", password: "secretpw") == "md54cd7994f0a6f6357615cc334d1c5d03a")
        #expect(MD5Password.response(user: "postgres", password: "secretpw", salt: [1, 2, 3, 4]) == "md5f7f7d44173da53d13bbaf4fff77edc21")
        #expect(MD5Password.response(storedHash: "md54cd7994f0a6f6357615cc334d1c5d03a", salt: [1, 2, 3, 4]) == "md5f7f7d44173da53d13bbaf4fff77edc21")
        #expect(MD5Password.isStoredHash("md54cd7994f0a6f6357615cc334d1c5d03a"))
        #expect(!MD5Password.isStoredHash("md5XYZ"))
    }
}

@Suite struct ChannelBindingTests {
    /// A certificate skeleton: SEQUENCE { tbsCertificate SEQUENCE {}, AlgorithmIdentifier SEQUENCE { OID }, … }.
    func certificate(signatureOID: [UInt8]) -> [UInt8] {
        let algorithm: [UInt8] = [0x30, UInt8(signatureOID.count + 2), 0x06, UInt8(signatureOID.count)] + signatureOID
        let body: [UInt8] = [0x30, 0x00] + algorithm + [0x03, 0x01, 0x00]
        return [0x30, UInt8(body.count)] + body
    }

    @Test func endPointHashFollowsTheSignatureAlgorithm() {
        let sha256RSA: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B]
        let sha384RSA: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C]
        let sha512ECDSA: [UInt8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04]
        #expect(TLSServerEndPoint.bindingData(certificateDER: certificate(signatureOID: sha256RSA)).count == 32)
        #expect(TLSServerEndPoint.bindingData(certificateDER: certificate(signatureOID: sha384RSA)).count == 48)
        #expect(TLSServerEndPoint.bindingData(certificateDER: certificate(signatureOID: sha512ECDSA)).count == 64)
        #expect(TLSServerEndPoint.bindingData(certificateDER: [0x01, 0x02]).count == 32) // garbage: SHA-256 of it
    }

    @Test func gs2HeaderAndBindingAttribute() throws {
        var plus = SCRAMClientExchange(secret: .password("pencil"), clientNonce: "abc", channelBinding: .tlsServerEndPoint([1, 2, 3]))
        #expect(plus.mechanism == "SCRAM-SHA-256-PLUS")
        #expect(String(decoding: plus.clientFirst(), as: UTF8.self) == "p=tls-server-end-point,,n=,r=abc")
        let salt = Data("salt".utf8).base64EncodedString()
        let final = try plus.receiveServerFirst(Array("r=abcdef,s=\(salt),i=4096".utf8))
        let expected = Data(Array("p=tls-server-end-point,,".utf8) + [1, 2, 3]).base64EncodedString()
        #expect(String(decoding: final, as: UTF8.self).hasPrefix("c=\(expected),r=abcdef,p="))
        var unbound = SCRAMClientExchange(secret: .password("pencil"), clientNonce: "abc", channelBinding: .notOffered)
        #expect(String(decoding: unbound.clientFirst(), as: UTF8.self).hasPrefix("y,,"))
    }
}

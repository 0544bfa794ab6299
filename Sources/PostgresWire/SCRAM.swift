import CRandom
import Crypto
import _CryptoExtras

/// SCRAM-SHA-256 as PostgreSQL uses it (RFC 5802 / RFC 7677, no channel binding, username ignored).
public enum SCRAM {
    public static let mechanism = "SCRAM-SHA-256"
    public static let defaultIterations = 4096

    /// A stored verifier: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    public struct Verifier: Sendable, Equatable {
        public var iterations: Int
        public var salt: [UInt8]
        public var storedKey: [UInt8]
        public var serverKey: [UInt8]

        public init(iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
            self.iterations = iterations
            self.salt = salt
            self.storedKey = storedKey
            self.serverKey = serverKey
        }

        /// Parses PostgreSQL's text form, or returns nil if `text` is not one.
        public init?(parsing text: String) {
            guard text.hasPrefix("SCRAM-SHA-256$") else { return nil }
            let rest = text.utf8.dropFirst("SCRAM-SHA-256$".utf8.count)
            let parts = rest.split(separator: UInt8(ascii: "$"), omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            let first = parts[0].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            let second = parts[1].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            guard first.count == 2, second.count == 2,
                  let iterations = Int(String(decoding: first[0], as: UTF8.self)), iterations > 0,
                  let salt = Base64.decode(first[1]),
                  let storedKey = Base64.decode(second[0]), storedKey.count == 32,
                  let serverKey = Base64.decode(second[1]), serverKey.count == 32
            else { return nil }
            self.init(iterations: iterations, salt: salt, storedKey: storedKey, serverKey: serverKey)
        }

        /// Derives a verifier from a plaintext password.
        public init(password: String, salt: [UInt8], iterations: Int) {
            let salted = SCRAM.saltedPassword(password, salt: salt, iterations: iterations)
            let clientKey = SCRAM.hmac(key: salted, "Client Key")
            self.init(
                iterations: iterations, salt: salt,
                storedKey: SCRAM.sha256(clientKey),
                serverKey: SCRAM.hmac(key: salted, "Server Key")
            )
        }

        public var text: String {
            "SCRAM-SHA-256$\(iterations):\(Base64.encodedString(salt))$\(Base64.encodedString(storedKey)):\(Base64.encodedString(serverKey))"
        }
    }

    // MARK: Primitives

    public static func saltedPassword(_ password: String, salt: [UInt8], iterations: Int) -> [UInt8] {
        // PostgreSQL uses SASLprep; for ASCII passwords it is the identity. Non-ASCII passwords are used as UTF-8,
        // which is also what PostgreSQL falls back to when SASLprep fails.
        let key = try! KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32,
            unsafeUncheckedRounds: iterations
        )
        return key.withUnsafeBytes { Array($0) }
    }

    public static func hmac(key: [UInt8], _ message: String) -> [UInt8] {
        hmac(key: key, Array(message.utf8))
    }

    /// HMAC-SHA-256 (RFC 2104) on `SHA256` itself: CryptoKit's `HMAC` wraps the key in a `SymmetricKey` (a heap
    /// box of secure bytes) and goes through generic code on every call, which showed in login profiles.
    public static func hmac(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { pad in
            pad.initialize(repeating: 0)
            if key.count > 64 {
                _ = pad.initialize(from: SHA256.hash(data: key))
            } else {
                _ = pad.initialize(from: key)
            }
            for index in 0..<64 { pad[index] ^= 0x36 }
            var inner = SHA256()
            inner.update(bufferPointer: UnsafeRawBufferPointer(pad))
            message.withUnsafeBytes { inner.update(bufferPointer: $0) }
            let innerDigest = inner.finalize()
            for index in 0..<64 { pad[index] ^= 0x36 ^ 0x5C }
            var outer = SHA256()
            outer.update(bufferPointer: UnsafeRawBufferPointer(pad))
            innerDigest.withUnsafeBytes { outer.update(bufferPointer: $0) }
            return bytes(of: outer.finalize())
        }
    }

    public static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        self.bytes(of: SHA256.hash(data: bytes))
    }

    /// A digest's 32 bytes in one allocation: `Array(digest)` goes through the digest's Sequence conformance,
    /// which does not know the count, and grew the array several times per digest (counted with a malloc probe).
    private static func bytes(of digest: SHA256.Digest) -> [UInt8] {
        digest.withUnsafeBytes { [UInt8]($0) }
    }

    static func xor(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        zip(a, b).map { $0 ^ $1 }
    }

    /// Constant-time comparison of two byte strings.
    static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }

    /// 18 random bytes in base64, as PostgreSQL's nonces.
    public static func randomNonce() -> String {
        String(decoding: randomNonceBytes(), as: UTF8.self)
    }

    /// The same nonce as bytes, in one allocation (the random bytes stay on the stack).
    public static func randomNonceBytes() -> [UInt8] {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 18) { random in
            fillRandom(random)
            return Base64.encode(UnsafeBufferPointer(random))
        }
    }

    /// Random bytes from one getrandom() call (the standard library's generator makes one per eight bytes).
    public static func randomBytes(_ count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            fillRandom(UnsafeMutableBufferPointer(rebasing: buffer[..<count]))
            initialized = count
        }
    }

    private static func fillRandom(_ buffer: UnsafeMutableBufferPointer<UInt8>) {
        let count = buffer.count
        var filled = 0
        while filled < count {
            let got = getrandom(buffer.baseAddress! + filled, count - filled, 0)
            if got > 0 {
                filled += got
            } else {
                // Interrupted (EINTR), or no getrandom: the standard library's generator, eight bytes a draw.
                var generator = SystemRandomNumberGenerator()
                while filled < count {
                    withUnsafeBytes(of: generator.next() as UInt64) { word in
                        for byte in word where filled < count {
                            buffer[filled] = byte
                            filled += 1
                        }
                    }
                }
            }
        }
    }

    /// The value of attribute `name` (`name=value`) in a comma-separated SCRAM message, or nil.
    static func attribute(_ name: UInt8, in message: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        // A walk, not `split`: that builds an array of every part on each login.
        var start = message.startIndex
        while start < message.endIndex {
            let end = message[start...].firstIndex(of: UInt8(ascii: ",")) ?? message.endIndex
            if end - start >= 2, message[start] == name, message[start + 1] == UInt8(ascii: "=") {
                return message[(start + 2)..<end]
            }
            start = end + 1
        }
        return nil
    }

    static func attribute(_ name: Character, in message: [UInt8]) -> ArraySlice<UInt8>? {
        attribute(name.asciiValue!, in: message[...])
    }
}

/// The server side of a SCRAM exchange, used when Shoal authenticates a client.
public struct SCRAMServerExchange: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case malformedMessage
        case channelBindingUnsupported
        case nonceMismatch
        case wrongProof
    }

    public let verifier: Verifier
    public typealias Verifier = SCRAM.Verifier
    // All on bytes: the messages are ASCII in practice, and the AuthMessage is hashed as bytes anyway. Each
    // message is built in one array of the right size: concatenating and growing arrays made most of the
    // 43 allocations a SCRAM login cost (counted with a malloc probe under pgbench -S -C, Benchmarks/RESULTS.md).
    private let serverNonce: [UInt8]
    private var clientFirstBare: ArraySlice<UInt8> = []
    private var serverFirst: [UInt8] = []
    /// The combined nonce, where it sits in `serverFirst` (after "r=").
    private var combinedNonce: Range<Int> = 0..<0
    /// The client's ClientKey, recovered from its proof; it lets Shoal log in to the server as this client.
    public private(set) var clientKey: [UInt8]? = nil

    public init(verifier: SCRAM.Verifier) {
        self.verifier = verifier
        self.serverNonce = SCRAM.randomNonceBytes()
    }

    public init(verifier: SCRAM.Verifier, serverNonce: String) {
        self.verifier = verifier
        self.serverNonce = Array(serverNonce.utf8)
    }

    /// Takes the client-first-message and returns server-first-message.
    public mutating func receiveClientFirst(_ message: [UInt8]) throws(Failure) -> [UInt8] {
        // gs2-header: "n,," or "y,," (client supports binding but thinks we don't) — "p=" would need TLS.
        guard let firstComma = message.firstIndex(of: UInt8(ascii: ",")),
              let secondComma = message[(firstComma + 1)...].firstIndex(of: UInt8(ascii: ","))
        else { throw .malformedMessage }
        let flag = message[..<firstComma], authzid = message[(firstComma + 1)..<secondComma]
        if flag.elementsEqual("n".utf8) || flag.elementsEqual("y".utf8) {
        } else if flag.starts(with: "p=".utf8) {
            throw .channelBindingUnsupported
        } else {
            throw .malformedMessage
        }
        guard authzid.isEmpty || authzid.starts(with: "a=".utf8) else { throw .malformedMessage }
        clientFirstBare = message[(secondComma + 1)...]
        // RFC 5802: the nonce is printable ASCII without ','.
        guard let clientNonce = SCRAM.attribute(UInt8(ascii: "r"), in: clientFirstBare), !clientNonce.isEmpty,
              clientNonce.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else { throw .malformedMessage }
        let iterations = String(verifier.iterations).utf8
        var out: [UInt8] = []
        out.reserveCapacity(2 + clientNonce.count + serverNonce.count + 3 + Base64.encodedCount(verifier.salt.count) + 3 + iterations.count)
        out += "r=".utf8
        out += clientNonce
        out += serverNonce
        combinedNonce = 2..<out.count
        out += ",s=".utf8
        Base64.encode(verifier.salt, appendingTo: &out)
        out += ",i=".utf8
        out += iterations
        serverFirst = out
        return out
    }

    /// Takes client-final-message; returns server-final-message on success.
    public mutating func receiveClientFinal(_ message: [UInt8]) throws(Failure) -> [UInt8] {
        // The proof is the last attribute: find ",p=" from the end.
        var proofStart: Int? = nil
        var index = message.count - 3
        while index >= 0 {
            if message[index] == UInt8(ascii: ","), message[index + 1] == UInt8(ascii: "p"), message[index + 2] == UInt8(ascii: "=") {
                proofStart = index
                break
            }
            index -= 1
        }
        guard let proofStart else { throw .malformedMessage }
        let withoutProof = message[..<proofStart]
        guard let nonce = SCRAM.attribute(UInt8(ascii: "r"), in: withoutProof) else { throw .malformedMessage }
        guard !combinedNonce.isEmpty, nonce.elementsEqual(serverFirst[combinedNonce]) else { throw .nonceMismatch }
        guard let binding = SCRAM.attribute(UInt8(ascii: "c"), in: withoutProof), let gs2 = Base64.decode(binding),
              gs2.starts(with: "n,".utf8) || gs2.starts(with: "y,".utf8)
        else { throw .malformedMessage }
        guard let proof = Base64.decode(message[(proofStart + 3)...]), proof.count == 32 else {
            throw .malformedMessage
        }
        var authMessage: [UInt8] = []
        authMessage.reserveCapacity(clientFirstBare.count + serverFirst.count + withoutProof.count + 2)
        authMessage += clientFirstBare
        authMessage.append(UInt8(ascii: ","))
        authMessage += serverFirst
        authMessage.append(UInt8(ascii: ","))
        authMessage += withoutProof
        let clientSignature = SCRAM.hmac(key: verifier.storedKey, authMessage)
        let recoveredKey = SCRAM.xor(proof, clientSignature)
        guard SCRAM.equal(SCRAM.sha256(recoveredKey), verifier.storedKey) else { throw .wrongProof }
        clientKey = recoveredKey
        let serverSignature = SCRAM.hmac(key: verifier.serverKey, authMessage)
        var out: [UInt8] = []
        out.reserveCapacity(2 + Base64.encodedCount(serverSignature.count))
        out += "v=".utf8
        Base64.encode(serverSignature, appendingTo: &out)
        return out
    }
}

/// The client side of a SCRAM exchange, used when Shoal logs in to a PostgreSQL server.
public struct SCRAMClientExchange: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case malformedMessage
        case nonceMismatch
        case invalidServerSignature
        /// The secret Shoal holds cannot answer this server (e.g. a ClientKey for another salt).
        case unusableSecret
        /// The server asks for more PBKDF2 rounds than `maxIterations`: computing them would stall an EventLoop
        /// (a hostile or misconfigured server could ask for two billion).
        case tooManyIterations(Int)
    }

    /// PostgreSQL's default is 4,096 (`scram_iterations`); this leaves room for hardened settings while keeping
    /// one login under about 100 ms of CPU.
    public static let maxIterations = 100_000

    /// What Shoal knows of the password.
    public enum Secret: Sendable {
        case password(String)
        /// From a client's SCRAM login against the same verifier (pass-through, as PgBouncer does).
        case keys(clientKey: [UInt8], serverKey: [UInt8])
    }

    /// RFC 5802's gs2 channel-binding flag, as the client sends it.
    public enum ChannelBinding: Sendable, Equatable {
        /// `n`: not on TLS, no binding possible.
        case unsupported
        /// `y`: on TLS, but the server did not offer SCRAM-SHA-256-PLUS.
        case notOffered
        /// `p=tls-server-end-point`: SCRAM-SHA-256-PLUS bound to the server certificate's hash (RFC 5929).
        case tlsServerEndPoint([UInt8])

        var header: String {
            switch self {
            case .unsupported: return "n,,"
            case .notOffered: return "y,,"
            case .tlsServerEndPoint: return "p=tls-server-end-point,,"
            }
        }

        /// The `c=` attribute: base64 of the gs2 header followed by the binding data.
        var attribute: String {
            var bytes = Array(header.utf8)
            if case .tlsServerEndPoint(let data) = self { bytes += data }
            return Base64.encodedString(bytes)
        }
    }

    private let secret: Secret
    private let clientNonce: String
    /// PostgreSQL ignores the SCRAM user name (it uses the startup packet's); RFC test vectors set one.
    private let username: String
    private let channelBinding: ChannelBinding
    private var clientFirstBare = ""
    private var expectedServerSignature: [UInt8] = []

    public init(secret: Secret, clientNonce: String = SCRAM.randomNonce(), username: String = "", channelBinding: ChannelBinding = .unsupported) {
        self.secret = secret
        self.clientNonce = clientNonce
        self.username = username
        self.channelBinding = channelBinding
    }

    /// The mechanism name to announce in SASLInitialResponse.
    public var mechanism: String {
        if case .tlsServerEndPoint = channelBinding { return SCRAM.mechanism + "-PLUS" }
        return SCRAM.mechanism
    }

    public mutating func clientFirst() -> [UInt8] {
        clientFirstBare = "n=\(username),r=\(clientNonce)"
        return Array("\(channelBinding.header)\(clientFirstBare)".utf8)
    }

    public mutating func receiveServerFirst(_ message: [UInt8]) throws(Failure) -> [UInt8] {
        guard let serverFirst = String(validating: message, as: UTF8.self) else { throw .malformedMessage }
        guard let nonceBytes = SCRAM.attribute("r", in: message), let nonce = String(validating: nonceBytes, as: UTF8.self),
              let saltText = SCRAM.attribute("s", in: message), let salt = Base64.decode(saltText),
              let iterationsText = SCRAM.attribute("i", in: message),
              let iterations = Int(String(decoding: iterationsText, as: UTF8.self)), iterations > 0
        else { throw .malformedMessage }
        guard nonce.hasPrefix(clientNonce), nonce.count > clientNonce.count else { throw .nonceMismatch }
        if case .password = secret, iterations > Self.maxIterations { throw .tooManyIterations(iterations) }
        let clientKey: [UInt8]
        let serverKey: [UInt8]
        switch secret {
        case .password(let password):
            let salted = SCRAM.saltedPassword(password, salt: Array(salt), iterations: iterations)
            clientKey = SCRAM.hmac(key: salted, "Client Key")
            serverKey = SCRAM.hmac(key: salted, "Server Key")
        case .keys(let client, let server):
            clientKey = client
            serverKey = server
        }
        let withoutProof = "c=\(channelBinding.attribute),r=\(nonce)"
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let storedKey = SCRAM.sha256(clientKey)
        let proof = SCRAM.xor(clientKey, SCRAM.hmac(key: storedKey, authMessage))
        expectedServerSignature = SCRAM.hmac(key: serverKey, authMessage)
        return Array("\(withoutProof),p=\(Base64.encodedString(proof))".utf8)
    }

    public func receiveServerFinal(_ message: [UInt8]) throws(Failure) {
        guard let signatureText = SCRAM.attribute("v", in: message), let signature = Base64.decode(signatureText) else {
            throw .malformedMessage
        }
        guard SCRAM.equal(signature, expectedServerSignature) else { throw .invalidServerSignature }
    }
}

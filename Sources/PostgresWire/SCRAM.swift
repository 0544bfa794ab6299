import Crypto
import _CryptoExtras
import Foundation

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
            let rest = text.dropFirst("SCRAM-SHA-256$".count)
            let parts = rest.split(separator: "$", omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            let first = parts[0].split(separator: ":", omittingEmptySubsequences: false)
            let second = parts[1].split(separator: ":", omittingEmptySubsequences: false)
            guard first.count == 2, second.count == 2,
                  let iterations = Int(first[0]), iterations > 0,
                  let salt = Data(base64Encoded: String(first[1])),
                  let storedKey = Data(base64Encoded: String(second[0])), storedKey.count == 32,
                  let serverKey = Data(base64Encoded: String(second[1])), serverKey.count == 32
            else { return nil }
            self.init(iterations: iterations, salt: Array(salt), storedKey: Array(storedKey), serverKey: Array(serverKey))
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
            "SCRAM-SHA-256$\(iterations):\(Data(salt).base64EncodedString())$\(Data(storedKey).base64EncodedString()):\(Data(serverKey).base64EncodedString())"
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

    public static func hmac(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }

    public static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: bytes))
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

    public static func randomNonce() -> String {
        Data(randomBytes(18)).base64EncodedString()
    }

    /// Random bytes, eight per draw: the system generator costs a getrandom() call per draw.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + 7)
        while bytes.count < count {
            withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) }
        }
        return Array(bytes.prefix(count))
    }

    static func attributes(_ message: String) -> [Character: String] {
        var result: [Character: String] = [:]
        for part in message.split(separator: ",", omittingEmptySubsequences: false) {
            guard part.count >= 2, part.dropFirst().first == "=" else { continue }
            result[part.first!] = String(part.dropFirst(2))
        }
        return result
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
    private let serverNonce: String
    private var clientFirstBare = ""
    private var serverFirst = ""
    private var combinedNonce = ""
    /// The client's ClientKey, recovered from its proof; it lets Shoal log in to the server as this client.
    public private(set) var clientKey: [UInt8]? = nil

    public init(verifier: SCRAM.Verifier, serverNonce: String = SCRAM.randomNonce()) {
        self.verifier = verifier
        self.serverNonce = serverNonce
    }

    /// Takes the client-first-message and returns server-first-message.
    public mutating func receiveClientFirst(_ message: [UInt8]) throws(Failure) -> [UInt8] {
        guard let text = String(bytes: message, encoding: .utf8) else { throw .malformedMessage }
        // gs2-header: "n,," or "y,," (client supports binding but thinks we don't) — "p=" would need TLS.
        let parts = text.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformedMessage }
        switch parts[0] {
        case "n", "y": break
        case let flag where flag.hasPrefix("p="): throw .channelBindingUnsupported
        default: throw .malformedMessage
        }
        guard parts[1].isEmpty || parts[1].hasPrefix("a=") else { throw .malformedMessage }
        clientFirstBare = String(parts[2])
        guard let clientNonce = SCRAM.attributes(clientFirstBare)["r"], !clientNonce.isEmpty else { throw .malformedMessage }
        combinedNonce = clientNonce + serverNonce
        serverFirst = "r=\(combinedNonce),s=\(Data(verifier.salt).base64EncodedString()),i=\(verifier.iterations)"
        return Array(serverFirst.utf8)
    }

    /// Takes client-final-message; returns server-final-message on success.
    public mutating func receiveClientFinal(_ message: [UInt8]) throws(Failure) -> [UInt8] {
        // The proof is the last attribute: find ",p=" from the end on the bytes (Foundation's backwards
        // String search bridges to NSString on Linux and showed up in login profiles).
        var proofStart: Int? = nil
        var index = message.count - 3
        while index >= 0 {
            if message[index] == UInt8(ascii: ","), message[index + 1] == UInt8(ascii: "p"), message[index + 2] == UInt8(ascii: "=") {
                proofStart = index
                break
            }
            index -= 1
        }
        guard let proofStart, let withoutProof = String(validating: message[..<proofStart], as: UTF8.self),
              let proofText = String(validating: message[(proofStart + 3)...], as: UTF8.self)
        else { throw .malformedMessage }
        let attributes = SCRAM.attributes(withoutProof)
        guard attributes["r"] == combinedNonce else { throw .nonceMismatch }
        guard let binding = attributes["c"], let bindingBytes = Data(base64Encoded: binding),
              let gs2 = String(data: bindingBytes, encoding: .utf8), gs2.hasPrefix("n,") || gs2.hasPrefix("y,")
        else { throw .malformedMessage }
        guard let proof = Data(base64Encoded: proofText), proof.count == 32 else {
            throw .malformedMessage
        }
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let clientSignature = SCRAM.hmac(key: verifier.storedKey, authMessage)
        let recoveredKey = SCRAM.xor(Array(proof), clientSignature)
        guard SCRAM.equal(SCRAM.sha256(recoveredKey), verifier.storedKey) else { throw .wrongProof }
        clientKey = recoveredKey
        let serverSignature = SCRAM.hmac(key: verifier.serverKey, authMessage)
        return Array("v=\(Data(serverSignature).base64EncodedString())".utf8)
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
            return Data(bytes).base64EncodedString()
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
        guard let serverFirst = String(bytes: message, encoding: .utf8) else { throw .malformedMessage }
        let attributes = SCRAM.attributes(serverFirst)
        guard let nonce = attributes["r"], let saltText = attributes["s"], let salt = Data(base64Encoded: saltText),
              let iterationsText = attributes["i"], let iterations = Int(iterationsText), iterations > 0
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
        return Array("\(withoutProof),p=\(Data(proof).base64EncodedString())".utf8)
    }

    public func receiveServerFinal(_ message: [UInt8]) throws(Failure) {
        guard let text = String(bytes: message, encoding: .utf8) else { throw .malformedMessage }
        let attributes = SCRAM.attributes(text)
        guard let signatureText = attributes["v"], let signature = Data(base64Encoded: signatureText) else {
            throw .malformedMessage
        }
        guard SCRAM.equal(Array(signature), expectedServerSignature) else { throw .invalidServerSignature }
    }
}

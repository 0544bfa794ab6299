import Configuration
import Foundation
import NIOCore
import PostgresWire

/// Authenticates one client against the secret Shoal holds for its user, with PgBouncer's semantics:
/// `md5` switches to SCRAM for users with SCRAM secrets; SCRAM with an md5 secret fails; an empty secret never passes.
public struct ClientAuthMachine {
    public enum Action {
        /// Send this request and wait for the client's answer.
        case send(ByteBuffer)
        /// Authenticated. `saslFinal` must reach the client before AuthenticationOk. `scramKeys` is set after a
        /// SCRAM login, for pass-through logins to the server.
        case authenticated(saslFinal: ByteBuffer?, scramKeys: (clientKey: [UInt8], serverKey: [UInt8])?, cleartextPassword: String?)
        /// Refused with this message (SQLSTATE 28P01 for a wrong password, 08P01 otherwise).
        case fail(message: String, code: String)
    }

    enum Method {
        case trust
        case cleartext
        case md5(salt: [UInt8])
        case scramStart(SCRAM.Verifier)
        case scramContinue(SCRAMServerExchange)
        case done
    }

    private let user: String
    /// nil: the user is unknown; PgBouncer still runs the exchange (mock auth) and then fails.
    private let secret: String?
    private var method: Method

    /// `parsedVerifier`: the secret already parsed as a SCRAM verifier (the caller may cache parses; base64
    /// decoding showed in login profiles). `verifierCache` derives verifiers for plaintext secrets (user,
    /// password). `salts` gives the salt of users without a stored verifier, unknown ones included.
    public init(authType: AuthType, user: String, secret: String?, parsedVerifier: SCRAM.Verifier? = nil,
                scramIterations: Int = SCRAM.defaultIterations, salts: SaltSource = .random(),
                verifierCache: ((String, String) -> SCRAM.Verifier)? = nil) {
        self.user = user
        self.secret = secret
        let storedVerifier = parsedVerifier ?? secret.flatMap(SCRAM.Verifier.init(parsing:))
        switch authType {
        case .any, .trust:
            method = .trust
        case .plain:
            method = .cleartext
        case .md5 where storedVerifier == nil:
            method = .md5(salt: SCRAM.randomBytes(4))
        case .md5, .scramSHA256, .cert, .hba:
            if let storedVerifier {
                method = .scramStart(storedVerifier)
            } else if let secret, !MD5Password.isStoredHash(secret), !secret.isEmpty {
                method = .scramStart(verifierCache?(user, secret)
                                     ?? SCRAM.Verifier(password: secret, salt: salts.salt(for: user), iterations: scramIterations))
            } else {
                // Unknown user or an md5 secret: run the exchange against a throwaway verifier so the failure looks
                // alike — with the salt this user name always gets, as a real user's stays the same (a fresh one on
                // every try would tell an attacker the name does not exist).
                method = .scramStart(SCRAM.Verifier(iterations: scramIterations, salt: salts.salt(for: user),
                                                    storedKey: Array(repeating: 0, count: 32), serverKey: Array(repeating: 0, count: 32)))
            }
        }
    }


    /// AuthenticationSASL offering SCRAM-SHA-256: the same bytes for every login, so one shared buffer.
    private static let scramOffer: ByteBuffer = {
        var out = ByteBufferAllocator().buffer(capacity: 32)
        out.writeAuthenticationSASL(mechanisms: [SCRAM.mechanism])
        return out
    }()

    public mutating func start() -> Action {
        var out = ByteBufferAllocator().buffer(capacity: 16)
        switch method {
        case .trust:
            method = .done
            return .authenticated(saslFinal: nil, scramKeys: nil, cleartextPassword: nil)
        case .cleartext:
            out.writeAuthenticationCleartextPassword()
        case .md5(let salt):
            out.writeAuthenticationMD5Password(salt: salt)
        case .scramStart:
            return .send(Self.scramOffer)
        case .scramContinue, .done:
            preconditionFailure("Invalid state: start() called twice")
        }
        return .send(out)
    }

    /// The body of a 'p' message from the client.
    public mutating func passwordMessageReceived(_ body: ByteBuffer) -> Action {
        var body = body
        switch method {
        case .cleartext:
            guard let password = body.readNullTerminatedString() else { return .fail(message: "broken password packet", code: "08P01") }
            if password.isEmpty { return .fail(message: "empty password returned by client", code: "08P01") }
            method = .done
            guard let secret, !secret.isEmpty else { return passwordFailed() }
            let matches: Bool
            if let verifier = SCRAM.Verifier(parsing: secret) {
                let derived = SCRAM.Verifier(password: password, salt: verifier.salt, iterations: verifier.iterations)
                matches = derived.storedKey == verifier.storedKey
            } else if MD5Password.isStoredHash(secret) {
                matches = MD5Password.storedHash(user: user, password: password) == secret
            } else {
                matches = password == secret
            }
            return matches ? .authenticated(saslFinal: nil, scramKeys: nil, cleartextPassword: password) : passwordFailed()
        case .md5(let salt):
            guard let answer = body.readNullTerminatedString() else { return .fail(message: "broken password packet", code: "08P01") }
            if answer.isEmpty { return .fail(message: "empty password returned by client", code: "08P01") }
            method = .done
            guard let secret, !secret.isEmpty else { return passwordFailed() }
            let stored = MD5Password.isStoredHash(secret) ? secret : MD5Password.storedHash(user: user, password: secret)
            return answer == MD5Password.response(storedHash: stored, salt: salt) ? .authenticated(saslFinal: nil, scramKeys: nil, cleartextPassword: nil) : passwordFailed()
        case .scramStart(let verifier):
            guard let mechanism = body.readNullTerminatedString(), let length = body.readInteger(as: Int32.self) else {
                return .fail(message: "broken SASL packet", code: "08P01")
            }
            guard mechanism == SCRAM.mechanism else {
                return .fail(message: "client selected an invalid SASL authentication mechanism", code: "08P01")
            }
            guard length >= 0, let data = body.readBytes(length: Int(length)) else { return .fail(message: "broken SASL packet", code: "08P01") }
            var exchange = SCRAMServerExchange(verifier: verifier)
            do {
                let serverFirst = try exchange.receiveClientFirst(data)
                method = .scramContinue(exchange)
                // Sized up front: an empty ByteBuffer grows (reallocates) as the message is written.
                var out = ByteBufferAllocator().buffer(capacity: 9 + serverFirst.count)
                out.writeAuthenticationSASLContinue(serverFirst)
                return .send(out)
            } catch {
                return saslFailed()
            }
        case .scramContinue(var exchange):
            method = .done
            let data = body.readBytes(length: body.readableBytes) ?? []
            do {
                // Run for unknown users too (against the throwaway verifier, which no proof matches): the answer
                // then takes as long as for a real user.
                let serverFinal = try exchange.receiveClientFinal(data)
                guard let secret, !secret.isEmpty, !MD5Password.isStoredHash(secret) else { return passwordFailed() }
                var out = ByteBufferAllocator().buffer(capacity: 9 + serverFinal.count)
                out.writeAuthenticationSASLFinal(serverFinal)
                let keys = exchange.clientKey.map { (clientKey: $0, serverKey: exchange.verifier.serverKey) }
                return .authenticated(saslFinal: out, scramKeys: keys, cleartextPassword: nil)
            } catch .wrongProof {
                return passwordFailed()
            } catch {
                return saslFailed()
            }
        case .trust, .done:
            return .fail(message: "client password pkt before startup packet", code: "08P01")
        }
    }

    /// PostgreSQL's words for a wrong password or an unknown user, whatever the method (28P01): what drivers,
    /// PHP code and people's alerts look for. (PgBouncer says `SASL authentication failed` after SCRAM and
    /// `password authentication failed` otherwise; both greps still match this, bar the SASL one.)
    private func passwordFailed() -> Action { .fail(message: "password authentication failed for user \"\(user)\"", code: "28P01") }
    /// The exchange itself broke (malformed message, nonce mismatch): PgBouncer's words.
    private func saslFailed() -> Action { .fail(message: "SASL authentication failed", code: "28P01") }
}

/// SCRAM salts for users Shoal has no stored verifier for (a plaintext password in the auth file, or no such
/// user): derived from the user name with a key secret to this process, so a name always gets the same salt —
/// unknown names cannot be told from real ones by a changing salt — and two users with the same password get
/// different salts.
public struct SaltSource: Sendable {
    private let key: [UInt8]

    public init(key: [UInt8]) { self.key = key }

    /// A new secret key (one per process).
    public static func random() -> SaltSource { SaltSource(key: SCRAM.randomBytes(32)) }

    public func salt(for user: String) -> [UInt8] {
        Array(SCRAM.hmac(key: key, "scram salt for \(user)").prefix(16))
    }
}

import NIOCore
import PostgresWire

/// Logs Shoal in to a PostgreSQL server: answers its authentication requests and collects what it reports
/// (ParameterStatus, BackendKeyData) until the first ReadyForQuery.
public struct ServerLoginMachine {
    public enum Secret: Sendable {
        case none
        case password(String)
        /// An md5 hash from the auth file (`md5…`): good for md5 servers only.
        case md5Hash(String)
        /// ClientKey/ServerKey from a client's SCRAM login (pass-through).
        case scramKeys(clientKey: [UInt8], serverKey: [UInt8])
    }

    /// The severity of the ErrorResponse that refused the login (FATAL, in practice), for PgBouncer's log line
    /// `server login failed: FATAL …`; nil when Shoal itself gave up.
    public private(set) var refusedWithSeverity: String?

    public enum Action {
        /// Send these bytes to the server and wait.
        case send(ByteBuffer)
        case wait
        /// Logged in: the server is ready for queries.
        case ready
        /// Login failed with this message and SQLSTATE, in PgBouncer's wording where it has one.
        case fail(message: String, code: String)
    }

    private let user: String
    private let secret: Secret
    /// The server certificate's tls-server-end-point hash when the connection is TLS (nil on plaintext).
    private let tlsServerEndPoint: [UInt8]?
    private var scram: SCRAMClientExchange?
    /// The server proved it knows the password (SASLFinal checked): only then is its AuthenticationOk believed.
    private var scramVerified = false
    /// The SASL mechanism chosen, for the log (`SCRAM-SHA-256-PLUS` when channel binding is in use).
    public private(set) var saslMechanism: String?
    public private(set) var parameters: [(String, String)] = []
    public private(set) var backendKey: (processID: Int32, secretKey: Int32)? = nil

    /// Whether a failed login (or connect) says the host is unavailable — unreachable, shutting down, starting
    /// up, speaking garbage — rather than that this login was refused or lacks a usable password (08P01
    /// "wrong password type" is Shoal's own word for the latter, as PgBouncer's).
    public static func isHostFailure(code: String, message: String) -> Bool {
        if code.hasPrefix("57") { return true }
        if code == "08P01" { return message.contains("bad packet") || message.contains("unknown pkt") || message.contains("bad SSL") }
        return code.hasPrefix("08")
    }

    public init(user: String, secret: Secret, tlsServerEndPoint: [UInt8]? = nil) {
        self.user = user
        self.secret = secret
        self.tlsServerEndPoint = tlsServerEndPoint
    }

    public mutating func messageReceived(type: UInt8, body: ByteBuffer) -> Action {
        var body = body
        switch type {
        case BackendMessage.authentication:
            guard let code = body.readInteger(as: Int32.self) else { return .fail(message: "server login failed: bad packet", code: "08P01") }
            return authenticationRequested(code: code, body: body)
        case BackendMessage.parameterStatus:
            if let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() {
                if let index = parameters.firstIndex(where: { $0.0 == name }) {
                    parameters[index].1 = value
                } else {
                    parameters.append((name, value))
                }
            }
            return .wait
        case BackendMessage.backendKeyData:
            if let pid = body.readInteger(as: Int32.self), let key = body.readInteger(as: Int32.self) {
                backendKey = (pid, key)
            }
            return .wait
        case BackendMessage.readyForQuery:
            return .ready
        case BackendMessage.errorResponse:
            let fields = ErrorFields(body: body)
            refusedWithSeverity = fields.severity
            return .fail(message: fields.message, code: fields.code)
        case BackendMessage.noticeResponse, BackendMessage.negotiateProtocolVersion:
            return .wait
        default:
            return .fail(message: "server login failed: unknown pkt", code: "08P01")
        }
    }

    private mutating func authenticationRequested(code: Int32, body: ByteBuffer) -> Action {
        var body = body
        var out = ByteBuffer()
        switch code {
        case 0:
            // An AuthenticationOk in the middle of a SCRAM exchange would let a server that does not know the
            // password (an impostor on the path) skip proving it.
            if scram != nil && !scramVerified {
                return .fail(message: "server login failed: failed to verify server signature", code: "08P01")
            }
            return .wait
        case 3: // cleartext
            guard case .password(let password) = secret else { return wrongPasswordType() }
            out.writePasswordMessage(password)
        case 5: // md5
            guard let salt = body.readBytes(length: 4) else { return .fail(message: "server login failed: bad packet", code: "08P01") }
            switch secret {
            case .password(let password): out.writePasswordMessage(MD5Password.response(user: user, password: password, salt: salt))
            case .md5Hash(let hash): out.writePasswordMessage(MD5Password.response(storedHash: hash, salt: salt))
            default: return wrongPasswordType()
            }
        case 10: // SASL
            var mechanisms: [String] = []
            while let name = body.readNullTerminatedString(), !name.isEmpty { mechanisms.append(name) }
            guard mechanisms.contains(SCRAM.mechanism) else {
                return .fail(message: "server login failed: none of the server's SASL authentication mechanisms are supported", code: "08P01")
            }
            // Channel binding whenever the server offers it over TLS, as libpq's channel_binding=prefer does.
            let binding: SCRAMClientExchange.ChannelBinding
            if let endPoint = tlsServerEndPoint {
                binding = mechanisms.contains(SCRAM.mechanism + "-PLUS") ? .tlsServerEndPoint(endPoint) : .notOffered
            } else {
                binding = .unsupported
            }
            var exchange: SCRAMClientExchange
            switch secret {
            case .password(let password): exchange = SCRAMClientExchange(secret: .password(password), channelBinding: binding)
            case .scramKeys(let clientKey, let serverKey):
                exchange = SCRAMClientExchange(secret: .keys(clientKey: clientKey, serverKey: serverKey), channelBinding: binding)
            default: return wrongPasswordType()
            }
            out.writeSASLInitialResponse(mechanism: exchange.mechanism, data: exchange.clientFirst())
            saslMechanism = exchange.mechanism
            scram = exchange
        case 11: // SASL continue
            guard var exchange = scram else { return .fail(message: "server login failed: bad packet", code: "08P01") }
            do {
                out.writeSASLResponse(try exchange.receiveServerFirst(body.readBytes(length: body.readableBytes) ?? []))
            } catch .tooManyIterations(let iterations) {
                return .fail(message: "server login failed: SCRAM iteration count \(iterations) is above \(SCRAMClientExchange.maxIterations)",
                             code: "08P01")
            } catch {
                return .fail(message: "server login failed: invalid server signature", code: "08P01")
            }
            scram = exchange
        case 12: // SASL final
            guard let exchange = scram else { return .fail(message: "server login failed: bad packet", code: "08P01") }
            do {
                try exchange.receiveServerFinal(body.readBytes(length: body.readableBytes) ?? [])
            } catch {
                return .fail(message: "server login failed: failed to verify server signature", code: "08P01")
            }
            scramVerified = true
            return .wait
        default:
            return .fail(message: "server login failed: wrong password type", code: "08P01")
        }
        return .send(out)
    }

    private func wrongPasswordType() -> Action {
        .fail(message: "server login failed: wrong password type", code: "08P01")
    }
}

import NIOCore
import Pooling
import PostgresWire
import Testing

@Suite struct AuthMachineTests {
    func body(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var message = ByteBuffer()
        write(&message)
        message.moveReaderIndex(forwardBy: 5) // type and length: the machine takes bodies
        return message
    }

    @Test func md5ClientLoginAgainstPlainAndHashedSecrets() {
        for secret in ["secretpw", MD5Password.storedHash(user: "postgres", password: "secretpw")] {
            var machine = ClientAuthMachine(authType: .md5, user: "postgres", secret: secret)
            guard case .send(var request) = machine.start() else { Issue.record("want a request"); return }
            request.moveReaderIndex(forwardBy: 9)
            let salt = request.readBytes(length: 4)!
            let answer = MD5Password.response(user: "postgres", password: "secretpw", salt: salt)
            guard case .authenticated = machine.passwordMessageReceived(body { $0.writePasswordMessage(answer) }) else {
                Issue.record("right md5 answer refused"); return
            }
            var wrong = ClientAuthMachine(authType: .md5, user: "postgres", secret: secret)
            _ = wrong.start()
            guard case .fail(let message, let code) = wrong.passwordMessageReceived(body { $0.writePasswordMessage("md5nope") }) else {
                Issue.record("wrong answer accepted"); return
            }
            #expect(message == "password authentication failed for user \"postgres\"" && code == "28P01")
        }
    }

    /// Runs the first SCRAM round between a client exchange for "pencil" and the machine; returns the client
    /// exchange and its client-final message.
    func scramFirstRound(_ server: inout ClientAuthMachine) throws -> (SCRAMClientExchange, [UInt8])? {
        var client = SCRAMClientExchange(secret: .password("pencil"))
        _ = server.start()
        guard case .send(var continueMessage) = server.passwordMessageReceived(body {
            $0.writeSASLInitialResponse(mechanism: SCRAM.mechanism, data: client.clientFirst())
        }) else { return nil }
        continueMessage.moveReaderIndex(forwardBy: 9)
        let final = try client.receiveServerFirst(continueMessage.readBytes(length: continueMessage.readableBytes)!)
        return (client, final)
    }

    @Test func scramLoginEndToEndBetweenTheTwoMachines() throws {
        var server = ClientAuthMachine(authType: .scramSHA256, user: "u", secret: "pencil")
        guard let (client, final) = try scramFirstRound(&server) else { Issue.record("want SASLContinue"); return }
        guard case .authenticated(let saslFinal?, let keys?, _) = server.passwordMessageReceived(body { $0.writeSASLResponse(final) }) else {
            Issue.record("SCRAM login refused"); return
        }
        var finalMessage = saslFinal
        finalMessage.moveReaderIndex(forwardBy: 9)
        // The client checks the server's signature: it proves the machine holds the right ServerKey.
        try client.receiveServerFinal(finalMessage.readBytes(length: finalMessage.readableBytes)!)
        #expect(keys.clientKey.count == 32)
    }

    @Test func scramRefusesAnMD5SecretAndAnUnknownUser() throws {
        for secret in [MD5Password.storedHash(user: "u", password: "pencil"), nil] {
            var server = ClientAuthMachine(authType: .scramSHA256, user: "u", secret: secret)
            guard let (_, final) = try scramFirstRound(&server) else { Issue.record("want SASLContinue"); return }
            guard case .fail(let message, _) = server.passwordMessageReceived(body { $0.writeSASLResponse(final) }) else {
                Issue.record("SCRAM accepted without a usable secret"); return
            }
            #expect(message == "password authentication failed for user \"u\"", "PostgreSQL's words, as for a wrong password")
        }
    }

    @Test func serverLoginAnswersMD5AndCollectsParameters() {
        var login = ServerLoginMachine(user: "postgres", secret: .password("secretpw"))
        let challenge = body { $0.writePostgresMessage(BackendMessage.authentication) { $0.writeInteger(Int32(5)); $0.writeBytes([1, 2, 3, 4]) } }
        guard case .send(var answer) = login.messageReceived(type: BackendMessage.authentication, body: challenge) else {
            Issue.record("want an md5 answer"); return
        }
        answer.moveReaderIndex(forwardBy: 5)
        #expect(answer.readNullTerminatedString() == "md5f7f7d44173da53d13bbaf4fff77edc21")
        _ = login.messageReceived(type: BackendMessage.parameterStatus, body: body { $0.writeParameterStatus(name: "TimeZone", value: "UTC") })
        _ = login.messageReceived(type: BackendMessage.backendKeyData, body: body { $0.writeBackendKeyData(processID: 7, secretKey: 9) })
        guard case .ready = login.messageReceived(type: BackendMessage.readyForQuery, body: body { $0.writeReadyForQuery(.idle) }) else {
            Issue.record("want ready"); return
        }
        #expect(login.parameters.first?.1 == "UTC")
        #expect(login.backendKey?.processID == 7)
        var refused = ServerLoginMachine(user: "postgres", secret: .none)
        guard case .fail(let message, _) = refused.messageReceived(type: BackendMessage.authentication, body: challenge) else {
            Issue.record("want failure"); return
        }
        #expect(message == "server login failed: wrong password type")
    }
}

extension AuthMachineTests {
    /// The salt a SCRAM login as `user` is offered.
    func offeredSalt(user: String, secret: String?, salts: SaltSource) -> String? {
        var server = ClientAuthMachine(authType: .scramSHA256, user: user, secret: secret, salts: salts)
        var client = SCRAMClientExchange(secret: .password("whatever"))
        _ = server.start()
        guard case .send(var first) = server.passwordMessageReceived(body {
            $0.writeSASLInitialResponse(mechanism: SCRAM.mechanism, data: client.clientFirst())
        }) else { return nil }
        first.moveReaderIndex(forwardBy: 9)
        let text = String(decoding: first.readableBytesView, as: UTF8.self)
        return text.split(separator: ",").first { $0.hasPrefix("s=") }.map(String.init)
    }

    /// An unknown user gets the same salt on every try, as a real one does (a fresh random salt each time told the
    /// two apart), and users sharing a plaintext password get different salts.
    @Test func saltsDoNotTellUnknownUsersOrSharedPasswords() throws {
        let salts = SaltSource(key: Array(repeating: 7, count: 32))
        let ghost = offeredSalt(user: "ghost", secret: nil, salts: salts)
        #expect(ghost != nil && ghost == offeredSalt(user: "ghost", secret: nil, salts: salts))
        #expect(ghost != offeredSalt(user: "phantom", secret: nil, salts: salts))
        let alice = offeredSalt(user: "alice", secret: "pencil", salts: salts)
        #expect(alice == offeredSalt(user: "alice", secret: "pencil", salts: salts))
        #expect(alice != offeredSalt(user: "bob", secret: "pencil", salts: salts))
        #expect(ghost != offeredSalt(user: "ghost", secret: nil, salts: .random()), "the key is the process's secret")
    }


    /// Shoal logging in to a server by SCRAM, the server played by Shoal's own client-facing SCRAM: returns the
    /// login machine after its SASLResponse, and the server's SASLFinal.
    func serverLoginUpToFinal() throws -> (ServerLoginMachine, ByteBuffer)? {
        var login = ServerLoginMachine(user: "postgres", secret: .password("pencil"))
        var server = ClientAuthMachine(authType: .scramSHA256, user: "postgres", secret: "pencil")
        guard case .send(let sasl) = server.start(), case .send(let initial) = login.messageReceived(
            type: BackendMessage.authentication, body: sasl.getSlice(at: 5, length: sasl.readableBytes - 5)!) else { return nil }
        guard case .send(let serverFirst) = server.passwordMessageReceived(initial.getSlice(at: 5, length: initial.readableBytes - 5)!),
              case .send(let response) = login.messageReceived(
                type: BackendMessage.authentication, body: serverFirst.getSlice(at: 5, length: serverFirst.readableBytes - 5)!),
              case .authenticated(let final?, _, _) = server.passwordMessageReceived(response.getSlice(at: 5, length: response.readableBytes - 5)!)
        else { return nil }
        return (login, final.getSlice(at: 5, length: final.readableBytes - 5)!)
    }

    @Test func serverLoginBelievesAuthenticationOkOnlyAfterTheServersSignature() throws {
        let ok = body { $0.writeAuthenticationOk() }
        guard var skipping = try serverLoginUpToFinal()?.0 else { Issue.record("exchange did not run"); return }
        guard case .fail(let message, _) = skipping.messageReceived(type: BackendMessage.authentication, body: ok) else {
            Issue.record("an AuthenticationOk without SASLFinal was believed"); return
        }
        #expect(message == "server login failed: failed to verify server signature")

        guard let (login, final) = try serverLoginUpToFinal() else { Issue.record("exchange did not run"); return }
        var honest = login
        guard case .wait = honest.messageReceived(type: BackendMessage.authentication, body: final),
              case .wait = honest.messageReceived(type: BackendMessage.authentication, body: ok) else {
            Issue.record("a verified exchange was refused"); return
        }
    }

    @Test func serverLoginRefusesAnIterationCountThatWouldStallTheLoop() {
        var login = ServerLoginMachine(user: "postgres", secret: .password("pencil"))
        let sasl = body { $0.writeAuthenticationSASL(mechanisms: [SCRAM.mechanism]) }
        guard case .send(let initial) = login.messageReceived(type: BackendMessage.authentication, body: sasl) else {
            Issue.record("no SASLInitialResponse"); return
        }
        let text = String(decoding: initial.readableBytesView, as: UTF8.self)
        guard let nonce = text.components(separatedBy: "r=").last else { Issue.record("no nonce in \(text)"); return }
        let serverFirst = body {
            $0.writeAuthenticationSASLContinue(Array("r=\(nonce)server,s=c2FsdHNhbHQ=,i=2000000000".utf8))
        }
        guard case .fail(let message, let code) = login.messageReceived(type: BackendMessage.authentication, body: serverFirst) else {
            Issue.record("two billion PBKDF2 rounds were attempted"); return
        }
        #expect(message == "server login failed: SCRAM iteration count 2000000000 is above 100000" && code == "08P01")
    }
}

@Suite struct HostFailureClassificationTests {
    @Test func unreachableOrShuttingDownIsTheHostsFaultARefusedLoginIsNot() {
        #expect(ServerLoginMachine.isHostFailure(code: "08006", message: "connect failed"))
        #expect(ServerLoginMachine.isHostFailure(code: "57P03", message: "the database system is shutting down"))
        #expect(ServerLoginMachine.isHostFailure(code: "08P01", message: "server login failed: bad packet"))
        #expect(!ServerLoginMachine.isHostFailure(code: "08P01", message: "server login failed: wrong password type"))
        #expect(!ServerLoginMachine.isHostFailure(code: "28P01", message: "password authentication failed for user \"x\""))
        #expect(!ServerLoginMachine.isHostFailure(code: "3D000", message: "database \"x\" does not exist"))
    }
}

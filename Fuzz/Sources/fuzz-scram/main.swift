// Both sides of SCRAM-SHA-256 (and the md5/cleartext answers) on any bytes: the client-first/client-final parser
// behind ClientAuthMachine, and the server-first/server-final parser Shoal uses towards PostgreSQL. Nothing traps,
// and a fuzzed exchange never authenticates: it would need the HMAC of a key it does not know.
import FuzzDriver
import Foundation
import NIOCore
import Configuration
import PostgresWire
import Pooling

/// Few PBKDF2 rounds: the parsers are under test, not the hash.
let verifier = SCRAM.Verifier(password: "secret", salt: Array("fuzzsaltfuzzsalt".utf8), iterations: 2)
let storedSecret = "SCRAM-SHA-256$2:\(Data(verifier.salt).base64EncodedString())$"
    + "\(Data(verifier.storedKey).base64EncodedString()):\(Data(verifier.serverKey).base64EncodedString())"

/// Two messages from the input: the first byte after `control` is the first one's length.
func split(_ input: UnsafeBufferPointer<UInt8>) -> ([UInt8], [UInt8]) {
    guard input.count >= 2 else { return ([], []) }
    let firstLength = min(Int(input[1]), input.count - 2)
    return (Array(input[2..<(2 + firstLength)]), Array(input[(2 + firstLength)...]))
}

fuzz { input in
    guard input.count >= 1 else { return }
    let input = input
    let (first, second) = split(input)
    switch input[0] % 4 {
    case 0, 1:
        // Shoal as the server: a client's SASLInitialResponse and SASLResponse bodies (byte 0 bit 0: the first
        // is taken as a whole body, or wrapped as a well-formed SASLInitialResponse around the fuzzed data).
        var machine = ClientAuthMachine(authType: .scramSHA256, user: "fuzz", secret: input[0] & 4 == 0 ? storedSecret : nil,
                                        scramIterations: 2)
        _ = machine.start()
        var body = ByteBuffer()
        if input[0] % 4 == 0 {
            body.writeBytes(first)
        } else {
            body.writeCString(SCRAM.mechanism)
            body.writeInteger(Int32(first.count))
            body.writeBytes(first)
        }
        switch machine.passwordMessageReceived(body) {
        case .authenticated: preconditionFailure("authenticated on a client-first message")
        case .fail: return
        case .send: break
        }
        if case .authenticated = machine.passwordMessageReceived(ByteBuffer(bytes: second)) {
            preconditionFailure("a fuzzed client proof was accepted")
        }
    case 2:
        // md5 and cleartext answers.
        for type in [AuthType.md5, .plain] {
            var machine = ClientAuthMachine(authType: type, user: "fuzz", secret: "md5" + String(repeating: "0", count: 32))
            _ = machine.start()
            if case .authenticated = machine.passwordMessageReceived(ByteBuffer(bytes: first + second)) {
                preconditionFailure("a fuzzed \(type) answer was accepted")
            }
        }
    default:
        // Shoal as the client: PostgreSQL's server-first and server-final (keys, as after a pass-through login,
        // so no PBKDF2 runs whatever iteration count the input names).
        var exchange = SCRAMClientExchange(secret: .keys(clientKey: Array(repeating: 1, count: 32), serverKey: Array(repeating: 2, count: 32)),
                                           clientNonce: "fuzznonce")
        _ = exchange.clientFirst()
        do {
            _ = try exchange.receiveServerFirst(first)
        } catch {
            return
        }
        if (try? exchange.receiveServerFinal(second)) != nil {
            preconditionFailure("a fuzzed server signature was accepted")
        }
    }
    return
}

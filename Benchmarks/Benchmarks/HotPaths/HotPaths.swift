import Benchmark
import NIOCore
import Pooling
import PostgresWire

/// What the proxy does per message and per transaction, without sockets: frame scanning of a pgbench -S
/// response, a lease/release round trip through the pool state, the tracker, and a SCRAM login's server side.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput], maxDuration: .seconds(3))

    // The harness's own mallocs and time per sample, to read the others against.
    Benchmark("Empty loop (harness overhead)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(0) }
    }

    // A typical response to pgbench -S: RowDescription, DataRow, CommandComplete, ReadyForQuery.
    var response = ByteBuffer()
    response.writeRowDescription(columns: [("abalance", 23)])
    response.writeDataRow(["0"])
    response.writeCommandComplete("SELECT 1")
    response.writeReadyForQuery(.idle)

    struct Visitor: FrameVisitor {
        var tracker = TransactionTracker()
        func wantsBody(type: UInt8) -> Bool { type == BackendMessage.readyForQuery }
        mutating func messageStarted(type: UInt8, length: Int, offset: Int) -> Bool { true }
        mutating func messageBody(type: UInt8, body: ByteBuffer) {
            tracker.clientSent(type: FrontendMessage.query)
            _ = tracker.readyForQueryReceived(.idle)
        }
    }

    Benchmark("Scan a pgbench -S response (4 messages)") { benchmark in
        var scanner = FrameScanner()
        var visitor = Visitor()
        for _ in benchmark.scaledIterations {
            blackHole(try? scanner.scan(response, visitor: &visitor))
        }
    }

    final class Server {}
    final class Client {}
    Benchmark("Pool lease and release (idle server on the client's loop)") { benchmark in
        var pool = PoolState<Server, Client>(settings: PoolSettings(poolSize: 20))
        let client = Client()
        let server = Server()
        _ = pool.leaseRequested(by: client, loop: 0, now: 0)
        _ = pool.connected(server, loop: 0, createdAt: 0, now: 0)
        _ = pool.released(server, loop: 0, createdAt: 0, reusable: true, now: 0)
        for iteration in benchmark.scaledIterations {
            let now = UInt64(iteration)
            blackHole(pool.leaseRequested(by: client, loop: 0, now: now))
            blackHole(pool.released(server, loop: 0, createdAt: 0, reusable: true, now: now))
        }
    }

    let verifier = SCRAM.Verifier(password: "pencil", salt: Array("saltsaltsaltsalt".utf8), iterations: 4096)
    // The client's PBKDF2 is the client's cost, not Shoal's: derive its keys once, outside the measurement.
    let clientKey = SCRAM.hmac(key: SCRAM.saltedPassword("pencil", salt: verifier.salt, iterations: 4096), "Client Key")
    Benchmark("SCRAM exchange of one login, both sides (stored verifier, keys known)") { benchmark in
        for _ in benchmark.scaledIterations {
            var client = SCRAMClientExchange(secret: .keys(clientKey: clientKey, serverKey: verifier.serverKey))
            var server = SCRAMServerExchange(verifier: verifier)
            benchmark.startMeasurement()
            let first = try server.receiveClientFirst(client.clientFirst())
            let final = try client.receiveServerFirst(first)
            blackHole(try server.receiveClientFinal(final))
            benchmark.stopMeasurement()
        }
    }

    // Shoal's own share of a login: the server side only. The client's two messages are made once, against a
    // fixed server nonce, and replayed (so the nonce's getrandom() is not in the figure).
    let serverNonce = SCRAM.randomNonce()
    var client = SCRAMClientExchange(secret: .keys(clientKey: clientKey, serverKey: verifier.serverKey))
    let clientFirst = client.clientFirst()
    var probe = SCRAMServerExchange(verifier: verifier, serverNonce: serverNonce)
    let clientFinal = try! client.receiveServerFirst(try! probe.receiveClientFirst(clientFirst))
    Benchmark("SCRAM server side of one login (stored verifier)") { benchmark in
        for _ in benchmark.scaledIterations {
            var server = SCRAMServerExchange(verifier: verifier, serverNonce: serverNonce)
            blackHole(try server.receiveClientFirst(clientFirst))
            blackHole(try server.receiveClientFinal(clientFinal))
        }
    }
}

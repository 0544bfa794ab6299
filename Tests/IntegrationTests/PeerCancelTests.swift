import Configuration
import Foundation
import Testing

/// issue 17: behind a Service or an NLB, a CancelRequest reaches a random replica. With `[peers]` and `peer_id`
/// (PgBouncer's peering) or `peers_dns` (Shoal's discovery), it still stops the query it was meant for.
@Suite(.serialized) struct PeerCancelTests {
    /// A CancelRequest with `key`, sent to `host:port` as psql's Ctrl-C would.
    func cancel(_ key: (processID: Int32, secretKey: Int32), host: String = "127.0.0.1", port: Int) throws {
        let canceller = try RawClient(port: port, host: host)
        try canceller.send(be32(16) + be32(80877102) + be32(Int(UInt32(bitPattern: key.processID))) + be32(Int(UInt32(bitPattern: key.secretKey))))
        _ = canceller.readAll()
    }

    /// Runs pg_sleep(30) through `port` and returns the client, its key and what it received once cancelled.
    func sleeper(port: Int, host: String = "127.0.0.1") throws -> (RawClient, (processID: Int32, secretKey: Int32)) {
        let client = try RawClient(port: port, host: host, receiveTimeout: 20)
        let key = try client.loginForKey()
        try client.send([UInt8(ascii: "Q")] + be32(4 + 20) + Array("SELECT pg_sleep(30)".utf8) + [0])
        usleep(300_000)
        return (client, key)
    }

    @Test func aCancelSentToAnyOfThreePeersStopsTheQueryRunningThroughAnother() async throws {
        let ports = (0..<3).map { _ in freePort() }
        var instances: [ShoalInstance] = []
        for (index, port) in ports.enumerated() {
            instances.append(try await ShoalInstance {
                $0.authType = .trust
                $0.adminUsers = ["postgres"]
                $0.listenPort = port
                $0.peerID = index + 1
                for (other, otherPort) in ports.enumerated() {
                    var peer = PeerEntry(id: other + 1, host: "127.0.0.1")
                    peer.port = otherPort
                    $0.peers[other + 1] = peer
                }
            })
        }
        defer { for shoal in instances { Task { await shoal.stop() } } }
        #expect(try PQConnection(instances[0].consoleConninfo()).query("SHOW PEERS").map { $0[0] } == ["2", "3"])
        for (through, landsOn) in [(0, 1), (2, 0), (1, 2), (0, 0)] {
            let (client, key) = try sleeper(port: ports[through])
            let started = Date()
            try cancel(key, port: ports[landsOn])
            let answer = String(decoding: try client.readBytesUntilReady(), as: UTF8.self)
            #expect(answer.contains("57014") && answer.contains("canceling statement"), "through \(through), cancel to \(landsOn): \(answer)")
            #expect(Date().timeIntervalSince(started) < 15, "stopped by the cancel, not by pg_sleep's end")
            client.close()
        }
    }

    @Test func peersDiscoveredByDNSForwardACancelNoLocalClientOwns() async throws {
        let port = freePort()
        let target = try await ShoalInstance { $0.authType = .trust; $0.listenAddr = ["127.0.0.12"]; $0.listenPort = port; $0.peersDNS = "127.0.0.12" }
        defer { Task { await target.stop() } }
        let landing = try await ShoalInstance { $0.authType = .trust; $0.listenAddr = ["127.0.0.11"]; $0.listenPort = port; $0.peersDNS = "127.0.0.12" }
        defer { Task { await landing.stop() } }
        try waitUntil("the name is resolved") { landing.log.contains("peers_dns 127.0.0.12: 127.0.0.12") }
        let (client, key) = try sleeper(port: port, host: "127.0.0.12")
        try cancel(key, host: "127.0.0.11", port: port)
        let answer = String(decoding: try client.readBytesUntilReady(), as: UTF8.self)
        #expect(answer.contains("57014"), "\(answer)")
        // A key nobody owns is sent on once (TTL 0 after the broadcast), never bounced back and forth.
        try cancel((processID: 12345, secretKey: 67891), host: "127.0.0.11", port: port)
        usleep(300_000)
        #expect(try PQConnection(landing.conninfo.replacingOccurrences(of: "127.0.0.1 ", with: "127.0.0.11 ")).scalar("select 'up'") == "up")
    }
}

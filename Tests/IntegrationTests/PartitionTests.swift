import Foundation
import Testing

/// A server that vanishes without a reset — its packets dropped, as in a silent network partition — must not
/// leave clients hanging until TCP gives up (about 15 minutes). With tcp_user_timeout (and keepalive for idle
/// servers) the kernel ends the connection within seconds and the client gets PostgreSQL's connection error;
/// service resumes when the network does. (issue 15: keepalive keys that act; issue 18: faults.)
@Suite(.serialized) struct PartitionTests {
    /// Drops every packet to and from `port` on loopback (both directions pass OUTPUT), until `heal` is called.
    struct Partition {
        let port: Int
        var rules: [[String]] { [["OUTPUT", "-p", "tcp", "--dport", "\(port)", "-j", "DROP"], ["OUTPUT", "-p", "tcp", "--sport", "\(port)", "-j", "DROP"]] }
        func start() throws {
            for rule in rules {
                let result = try ProcessRunner.run("iptables", ["-I"] + rule)
                guard result.status == 0 else { throw TestFailure("iptables: \(result.stderr)") }
            }
        }
        func heal() { for rule in rules { _ = try? ProcessRunner.run("iptables", ["-D"] + rule) } }
    }

    @Test(.enabled(if: geteuid() == 0, "iptables needs root (CI runs as root)"))
    func aSilentlyDroppedServerIsNoticedWithinTcpUserTimeout() async throws {
        let postgres = try TestPostgres(name: "partition")
        defer { try? postgres.stop() }
        let shoal = try await ShoalInstance {
            $0.databases["postgres"]?.ports = [postgres.port]
            $0.defaultPoolSize = 1
            $0.tcpUserTimeout = 2000
            $0.tcpKeepalive = true
            $0.tcpKeepidle = 1
            $0.tcpKeepintvl = 1
            $0.tcpKeepcnt = 2
            $0.serverConnectTimeout = 2
            $0.serverLoginRetry = 1
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select 'before'") == "before")
        let partition = Partition(port: postgres.port)
        try partition.start()
        defer { partition.heal() }
        let started = Date()
        do {
            _ = try client.query("select 'during'")
            Issue.record("a query answered through a partition")
        } catch let error as PQError {
            #expect(error.sqlState == "08006", "\(error.message)")
        }
        let waited = Date().timeIntervalSince(started)
        // tcp_user_timeout is 2 s; the bound leaves room for a busy machine, and is far below TCP's own ~15 min.
        #expect(waited < 20, "the client waited \(waited) s")
        partition.heal()
        // The client kept its Shoal connection (transaction pooling) and is served by a new server.
        try waitUntil("service resumes", timeout: 20) { (try? client.scalar("select 'after'")) == "after" }

        // An idle server has nothing unacknowledged: keepalive (1 s idle, 1 s apart, 2 probes) finds it dead.
        let console = try PQConnection(shoal.consoleConninfo())
        #expect(try console.query("SHOW SERVERS").count == 1)
        try partition.start()
        try waitUntil("keepalive closes the idle server", timeout: 20) { try console.query("SHOW SERVERS").isEmpty }
        partition.heal()
        #expect(try client.scalar("select 'after keepalive'") == "after keepalive")
    }
}

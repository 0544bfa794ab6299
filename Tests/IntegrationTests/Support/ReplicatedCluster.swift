import Foundation

/// A PostgreSQL 15 primary and streaming replicas on loopback, each node on its own address (127.0.0.x) and
/// one shared port, so that a host list (`host=a,b,c port=p`) and an Aurora-style instance pattern
/// (`127.0.0.?` with the last octet as server_id) both describe it.
///
/// The primary carries a function `aurora_replica_status()` with Aurora's columns that reports the real
/// topology: itself as the writer (`MASTER_SESSION_ID`) and every replica streaming from it.
final class ReplicatedCluster: @unchecked Sendable {
    let port: Int
    private(set) var nodes: [TestPostgres] = []
    private let name: String
    private let synchronous: Bool
    private var nextOctet: Int

    /// `firstOctet`: the primary listens on 127.0.0.<firstOctet>, replica i on the next ones.
    init(name: String, replicas: Int = 2, firstOctet: Int, synchronous: Bool = false) throws {
        self.name = name
        self.port = freePort()
        self.synchronous = synchronous
        self.nextOctet = firstOctet
        let hba = """
            local all all trust
            host all all 127.0.0.0/8 scram-sha-256
            host replication all 127.0.0.0/8 scram-sha-256
            """
        let settings = ["wal_level=replica", "max_wal_senders=10", "hot_standby=on", "wal_receiver_status_interval=1s"]
        let primary = try TestPostgres(name: "\(name)-\(firstOctet)", address: "127.0.0.\(firstOctet)", port: port,
                                       settings: settings, hba: hba)
        nodes.append(primary)
        nextOctet += 1
        try primary.psql("""
            CREATE FUNCTION aurora_replica_status() RETURNS TABLE(server_id text, session_id text, replica_lag_in_msec float8,
                last_update_timestamp timestamptz) LANGUAGE sql AS $$
              SELECT split_part(host(inet_server_addr()), '.', 4), 'MASTER_SESSION_ID', 0::float8, now()
               WHERE NOT pg_is_in_recovery()
              UNION ALL
              SELECT application_name, 'replica-' || pid, COALESCE(EXTRACT(EPOCH FROM replay_lag) * 1000, 0)::float8, now()
                FROM pg_stat_replication
            $$
            """)
        for _ in 0..<replicas { try addReplica() }
        if synchronous {
            // Set once the replicas stream: before, every commit (the function above too) would wait for them.
            let names = (1...replicas).map { "\"\(firstOctet + $0)\"" }.joined(separator: ",")
            // FIRST 1: the first replica is the synchronous one, the one a failover promotes. (With ANY 1 a
            // commit may be on the other replica only, and promoting the first would lose it.)
            try primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (\(names))'")
            try primary.psql("SELECT pg_reload_conf()")
        }
    }

    var primary: TestPostgres { nodes[0] }
    var replicas: [TestPostgres] { Array(nodes.dropFirst()) }
    var hosts: [String] { nodes.map(\.address) }

    /// A new replica of the primary on the next address, streaming once this returns.
    @discardableResult
    func addReplica() throws -> TestPostgres {
        let octet = nextOctet
        nextOctet += 1
        let replica = try TestPostgres(name: "\(name)-\(octet)", address: "127.0.0.\(octet)", port: port,
                                       settings: ["hot_standby=on", "wal_receiver_status_interval=1s"],
                                       baseBackupFrom: primary, applicationName: "\(octet)")
        nodes.append(replica)
        try waitUntil("replica \(octet) streams") {
            (try? primary.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = '\(octet)' AND state = 'streaming'")) == "1"
        }
        return replica
    }

    func stopAll() {
        for node in nodes { try? node.stop(mode: "immediate") }
    }
}

/// Polls `condition` every 100 ms until it holds, or throws after `timeout` seconds.
func waitUntil(_ what: String, timeout: TimeInterval = 30, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(100_000)
    }
    throw TestFailure("timed out waiting until \(what)")
}

@testable import Configuration
import Testing

@Suite struct HBARulesTests {
    func rules(_ files: [String: String], path: String = "/etc/shoal/hba.conf") throws(ConfigDiagnostic) -> HBARules {
        try HBARules.load(path: path, read: { name in
            guard let text = files[name] else { throw Missing() }
            return text
        })
    }
    struct Missing: Error {}

    let v4 = HBARules.Peer.inet([10, 1, 2, 3])

    @Test func theFirstMatchingRuleDecides() throws {
        let hba = try rules(["/etc/shoal/hba.conf": """
            # TYPE  DATABASE        USER        ADDRESS             METHOD
            local   all             all                             peer
            host    pgbouncer       stats       10.0.0.0/8          trust    # the exporter
            host    all             blocked     0.0.0.0/0           reject
            hostssl moodle,"all"    all         10.0.0.0 255.0.0.0  scram-sha-256
            hostnossl sameuser      all         10.1.0.0/16         md5
            host    all             all         ::1/128             password
            """])
        func method(_ peer: HBARules.Peer, tls: Bool = false, db: String, user: String) -> HBARules.Method? {
            hba.rule(for: peer, tls: tls, database: db, user: user)?.method
        }
        #expect(method(.unixSocket, db: "moodle", user: "alice") == .peer)
        #expect(method(v4, db: "pgbouncer", user: "stats") == .trust)
        #expect(method(v4, db: "moodle", user: "blocked") == .reject)
        #expect(method(v4, tls: true, db: "moodle", user: "alice") == .scramSHA256)
        // A quoted "all" is a database called all, not the keyword.
        #expect(method(v4, tls: true, db: "all", user: "alice") == .scramSHA256)
        #expect(method(v4, tls: true, db: "other", user: "alice") == nil)
        // hostnossl and sameuser: the database named like the user, without TLS only.
        #expect(method(v4, db: "alice", user: "alice") == .md5)
        #expect(method(v4, tls: true, db: "alice", user: "alice") == nil)
        #expect(method(.inet([10, 2, 0, 1]), db: "alice", user: "alice") == nil)
        // IPv6, and an IPv4-mapped IPv6 address counts as the IPv4 one.
        #expect(method(.inet([UInt8](repeating: 0, count: 15) + [1]), db: "x", user: "y") == .password)
        #expect(method(.inet([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 9, 9, 9]), db: "pgbouncer", user: "stats") == .trust)
        #expect(method(.inet([192, 168, 0, 1]), db: "pgbouncer", user: "stats") == nil)
    }

    @Test func nameFilesAreReadRelativeToTheRulesFile() throws {
        let hba = try rules([
            "/etc/shoal/hba.conf": "host @dbs @lists/users.txt 0.0.0.0/0 md5\n",
            "/etc/shoal/dbs": "moodle\n  reports, \"odd name\"  # a comment\n",
            "/etc/shoal/lists/users.txt": "alice bob\n",
        ])
        #expect(hba.rule(for: v4, tls: false, database: "odd name", user: "bob")?.method == .md5)
        #expect(hba.rule(for: v4, tls: false, database: "reports", user: "alice") != nil)
        #expect(hba.rule(for: v4, tls: false, database: "moodle", user: "carol") == nil)
    }

    /// Every line PgBouncer would skip with a warning is refused with its file and line: a skipped reject line,
    /// or an address that can never match, would let in whom it was written to keep out.
    @Test func badLinesRefuseTheFileWithTheirPlace() {
        let cases: [(String, String)] = [
            ("hostgssenc all all 10.0.0.0/8 md5", "unknown type"),
            ("host replication all 10.0.0.0/8 md5", "replication is not supported"),
            ("host all +admins 10.0.0.0/8 md5", "group names"),
            ("host all all db.example.com md5", "host names are not supported"),
            ("host all all 10.0.0.1/8 reject", "bits outside its mask"),
            ("host all all 10.0.0.0/33 md5", "invalid mask"),
            ("host all all 10.0.0.0 255.0.0 md5", "failed to parse mask"),
            ("host all all 10.0.0.0/8 ldap", "unsupported method"),
            ("host all all 10.0.0.0/8 md5 map=corp", "unsupported parameters"),
            ("host all all 10.0.0.0/8 peer", "only supported on local sockets"),
            ("host \"unterminated all 10.0.0.0/8 md5", "unterminated quote"),
            ("host all", "no user column"),
            ("host @missing all 10.0.0.0/8 md5", "cannot read /etc/shoal/missing"),
        ]
        for (line, text) in cases {
            do {
                _ = try rules(["/etc/shoal/hba.conf": "local all all trust\n\(line)\n"])
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.file == "/etc/shoal/hba.conf" && error.line == 2 && error.message.contains(text), "\(line): \(error)")
            }
        }
    }

    @Test func noRulesRejectEveryone() throws {
        let hba = try rules(["/etc/shoal/hba.conf": "# nothing yet\n\n"])
        #expect(hba.rules.isEmpty)
        #expect(hba.rule(for: .unixSocket, tls: false, database: "moodle", user: "alice") == nil)
    }
}

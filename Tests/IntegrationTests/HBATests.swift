import Configuration
import Foundation
import Testing

/// auth_type = hba (issue 15): PgBouncer's pg_hba.conf subset decides per login, through real libpq clients.
@Suite(.serialized) struct HBATests {
    /// The OS account running the tests: `peer` admits exactly this name on the Unix socket.
    let osUser = ClientIdentity.osUserName()

    func rulesText(allowElsewhere: Bool) -> String {
        """
        # TYPE  DATABASE            USER        ADDRESS         METHOD
        local   peerdb              all                         peer
        host    all                 blocked     127.0.0.1/32    reject
        host    trustdb             postgres    127.0.0.1/32    trust
        host    postgres,pgbouncer  all         127.0.0.1/32    scram-sha-256
        \(allowElsewhere ? "host    elsewhere           postgres    127.0.0.1/32    md5" : "")
        """
    }

    @Test func eachRuleKindDecidesItsLoginsAndABadReloadKeepsTheRules() async throws {
        var hbaPath = "", configPath = ""
        let shoal = try await ShoalInstance {
            hbaPath = "\($0.unixSocketDir)/hba.conf"
            configPath = "\($0.unixSocketDir)/shoal.ini"
            try? self.rulesText(allowElsewhere: false).write(toFile: hbaPath, atomically: true, encoding: .utf8)
            $0.authType = .hba
            $0.authHbaFile = hbaPath
            $0.hbaRules = try? HBARules.load(path: hbaPath)
            $0.configFile = configPath
            $0.adminUsers = ["postgres"]
            $0.addEntry("trustdb")
            $0.addEntry("elsewhere")
            // peer proves who the OS user is; the server login is the entry's forced user.
            $0.addEntry("peerdb") { $0.user = "postgres" }
        }
        defer { Task { await shoal.stop() } }
        let tcp = "host=127.0.0.1 port=\(shoal.port) connect_timeout=10"
        let socket = "host=\(shoal.directory) port=\(shoal.port) connect_timeout=10"
        func checkRules(elsewhereAllowed: Bool) throws {
            // scram-sha-256: the password is checked.
            #expect(try PQConnection("\(tcp) dbname=postgres user=postgres password=\(TestPostgres.password)").scalar("select 1") == "1")
            #expect(refusal("\(tcp) dbname=postgres user=postgres password=wrong").contains("password authentication failed for user \"postgres\""))
            // reject, before any password is asked.
            #expect(refusal("\(tcp) dbname=postgres user=blocked password=x").contains("login rejected"))
            // trust: no password at all.
            #expect(try PQConnection("\(tcp) dbname=trustdb user=postgres").scalar("select current_database()") == "postgres")
            // No rule matches: refused.
            let elsewhere = "\(tcp) dbname=elsewhere user=postgres password=\(TestPostgres.password)"
            if elsewhereAllowed {
                #expect(try PQConnection(elsewhere).scalar("select 2") == "2")
            } else {
                #expect(refusal(elsewhere).contains("no authentication method is found"))
            }
            // peer: the Unix socket's OS user must be the login name.
            #expect(try PQConnection("\(socket) dbname=peerdb user=\(osUser)").scalar("select current_user") == "postgres")
            #expect(refusal("\(socket) dbname=peerdb user=someone_else_\(osUser)").contains("unix socket login rejected"))
            // A local login to a database no local rule names: no rule.
            #expect(refusal("\(socket) dbname=postgres user=postgres password=\(TestPostgres.password)").contains("no authentication method is found"))
        }
        try checkRules(elsewhereAllowed: false)

        // RELOAD re-reads the rules; a file Shoal would refuse at start-up is refused, and the running rules stay.
        func writeConfig() throws {
            let ini = """
                [databases]
                postgres = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
                trustdb = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
                elsewhere = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
                peerdb = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres user=postgres
                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = \(shoal.port)
                unix_socket_dir = \(shoal.directory)
                auth_type = hba
                auth_hba_file = \(hbaPath)
                auth_file = \(shoal.directory)/userlist.txt
                admin_users = postgres
                logfile = \(shoal.logPath)
                pool_mode = transaction
                """
            try ini.write(toFile: configPath, atomically: true, encoding: .utf8)
            try "\"postgres\" \"\(TestPostgres.password)\"\n".write(toFile: "\(shoal.directory)/userlist.txt", atomically: true, encoding: .utf8)
        }
        try writeConfig()
        let console = try PQConnection("\(tcp) dbname=pgbouncer user=postgres password=\(TestPostgres.password)")
        try (rulesText(allowElsewhere: true) + "\nhost all all 127.0.0.1 md5\n").write(toFile: hbaPath, atomically: true, encoding: .utf8)
        #expect(throws: PQError.self) { try console.query("RELOAD") }
        #expect(shoal.log.contains("\(hbaPath):7"), "the log names the file and line: \(shoal.log.suffix(600))")
        try checkRules(elsewhereAllowed: false)

        try rulesText(allowElsewhere: true).write(toFile: hbaPath, atomically: true, encoding: .utf8)
        try console.query("RELOAD")
        try checkRules(elsewhereAllowed: true)
        // A deleted file is refused too, rather than read as "no rules".
        try FileManager.default.removeItem(atPath: hbaPath)
        #expect(throws: PQError.self) { try console.query("RELOAD") }
        try checkRules(elsewhereAllowed: true)
    }
}

enum ClientIdentity {
    static func osUserName() -> String {
        guard let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name else { return "root" }
        return String(cString: name)
    }
}

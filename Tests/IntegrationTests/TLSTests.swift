import Configuration
import Foundation
import Testing

/// TLS on both sides against a real TLS-only PostgreSQL (hostssl) and a test CA made with openssl.
@Suite(.serialized) struct TLSTests {
    let certificates = TestCertificates.shared

    /// Shoal in front of the TLS-only server, reaching it as `host`.
    func tlsDatabase(host: String) -> DatabaseEntry {
        var database = DatabaseEntry(name: "postgres")
        database.hosts = [host]
        database.ports = [TLSPostgres.shared.port]
        database.dbname = "postgres"
        return database
    }

    func configureTLS(_ config: inout ShoalConfig, serverMode: String, host: String = "localhost", clientMode: String = "disable") {
        config.databases = ["postgres": tlsDatabase(host: host)]
        config.serverTLSSSLMode = serverMode
        config.serverTLSCAFile = certificates.caFile
        config.clientTLSSSLMode = clientMode
        config.clientTLSCertFile = certificates.certFile("server")
        config.clientTLSKeyFile = certificates.keyFile("server")
        config.clientTLSCAFile = certificates.caFile
        config.adminUsers = ["postgres"]
    }

    func clientConninfo(_ shoal: ShoalInstance, sslmode: String, host: String = "localhost", extra: String = "") -> String {
        "host=\(host) port=\(shoal.port) user=postgres dbname=postgres password=\(TestPostgres.password) connect_timeout=10 "
            + "sslmode=\(sslmode) sslrootcert=\(certificates.caFile) \(extra)"
    }

    @Test func verifyFullOnBothSidesToATLSOnlyServerWithChannelBinding() async throws {
        let shoal = try await ShoalInstance { self.configureTLS(&$0, serverMode: "verify-full", clientMode: "require") }
        defer { Task { await shoal.stop() } }
        // libpq verifies Shoal's certificate for `localhost`; Shoal verifies PostgreSQL's the same way.
        let client = try PQConnection(clientConninfo(shoal, sslmode: "verify-full"))
        #expect(try client.scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()") == "t",
                "the server side of the link is TLS")
        #expect(try client.scalar("select version from pg_stat_ssl where pid = pg_backend_pid()") == "TLSv1.3")
        // psql too, by name and by IP (the certificate names both).
        let psql = try ProcessRunner.run("psql", ["-X", "-At", clientConninfo(shoal, sslmode: "verify-full", host: "127.0.0.1"), "-c", "select 'psql ok'"])
        #expect(psql.stdout.contains("psql ok"), "\(psql.stderr)")
        // SCRAM-SHA-256-PLUS towards the server, since PostgreSQL offers it over TLS.
        #expect(shoal.log.contains("SCRAM-SHA-256-PLUS"), "\(shoal.log.suffix(600))")
        // Both sides show TLS in the console.
        let console = try PQConnection(clientConninfo(shoal, sslmode: "verify-full").replacingOccurrences(of: "dbname=postgres", with: "dbname=pgbouncer"))
        let clients = try console.query("SHOW CLIENTS")
        #expect(clients.contains { $0[2] == "postgres" && $0[17] == "TLSv1.3" }, "\(clients)")
        #expect(try console.query("SHOW SERVERS").allSatisfy { $0[17] == "TLSv1.3" })
        #expect(shoal.log.contains("tls=TLSv1.3"))
    }

    /// issue 15: auth_query goes through TLS as server_tls_sslmode says: against a TLS-only server (hostssl) a
    /// user missing from the auth file is looked up and served; with server TLS off, the lookup is refused by the
    /// server (it never went out in clear to succeed).
    @Test func authQueryRunsOverTLSToATLSOnlyServer() async throws {
        try TLSPostgres.shared.psql("drop role if exists optics; create role optics login password 'lenses'")
        let secure = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "verify-full")
            $0.authUser = "postgres"
        }
        defer { Task { await secure.stop() } }
        let base = "host=127.0.0.1 port=\(secure.port) dbname=postgres connect_timeout=10"
        let optics = try PQConnection("\(base) user=optics password=lenses")
        #expect(try optics.scalar("select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()") == "optics true")
        #expect(try TLSPostgres.shared.psql("select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) where a.application_name = 'shoal auth_query' and s.ssl") != "0\n",
                "the lookup connection is TLS")

        let plain = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "disable")
            $0.authUser = "postgres"
        }
        defer { Task { await plain.stop() } }
        let refused = refusal("host=127.0.0.1 port=\(plain.port) dbname=postgres user=optics password=lenses connect_timeout=10")
        #expect(!refused.isEmpty && !refused.contains("optics true"), "\(refused)")
        #expect(plain.log.contains("auth_query"), "\(plain.log.suffix(800))")
    }

    @Test func healthChecksSpeakTLSAndVerifyTheHost() async throws {
        // Two names for the TLS-only server; the certificate covers localhost, not 127.0.0.2. Checks that did
        // not speak TLS would find both down (hostssl only); checks that did not verify would find both up.
        let shoal = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "verify-full")
            var entry = self.tlsDatabase(host: "localhost")
            entry.hosts = ["localhost", "127.0.0.2"]
            entry.targetSessionAttrs = .readWrite
            $0.databases = ["postgres": entry]
            $0.healthCheckPeriod = 1
            $0.healthCheckFailures = 1
            $0.healthCheckUser = "postgres"
        }
        defer { Task { await shoal.stop() } }
        try waitUntil("both hosts are judged") {
            let rows = try shoal.console("SHOW HOSTS").stdout
            return rows.contains("localhost|\(TLSPostgres.shared.port)|primary|up") && rows.contains("127.0.0.2|\(TLSPostgres.shared.port)|unknown|down")
        }
        let client = try PQConnection(shoal.conninfo)
        #expect(try client.scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()") == "t")
    }

    @Test func aCertificateForAnotherHostFailsVerifyFullButPassesRequire() async throws {
        // 127.0.0.2 is the same server, but its certificate names localhost and 127.0.0.1 only.
        // As in PgBouncer, a server that cannot be reached (here: cannot be verified) keeps clients waiting for a
        // retry, bounded by client_login_timeout for a pool's first login.
        let strict = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "verify-full", host: "127.0.0.2")
            $0.clientLoginTimeout = 3
        }
        let refused = refusal(strict.conninfo)
        #expect(refused.contains("client_login_timeout"), "\(refused)")
        // In words PgBouncer's users know, and never swift-nio-ssl's description with the build's source paths.
        let failure = strict.log.split(separator: "\n").first { $0.contains("TLS handshake failed") }.map(String.init) ?? ""
        #expect(failure.contains("TLS handshake failed: name \"127.0.0.2\" not present in server certificate")
                || failure.contains("TLS handshake failed: certificate verify failed"), "\(failure)")
        #expect(!strict.log.contains(".swift") && !strict.log.contains(".cc:") && !strict.log.contains("checkouts"), "\(failure)")
        await strict.stop()
        // A chain that does not reach server_tls_ca_file (here: a leaf certificate given as the CA).
        let untrusted = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "verify-ca")
            $0.serverTLSCAFile = self.certificates.certFile("wrong")
            $0.clientLoginTimeout = 2
        }
        _ = refusal(untrusted.conninfo)
        #expect(untrusted.log.contains("server login failed: TLS handshake failed: certificate verify failed"), "\(untrusted.log.suffix(500))")
        #expect(!untrusted.log.contains(".cc:"))
        await untrusted.stop()

        let lenient = try await ShoalInstance { self.configureTLS(&$0, serverMode: "require", host: "127.0.0.2") }
        defer { Task { await lenient.stop() } }
        let client = try PQConnection(lenient.conninfo)
        #expect(try client.scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()") == "t")

        // A TLS-only server and sslmode disable: PostgreSQL's own refusal reaches the client.
        let plain = try await ShoalInstance { self.configureTLS(&$0, serverMode: "disable") }
        defer { Task { await plain.stop() } }
        #expect(refusal(plain.conninfo).contains("no encryption"))
    }

    @Test func clientRequireRefusesPlaintextAndVerifyCANeedsAClientCertificate() async throws {
        let shoal = try await ShoalInstance { self.configureTLS(&$0, serverMode: "require", clientMode: "require") }
        let plaintext = refusal(clientConninfo(shoal, sslmode: "disable"))
        #expect(plaintext.contains("SSL required"), "\(plaintext)")
        // The Unix socket is exempt, as in PgBouncer.
        let unix = try PQConnection("host=\(shoal.directory) port=\(shoal.port) user=postgres dbname=postgres password=\(TestPostgres.password)")
        #expect(try unix.scalar("select 1") == "1")
        await shoal.stop()

        let mutual = try await ShoalInstance { self.configureTLS(&$0, serverMode: "require", clientMode: "verify-ca") }
        defer { Task { await mutual.stop() } }
        let withCertificate = try PQConnection(clientConninfo(mutual, sslmode: "verify-full",
                                                              extra: "sslcert=\(certificates.certFile("client")) sslkey=\(certificates.keyFile("client"))"))
        #expect(try withCertificate.scalar("select 'mutual'") == "mutual")
        #expect(!refusal(clientConninfo(mutual, sslmode: "verify-full")).isEmpty, "no client certificate, no login")
    }

    /// auth_type = cert, and a `cert` rule under auth_type = hba: the login's user name must be the verified
    /// client certificate's common name (CN=postgres here); no password is asked.
    @Test func certAuthenticationTakesTheUserFromTheClientCertificate() async throws {
        let withCertificate = "sslcert=\(certificates.certFile("client")) sslkey=\(certificates.keyFile("client"))"
        let cert = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "require", clientMode: "verify-ca")
            $0.authType = .cert
        }
        let noPassword = { (shoal: ShoalInstance, user: String, extra: String) in
            "host=localhost port=\(shoal.port) user=\(user) dbname=postgres connect_timeout=10 sslmode=verify-full sslrootcert=\(self.certificates.caFile) \(extra)"
        }
        #expect(try PQConnection(noPassword(cert, "postgres", withCertificate)).scalar("select current_user") == "postgres")
        #expect(refusal(noPassword(cert, "alice", withCertificate)).contains("certificate authentication failed"))
        #expect(!refusal(noPassword(cert, "postgres", "")).isEmpty, "no client certificate, no login")
        await cert.stop()

        let rules = "\(NSTemporaryDirectory())/shoal-cert-hba-\(getpid()).conf"
        try "hostssl all all 127.0.0.1/32 cert\nhost all all 127.0.0.1/32 scram-sha-256\n".write(toFile: rules, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: rules) }
        let hba = try await ShoalInstance {
            self.configureTLS(&$0, serverMode: "require", clientMode: "verify-ca")
            $0.authType = .hba
            $0.authHbaFile = rules
            $0.hbaRules = try? HBARules.load(path: rules)
        }
        defer { Task { await hba.stop() } }
        #expect(try PQConnection(noPassword(hba, "postgres", withCertificate)).scalar("select 'by certificate'") == "by certificate")
        #expect(refusal(noPassword(hba, "alice", withCertificate)).contains("certificate authentication failed"))
    }

    @Test func reloadSwapsCertificatesWithoutDroppingClients() async throws {
        let shoal = try await ShoalInstance { self.configureTLS(&$0, serverMode: "require", clientMode: "require") }
        defer { Task { await shoal.stop() } }
        let connected = try PQConnection(clientConninfo(shoal, sslmode: "verify-full"))
        #expect(try connected.scalar("select 1") == "1")
        let console = try PQConnection(clientConninfo(shoal, sslmode: "require").replacingOccurrences(of: "dbname=postgres", with: "dbname=pgbouncer"))
        // A certificate for another name: new verify-full clients now refuse Shoal; the connected one carries on.
        try console.query("SET client_tls_cert_file = '\(certificates.certFile("wrong"))'")
        try console.query("SET client_tls_key_file = '\(certificates.keyFile("wrong"))'")
        #expect(!refusal(clientConninfo(shoal, sslmode: "verify-full")).isEmpty)
        #expect(try PQConnection(clientConninfo(shoal, sslmode: "require")).scalar("select 'new cert'") == "new cert")
        #expect(try connected.scalar("select 'still here'") == "still here")
        // A certificate file that does not exist: the running one stays, and the console says so.
        let result = try ProcessRunner.run("psql", ["-X", "-At", clientConninfo(shoal, sslmode: "require").replacingOccurrences(of: "dbname=postgres", with: "dbname=pgbouncer"),
                                                    "-c", "SET client_tls_cert_file = '/nonexistent.crt'"])
        #expect(result.stderr.contains("TLS settings could not be applied, still using old configuration"), "\(result.stderr)")
        #expect(try PQConnection(clientConninfo(shoal, sslmode: "require")).scalar("select 'old cert kept'") == "old cert kept")
    }
}

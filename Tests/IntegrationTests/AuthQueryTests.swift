import Foundation
import Testing

@Suite(.serialized) struct AuthQueryTests {
    /// A department user that is in no auth file: Shoal reads its SCRAM verifier with auth_query (as auth_user),
    /// checks the client against it, and logs in to PostgreSQL with the client's keys (pass-through).
    @Test func usersMissingFromTheAuthFileAreLookedUpWithAuthQuery() async throws {
        try TestPostgres.shared.psql("drop role if exists physics; create role physics login password 'quarks'")
        let shoal = try await ShoalInstance { $0.authUser = "postgres" }
        defer { Task { await shoal.stop() } }
        let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres"
        let physics = try PQConnection("\(base) user=physics password=quarks")
        #expect(try physics.scalar("select current_user") == "physics")
        // A second login reuses the pool's server and its pass-through keys.
        let again = try PQConnection("\(base) user=physics password=quarks")
        #expect(try again.scalar("select 2") == "2")
        #expect(refusal("\(base) user=physics password=wrong").contains("password authentication failed for user"))
        // An auth_query miss fails as a wrong password does (mock SCRAM): the name's existence is not told.
        #expect(refusal("\(base) user=nosuchrole password=x").contains("password authentication failed for user \"nosuchrole\""))
        #expect(shoal.log.contains("no such user: nosuchrole"))
    }

    /// The pool logs in to PostgreSQL with the keys of its users' SCRAM logins (pass-through). After a password
    /// change, the first login with the new password brings new keys and the next server login uses them; a
    /// login with the same keys as before leaves them alone.
    @Test func passThroughKeysFollowAPasswordChange() async throws {
        try TestPostgres.shared.psql("drop role if exists rotor; create role rotor login password 'one'")
        let shoal = try await ShoalInstance {
            $0.authUser = "postgres"
            $0.adminUsers = ["postgres"]
        }
        defer { Task { await shoal.stop() } }
        let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres user=rotor"
        #expect(try PQConnection("\(base) password=one").scalar("select current_user") == "rotor")
        #expect(try PQConnection("\(base) password=one").scalar("select 2") == "2")
        try TestPostgres.shared.psql("alter role rotor password 'two'")
        // Old servers go: the next client needs a server login, which must use the new keys.
        try PQConnection(shoal.consoleConninfo()).query("RECONNECT postgres")
        #expect(try PQConnection("\(base) password=two").scalar("select current_user") == "rotor")
        #expect(refusal("\(base) password=one").contains("password authentication failed for user \"rotor\""))
    }

    /// issue 15: a burst of logins with random user names costs at most `AuthLookups.connectionsPerTarget`
    /// backends, kept open between lookups — not one backend and one login per startup packet.
    @Test func aBurstOfUnknownUsersStaysWithinTheAuthPool() async throws {
        let shoal = try await ShoalInstance { $0.authUser = "postgres" }
        defer { Task { await shoal.stop() } }
        let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres"
        let count = "select count(*) from pg_stat_activity where application_name = 'shoal auth_query'"
        let attempts = (0..<40).map { n in background { refusal("\(base) user=intruder_\(n)_\(UInt32.random(in: 0...UInt32.max)) password=x") } }
        var most = 0
        while attempts.contains(where: { !$0.isDone }) {
            most = max(most, Int(try TestPostgres.shared.psql(count).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0)
            usleep(10_000)
        }
        for attempt in attempts { #expect(try await attempt.value().contains("password authentication failed for user")) }
        #expect(most <= 2, "auth_query backends at once: \(most)")
        #expect(Int(try TestPostgres.shared.psql(count).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 >= 1, "kept open for the next lookup")
    }

    /// auth_type = trust skips the password, not the user check: a name in neither the auth file nor the
    /// database (auth_query) is refused, as PgBouncer refuses it, instead of getting a pool of its own.
    @Test func trustStillAsksAuthQueryWhetherTheUserExists() async throws {
        let shoal = try await ShoalInstance { $0.authUser = "postgres"; $0.authType = .trust }
        defer { Task { await shoal.stop() } }
        let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres"
        #expect(refusal("\(base) user=nosuchrole").contains("no such user"))
        #expect(try PQConnection("\(base) user=postgres").scalar("select current_user") == "postgres")
    }

    /// auth_dbname names a [databases] entry, as in PgBouncer: the lookup runs on that entry's host and database.
    /// A name that is no entry is a configuration error, said in the log, and the client gets PgBouncer's
    /// `bouncer config error`.
    @Test func authDbnameNamesADatabasesEntry() async throws {
        try TestPostgres.shared.psql("drop role if exists chemistry; create role chemistry login password 'atoms'")
        let shoal = try await ShoalInstance {
            $0.authUser = "postgres"
            $0.addEntry("authsource")
            $0.authDbname = "authsource"
        }
        defer { Task { await shoal.stop() } }
        let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres"
        #expect(try PQConnection("\(base) user=chemistry password=atoms").scalar("select current_user") == "chemistry")

        let misconfigured = try await ShoalInstance {
            $0.authUser = "postgres"
            $0.databases["*"] = nil
            $0.authDbname = "nosuchentry"
        }
        defer { Task { await misconfigured.stop() } }
        #expect(refusal("host=127.0.0.1 port=\(misconfigured.port) dbname=postgres user=chemistry password=atoms").contains("bouncer config error"))
        #expect(misconfigured.log.contains("authentication database \"nosuchentry\" is not configured"), "\(misconfigured.log)")
    }

    /// issue 16: a stats user that exists only in the database (not in the auth file) logs in to the console
    /// through auth_query on auth_dbname's entry, as in PgBouncer.
    @Test func consoleUsersAreLookedUpThroughAuthDbname() async throws {
        try TestPostgres.shared.psql("drop role if exists watcher; create role watcher login password 'eyes'")
        let shoal = try await ShoalInstance {
            $0.authUser = "postgres"
            $0.authDbname = "postgres"
            $0.statsUsers = ["watcher"]
        }
        defer { Task { await shoal.stop() } }
        let console = "host=127.0.0.1 port=\(shoal.port) dbname=pgbouncer user=watcher"
        let stats = try PQConnection("\(console) password=eyes")
        #expect(try stats.query("SHOW VERSION").first?.first??.hasPrefix("PgBouncer") == true)
        #expect(throws: PQError.self) { try stats.query("RELOAD") } // read-only: a stats user, not an admin
        #expect(refusal("\(console) password=wrong").contains("password authentication failed for user \"watcher\""))
    }

    /// issue 15: auth_query_cache_ttl and auth_query_negative_cache_ttl keep answers for a while, so repeated
    /// logins of one user (or one unknown name) cost one lookup; off by default, every login asks, as PgBouncer.
    @Test func authQueryAnswersAreCachedOnlyWhenAsked() async throws {
        try TestPostgres.shared.psql("""
            drop role if exists cached_user; create role cached_user login password 'kept';
            drop table if exists auth_lookups; create table auth_lookups (name text);
            """)
        // A data-modifying WITH always runs: one row per lookup, found or not.
        let query = "WITH logged AS (INSERT INTO auth_lookups VALUES ($1) RETURNING 1) "
            + "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin"
        func lookups(_ name: String) throws -> String {
            try TestPostgres.shared.psql("select count(*) from auth_lookups where name = '\(name)'").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        for cached in [true, false] {
            try TestPostgres.shared.psql("truncate auth_lookups")
            let shoal = try await ShoalInstance {
                $0.authUser = "postgres"
                $0.authQuery = query
                if cached {
                    $0.authQueryCacheTTL = 60
                    $0.authQueryNegativeCacheTTL = 60
                }
            }
            let base = "host=127.0.0.1 port=\(shoal.port) dbname=postgres"
            for _ in 0..<3 {
                #expect(try PQConnection("\(base) user=cached_user password=kept").scalar("select current_user") == "cached_user")
                #expect(refusal("\(base) user=ghost password=x").contains("password authentication failed"))
            }
            // A wrong password for a cached user is still refused: the cache holds the secret, not a verdict.
            #expect(refusal("\(base) user=cached_user password=wrong").contains("password authentication failed"))
            #expect(try lookups("cached_user") == (cached ? "1" : "4"))
            #expect(try lookups("ghost") == (cached ? "1" : "3"))
            await shoal.stop()
        }
    }
}

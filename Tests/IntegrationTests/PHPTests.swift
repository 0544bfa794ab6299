import Foundation
import Testing

/// PHP's pgsql driver (libpq underneath) through Shoal, connecting exactly as Moodle does.
@Suite(.serialized) struct PHPTests {
    @Test func moodleRequestPatternManyTimesInARow() async throws {
        let shoal = try await ShoalInstance { $0.defaultPoolSize = 2 }
        defer { Task { await shoal.stop() } }
        try TestPostgres.shared.psql("""
            drop table if exists mdl_config, mdl_logstore;
            create table mdl_config (id bigserial primary key, name text unique, value text);
            insert into mdl_config (name, value) values ('version', '2023100900'), ('lastround_0', '0'), ('lastround_1', '0'), ('lastround_2', '0');
            create table mdl_logstore (id bigserial primary key, round int, persistent bool);
            """)
        // Three PHP workers at once, as an FPM pool would run them.
        let results = try await shoal.runPHPWorkers("moodle_pattern.php", workers: 3, environment: ["ROUNDS": "200"])
        for result in results {
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "OK 200\n")
        }
        #expect(try TestPostgres.shared.psql("select count(*) from mdl_logstore") == "600")
        #expect(try TestPostgres.shared.psql("select count(*) from mdl_logstore where persistent") == "300")
    }
}

import LoadHarness
import Testing

@Suite struct WorkloadTests {
    @Test func scriptFilesSplitOnSemicolonsAndSkipComments() throws {
        let text = """
            -- a comment
            SELECT 1;
            SELECT *
              FROM mdl_user
             WHERE id = 5;

            UPDATE mdl_config SET value = 'x' WHERE name = 'y'
            """
        let workload = try Workload.script(text: text, path: "s.sql", connectPerRequest: false)
        #expect(workload.statements.map(\.sql) == ["SELECT 1", "SELECT *\n  FROM mdl_user\n WHERE id = 5", "UPDATE mdl_config SET value = 'x' WHERE name = 'y'"])
        #expect(throws: Workload.ScriptError.self) { try Workload.script(text: "-- nothing\n\n", path: "e.sql", connectPerRequest: false) }
    }

    @Test func phpRequestIsAFewSelectsThenOneShortTransaction() {
        let workload = Workload.phpRequest(users: 100, courses: 10, persistent: false)
        #expect(workload.connectPerRequest)
        let sql = workload.statements.map(\.sql)
        #expect(sql.firstIndex(of: "BEGIN")! < sql.firstIndex(of: "COMMIT")!)
        #expect(sql.filter { $0.hasPrefix("SELECT") }.count >= 3)
        var random = RandomSource(seed: 42)
        for statement in workload.statements {
            for value in statement.parameters?(&random) ?? [] { #expect(Int(value) != nil || value == "version") }
        }
    }

    @Test func randomValuesStayInRange() {
        var random = RandomSource(seed: 7)
        let values = (0..<10_000).map { _ in random.next(in: 5...9) }
        #expect(values.allSatisfy { (5...9).contains($0) })
        #expect(Set(values) == Set(5...9))
    }
}

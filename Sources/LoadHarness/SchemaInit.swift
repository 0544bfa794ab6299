import CLibPQ

/// `--init`: a Moodle-like schema with realistic row counts, created with plain libpq.
public enum SchemaInit {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func run(conninfo: String, users: Int, courses: Int) throws {
        guard let connection = PQconnectdb(conninfo) else { throw Failure(description: "out of memory") }
        defer { PQfinish(connection) }
        guard PQstatus(connection) == CONNECTION_OK else {
            throw Failure(description: String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines())
        }
        let statements = [
            "DROP TABLE IF EXISTS mdl_user, mdl_course, mdl_config, mdl_user_enrolments, mdl_logstore_standard_log",
            "CREATE TABLE mdl_user (id bigserial PRIMARY KEY, username varchar(100) NOT NULL UNIQUE, firstname varchar(100), lastname varchar(100), email varchar(100), lastaccess bigint NOT NULL DEFAULT 0)",
            "CREATE TABLE mdl_course (id bigserial PRIMARY KEY, fullname varchar(254), shortname varchar(255))",
            "CREATE TABLE mdl_config (id bigserial PRIMARY KEY, name varchar(190) NOT NULL UNIQUE, value text)",
            "CREATE TABLE mdl_user_enrolments (id bigserial PRIMARY KEY, userid bigint NOT NULL, courseid bigint NOT NULL)",
            "CREATE INDEX mdl_userenro_use_ix ON mdl_user_enrolments (userid)",
            "CREATE TABLE mdl_logstore_standard_log (id bigserial PRIMARY KEY, userid bigint, courseid bigint, action varchar(100), timecreated bigint)",
            "INSERT INTO mdl_user (username, firstname, lastname, email) SELECT 'user' || g, 'First' || g, 'Last' || g, 'user' || g || '@example.edu' FROM generate_series(1, \(users)) g",
            "INSERT INTO mdl_course (fullname, shortname) SELECT 'Course ' || g, 'C' || g FROM generate_series(1, \(courses)) g",
            "INSERT INTO mdl_config (name, value) VALUES ('version', '2023100900'), ('release', '4.3')",
            "INSERT INTO mdl_user_enrolments (userid, courseid) SELECT 1 + (g % \(users)), 1 + (g % \(courses)) FROM generate_series(1, \(users * 5)) g",
            "ANALYZE",
        ]
        for sql in statements {
            let result = PQexec(connection, sql)
            defer { PQclear(result) }
            let status = PQresultStatus(result)
            guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else {
                throw Failure(description: "\(sql.prefix(60))…: \(String(cString: PQresultErrorMessage(result)).trimmingTrailingNewlines())")
            }
        }
    }

    /// Connects once, blocking, to tell an unreachable target or a wrong password before the run starts.
    public static func preflight(conninfo: String) -> String? {
        guard let connection = PQconnectdb(conninfo) else { return "out of memory" }
        defer { PQfinish(connection) }
        return PQstatus(connection) == CONNECTION_OK ? nil : String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines()
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text
    }
}

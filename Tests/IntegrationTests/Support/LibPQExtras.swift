import CLibPQ

/// Sends a query without waiting for it (libpq's asynchronous API).
func PQsendQueryShim(_ connection: PQConnection, _ sql: String) -> Bool {
    PQsendQuery(connection.handle, sql) == 1
}

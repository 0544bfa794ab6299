"""Runs admin console statements through psycopg 3, with its default (extended-protocol) cursor and with a
client-side cursor (simple protocol, what PgBouncer's own console needs), and prints what each returned as JSON."""
import json
import sys

import psycopg

conninfo, statements = sys.argv[1], sys.argv[2:]
results = {}
with psycopg.connect(conninfo, autocommit=True) as connection:
    for statement in statements:
        entry = {}
        for name, cursor in (("extended", connection.cursor()), ("simple", psycopg.ClientCursor(connection))):
            try:
                cursor.execute(statement)
                columns = [column.name for column in cursor.description] if cursor.description else []
                rows = cursor.fetchall() if cursor.description else []
                entry[name] = {"columns": columns, "rows": len(rows), "first": [str(v) for v in rows[0]] if rows else None}
            except psycopg.Error as error:
                entry[name] = {"error": str(error).strip()}
        results[statement] = entry
print(json.dumps(results))

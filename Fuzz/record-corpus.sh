#!/usr/bin/env bash
# Regenerates Fuzz/Corpus from real traffic: a throwaway PostgreSQL, a recording relay in front of it, and the
# clients Shoal serves (psql, pgbench, psycopg, asyncpg, PHP's pgsql as Moodle uses it). Seeds are kept small
# (4 KiB at most each); the hand-written seeds (configs, console commands, link-machine choices) are written too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
source "$root/scripts/lib/throwaway-postgres.sh"
work=$(mktemp -d /tmp/shoal-corpus.XXXXXX)
chmod 755 "$work"
pg_port=${PG_PORT:-55499}
relay_port=${RELAY_PORT:-55498}
cleanup() { kill "$relay" 2>/dev/null || true; pg_down "$work/pg"; rm -rf "$work"; }
trap cleanup EXIT

pg_up "$work/pg" "$pg_port"
python3 "$here/record-corpus.py" relay "$relay_port" "$pg_port" "$work/streams" &
relay=$!
wait_port "$relay_port"
export PGPASSWORD="$PG_PASSWORD" PGHOST=127.0.0.1 PGPORT="$relay_port" PGUSER=postgres PGDATABASE=postgres
conninfo="host=127.0.0.1 port=$relay_port user=postgres dbname=postgres password=$PG_PASSWORD sslmode=disable"

# psql: simple protocol, a transaction block, session state, an error, COPY in both directions.
PGSSLMODE=prefer psql -q -v ON_ERROR_STOP=0 <<'SQL' >/dev/null 2>&1
SET search_path = public;
CREATE TEMP TABLE t (id int, name text);
BEGIN;
INSERT INTO t VALUES (1, 'a');
SAVEPOINT s1;
SELECT 1/0;
ROLLBACK TO s1;
COMMIT;
COPY t FROM STDIN;
2	b
3	c
\.
COPY t TO STDOUT;
LISTEN shoal;
SELECT pg_advisory_lock(1);
DISCARD ALL;
SQL
# pgbench: its COPY-based init, then the simple, extended and prepared protocols.
pgbench -i -s 1 -q >/dev/null 2>&1
for protocol in simple extended prepared; do pgbench -S -t 3 -c 1 -M "$protocol" >/dev/null 2>&1; done
pgbench -t 2 -c 1 -M prepared >/dev/null 2>&1
# psycopg 3 (server-side parameters, a pipeline, prepared statements) and asyncpg (named prepared statements).
/usr/bin/python3 - "$conninfo" <<'PY'
import sys, asyncio, psycopg, asyncpg
with psycopg.connect(sys.argv[1], prepare_threshold=0) as conn:
    conn.execute("SELECT %s::int + %s", (1, 2)).fetchall()
    with conn.pipeline():
        conn.execute("SELECT aid FROM pgbench_accounts WHERE aid = %s", (1,))
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance WHERE aid = %s", (1,))
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '8MB'")
async def main(parts):
    conn = await asyncpg.connect(host=parts["host"], port=int(parts["port"]), user=parts["user"],
                                 password=parts["password"], database=parts["dbname"], ssl=False)
    statement = await conn.prepare("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
    await statement.fetch(1)
    async with conn.transaction():
        await conn.execute("SELECT pg_sleep(0)")
    await conn.close()
parts = dict(p.split("=", 1) for p in sys.argv[1].split())
asyncio.run(main(parts))
PY
# PHP pgsql as Moodle's pgsql driver uses it: connect per request, SET NAMES, parameterised reads and writes.
php -r '
$c = pg_connect($argv[1]);
pg_query($c, "SET NAMES '\''utf8'\''");
pg_query($c, "CREATE TEMP TABLE mdl_config (id serial primary key, name text unique, value text)");
pg_query_params($c, "INSERT INTO mdl_config (name, value) VALUES ($1, $2)", ["theme", "boost"]);
pg_query_params($c, "SELECT id, name, value FROM mdl_config WHERE name = $1", ["theme"]);
pg_query($c, "BEGIN ISOLATION LEVEL READ COMMITTED");
pg_query_params($c, "UPDATE mdl_config SET value = $1 WHERE name = $2", ["classic", "theme"]);
pg_query($c, "COMMIT");
pg_prepare($c, "cfg", "SELECT value FROM mdl_config WHERE name = $1");
pg_execute($c, "cfg", ["theme"]);
pg_close($c);
' "$conninfo"
sleep 0.5
kill "$relay"; wait "$relay" 2>/dev/null || true
rm -rf "$here/Corpus/fuzz-startup-packet" "$here/Corpus/fuzz-frame-scanner" "$here/Corpus/fuzz-scram" \
    "$here/Corpus/fuzz-session-state" "$here/Corpus/fuzz-link-raw"
python3 "$here/record-corpus.py" seeds "$work/streams" "$here/Corpus"

# Hand-written seeds: the repository's own configs, console commands, and link-machine choice strings.
mkdir -p "$here/Corpus/fuzz-config" "$here/Corpus/fuzz-admin-command" "$here/Corpus/fuzz-link-machine"
for file in $(cd "$root" && git ls-files '*.ini' '*userlist*.txt' ':!Fuzz'); do
    cp "$root/$file" "$here/Corpus/fuzz-config/$(echo "$file" | tr / _)"
done
n=0
while IFS= read -r command; do
    n=$((n + 1)); printf '%s' "$command" > "$here/Corpus/fuzz-admin-command/command-$n"
done <<'CMDS'
SHOW POOLS;
SHOW CLIENTS
show stats_totals
SHOW CONFIG;
SET default_pool_size = 30
SET server_reset_query = 'DISCARD ALL'
PAUSE moodle
RESUME
KILL_CLIENT 0x7f00aa
RECONNECT moodle
WAIT_CLOSE
SHUTDOWN WAIT_FOR_CLIENTS
ENABLE "physics"
SHOW HOSTS
CMDS
python3 - "$here/Corpus/fuzz-link-machine" <<'PY'
import os, random, sys
random.seed(7)
for n in range(8):
    with open(os.path.join(sys.argv[1], "choices-%d" % n), "wb") as f:
        f.write(bytes(random.randrange(256) for _ in range(64 << (n % 4))))
PY
echo "corpus: $(find "$here/Corpus" -type f | wc -l) seeds, $(du -sh "$here/Corpus" | cut -f1)"

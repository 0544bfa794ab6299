#!/usr/bin/env bash
# Shoal's main job on an embedded default: a throwaway PostgreSQL on loopback, Shoal in front of it with
# conf/pgbouncer.ini, a short PHP-pattern load through it with shoal-load (and the same load direct, for
# comparison), a pgbench -S run, then clean up.
# SHOAL_BUILD=release for a release build (12-15 minutes the first time on 2 cores; debug takes about 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/lib/throwaway-postgres.sh

configuration=${SHOAL_BUILD:-debug}
swift build -c "$configuration" --product shoal
swift build -c "$configuration" --product shoal-load
bin_path="$(swift build -c "$configuration" --show-bin-path)"
shoal_bin="$bin_path/shoal"

dir=$(mktemp -d /tmp/shoal-demo.XXXXXX)
pgport=$((20000 + RANDOM % 10000)); shoalport=$((pgport + 1))
cleanup() {
    [ -n "${shoal_pid:-}" ] && kill "$shoal_pid" 2>/dev/null && wait "$shoal_pid" 2>/dev/null || true
    pg_down "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT

echo "== starting PostgreSQL 15 on 127.0.0.1:$pgport"
pg_up "$dir" "$pgport"
sed -e "s|@PGPORT@|$pgport|g; s|@SHOALPORT@|$shoalport|g; s|@DIR@|$dir|g" conf/pgbouncer.ini > "$dir/pgbouncer.ini"
sed -e "s|@PASSWORD@|$PG_PASSWORD|g" conf/userlist.txt > "$dir/userlist.txt"

echo "== starting Shoal on 127.0.0.1:$shoalport ($configuration build)"
"$shoal_bin" -q "$dir/pgbouncer.ini" &
shoal_pid=$!
wait_port "$shoalport"

export PGPASSWORD=$PG_PASSWORD
shoal_target="shoal=host=127.0.0.1 port=$shoalport dbname=postgres user=postgres password=$PG_PASSWORD"
direct_target="direct=host=127.0.0.1 port=$pgport dbname=postgres user=postgres password=$PG_PASSWORD"

echo "== shoal-load php-request: 200 PHP workers, each request connects, runs 4 SELECTs and a short"
echo "   transaction (INSERT + UPDATE), disconnects; Shoal and direct PostgreSQL interleaved, 2 rounds"
"$bin_path/shoal-load" --init --init-users 20000 --workload php-request --users 200 --duration 20 --rounds 2 \
    --target "$shoal_target" --target "$direct_target" --baseline direct

echo "== shoal-load php-persistent (pg_pconnect): the same requests over persistent connections"
"$bin_path/shoal-load" --init-users 20000 --workload php-persistent --users 200 --duration 10 --rounds 1 \
    --target "$shoal_target" --target "$direct_target" --baseline direct 2>/dev/null

report() { grep -E "^(number of failed|latency average|tps)" | sed 's/^/    /'; }
pgbench -h 127.0.0.1 -U postgres -p "$shoalport" -i -s 5 -q postgres >/dev/null 2>&1
for target in "Shoal:$shoalport" "direct PostgreSQL:$pgport"; do
    name=${target%%:*}; port=${target##*:}
    echo "== $name: pgbench -S, 50 clients, 10 s"
    pgbench -h 127.0.0.1 -U postgres -p "$port" -S -c 50 -j 2 -T 10 postgres 2>&1 | report
done
echo "== server connections Shoal holds to PostgreSQL now:"
psql -X -At -h 127.0.0.1 -p "$pgport" -U postgres -c "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()" postgres

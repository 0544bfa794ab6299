#!/usr/bin/env bash
# Soak: the PHP request pattern at a steady rate through Shoal (release build) for a long time, with a RELOAD
# every minute, a RECONNECT every two and a PostgreSQL restart (fast stop, start) every five. Every 10 s it
# samples Shoal's RSS, open file descriptors, pool counts (SHOW POOLS) and the load's p99 request latency and
# errors of that interval (shoal-load runs in 10 s slices, open loop at RATE requests/s), then writes an SVG
# plot and checks that RSS, descriptors and servers do not trend upward over the second half of the run.
#
#   Benchmarks/soak.sh [MINUTES, default 60] [RATE, default 200]      (24 h: Benchmarks/soak.sh 1440)
#   Output: soak.csv and soak.svg in SOAK_OUT (default Benchmarks/soak-<date>); exit 1 if a trend is found.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/throwaway-postgres.sh
source scripts/lib/bench-run.sh
minutes=${1:-60}
rate=${2:-200}
out=${SOAK_OUT:-Benchmarks/soak-$(date +%Y%m%d-%H%M)}
mkdir -p "$out"

bench_setup soak
pg_up "$dir/pg" "$pgport"
bench_start_shoal <<INI
admin_users = postgres
default_pool_size = 20
server_login_retry = 1
INI
console() { PGPASSWORD="$PG_PASSWORD" psql -X -At -F '|' -h 127.0.0.1 -p "$shoalport" -U postgres -d pgbouncer -c "$1" 2>/dev/null || true; }
"$load_bin" --init --init-users 2000 --rounds 1 --duration 1 --target "shoal=$conninfo" >/dev/null 2>&1

echo "seconds,rss_kb,fds,cl_active,cl_waiting,sv_active,sv_idle,requests,errors,p99_ms,event" > "$out/soak.csv"
start=$(date +%s)
end=$((start + minutes * 60))
slice=0
while [ "$(date +%s)" -lt "$end" ]; do
    slice=$((slice + 1))
    event=""
    if [ $((slice % 30)) -eq 0 ]; then
        as_pg_user pg_ctl -D "$dir/pg/data" -m fast stop >/dev/null
        as_pg_user pg_ctl -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -o "-p $pgport -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=1100" start >/dev/null
        event="postgres-restart"
    elif [ $((slice % 12)) -eq 0 ]; then
        console "RECONNECT" >/dev/null; event="reconnect"
    elif [ $((slice % 6)) -eq 0 ]; then
        console "RELOAD" >/dev/null; event="reload"
    fi
    "$load_bin" --workload php-request --rate "$rate" --duration 10 --rounds 1 --json "$dir/slice.json" \
        --target "shoal=$conninfo" >/dev/null 2>&1 || true
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$shoal_pid/status")
    fds=$(ls "/proc/$shoal_pid/fd" | wc -l)
    pools=$(console "SHOW POOLS" | awk -F'|' '$1 == "postgres" {print $3","$4","$7","$10; exit}')
    load=$(/usr/bin/python3 - "$dir/slice.json" 2>/dev/null <<'PY' || echo "0,0,0"
import json, sys
t = json.load(open(sys.argv[1]))["targets"][0]
errors = sum(t["errors"].values()) if isinstance(t["errors"], dict) else t["errors"]
print(f"{t['requests']},{errors},{t['request']['p99_us'] / 1000:.2f}")
PY
)
    echo "$(( $(date +%s) - start )),$rss,$fds,${pools:-0,0,0,0},$load,$event" >> "$out/soak.csv"
done
POOL_SIZE=20 /usr/bin/python3 Benchmarks/soak_report.py "$out/soak.csv" "$out/soak.svg"

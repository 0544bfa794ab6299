#!/usr/bin/env bash
# Faults under load: the PHP request pattern (connect, insert a numbered row, commit, disconnect; 16 workers in
# Python/libpq, Benchmarks/faults_driver.py) through Shoal (release build) to a throwaway PostgreSQL, while one
# fault at a time is injected 3 s into a 14 s run. For each: acknowledged commits missing from the database
# afterwards (must be 0), duplicates, errors by kind, the slowest request (nothing stuck past its timeout), how
# long writes stopped, and Shoal's RSS and open file descriptors after (bounded).
#
#   Benchmarks/faults.sh [FAULT ...]     default: all of them; SHOAL_BIN=path uses that binary;
#   FAULT_SECONDS=n makes each run n s long (default 14)
#
# Faults: none, backend-kill (kill -9 of a backend serving Shoal), postmaster-kill (kill -9 of the postmaster,
# PostgreSQL started again 2 s later), backend-stop (SIGSTOP of a backend for 6 s, past query_timeout = 3),
# max-connections (PostgreSQL's connection slots all taken by others for 5 s), slow-client (a client sending
# its startup packet one byte a second), idle-clients (5,000 idle logged-in clients on top; IDLE_FAULT_CLIENTS
# sets how many), and on the network to PostgreSQL, each for 6 s: latency (200 ms each way, through
# Benchmarks/delay_relay.py: this kernel has no tc netem, so the run's clients use a database entry that reaches
# PostgreSQL through the relay), loss (iptables drops 5 % of the packets either way at random) and partition
# (iptables drops every packet either way: no reset, nothing).
# The network faults need root (iptables) and leave no rule behind (removed on exit too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/throwaway-postgres.sh
source scripts/lib/bench-run.sh
faults=("$@")
[ ${#faults[@]} -eq 0 ] && faults=(none backend-kill postmaster-kill backend-stop max-connections slow-client idle-clients latency loss partition)

bench_setup faults

pg_up "$dir/pg" "$pgport" max_connections=60
psql_pg() { PGPASSWORD="$PG_PASSWORD" psql -X -q -At -h 127.0.0.1 -p "$pgport" -U postgres -d postgres "$@"; }
psql_pg -c "CREATE TABLE ledger (id bigint NOT NULL)"

relayport=$((pgport + 2))
/usr/bin/python3 Benchmarks/delay_relay.py "$relayport" "$pgport" "$dir/delay-on" 200 &
relay_pid=$!
# Every iptables rule this script adds carries this comment, so cleanup finds them all.
rule_tag="shoal-faults-$$"
drop_rules() {
    iptables-save | grep -- "--comment $rule_tag" | sed 's/^-A/-D/' | while read -r rule; do eval "iptables $rule"; done
}
fault_cleanup() { drop_rules 2>/dev/null || true; kill "$relay_pid" 2>/dev/null || true; bench_cleanup; }
trap fault_cleanup EXIT
# Both directions of the loopback traffic to PostgreSQL pass INPUT: to its port, and from it.
drop_packets() {
    for match in "--dport $pgport" "--sport $pgport"; do
        # shellcheck disable=SC2086
        iptables -I INPUT -p tcp $match "$@" -m comment --comment "$rule_tag" -j DROP
    done
}

bench_start_shoal <<INI
[databases]
through_relay = host=127.0.0.1 port=$relayport dbname=postgres
[pgbouncer]
default_pool_size = 10
query_timeout = 3
query_wait_timeout = 10
server_login_retry = 1
server_connect_timeout = 3
client_login_timeout = 10
INI
backends() { psql_pg -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'psql'"; }

inject() {
    case "$1" in
    none) ;;
    backend-kill)
        victim=$(backends | shuf -n 1); [ -n "$victim" ] && kill -9 "$victim" ;;
    postmaster-kill)
        kill -9 "$(head -1 "$dir/pg/data/postmaster.pid")"; sleep 2
        as_pg_user pg_ctl -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -o "-p $pgport -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=60" start >/dev/null ;;
    backend-stop)
        victim=$(backends | shuf -n 1); [ -n "$victim" ] && { kill -STOP "$victim"; sleep 6; kill -CONT "$victim"; } ;;
    max-connections)
        /usr/bin/python3 - "$pgport" "$PG_PASSWORD" <<'PY'
import sys, time, psycopg
held = []
while True:
    try:
        held.append(psycopg.connect(f"host=127.0.0.1 port={sys.argv[1]} dbname=postgres user=postgres password={sys.argv[2]} application_name=psql", connect_timeout=3))
    except Exception:
        break
time.sleep(5)
PY
        ;;
    slow-client)
        /usr/bin/python3 - "$shoalport" <<'PY'
import socket, struct, sys, time
body = struct.pack(">i", 196608) + b"user\0postgres\0database\0postgres\0\0"
packet = struct.pack(">i", len(body) + 4) + body
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for byte in packet[:10]:
    s.send(bytes([byte])); time.sleep(1)
PY
        ;;
    idle-clients)
        # Held until the run's last 2 s; each logs in with SCRAM, which the client side pays for (about 1 ms of
        # PBKDF2 each here), so a large count takes a while to be all in: give it FAULT_SECONDS.
        "$load_bin" --workload idle --users "${IDLE_FAULT_CLIENTS:-5000}" --duration $((run_seconds - 5)) --rounds 1 \
            --target "shoal=$conninfo" >/dev/null 2>&1 ;;
    latency)
        touch "$dir/delay-on"; sleep 6; rm -f "$dir/delay-on" ;;
    loss)
        drop_packets -m statistic --mode random --probability 0.05; sleep 6; drop_rules ;;
    partition)
        drop_packets; sleep 6; drop_rules ;;
    esac
}

# FAULT_SECONDS: the length of each run (default 14; the fault starts 3 s in).
run_seconds=${FAULT_SECONDS:-14}
# Shoal's RSS (MB) and open descriptors, sampled every 0.5 s during a run: the peaks are reported.
sample_shoal() {
    while kill -0 "$shoal_pid" 2>/dev/null; do
        echo "$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$shoal_pid/status") $(ls "/proc/$shoal_pid/fd" | wc -l)"
        sleep 0.5
    done
}
printf '%-16s %7s %5s %5s %9s %9s %7s %6s %8s %7s  %s\n' fault acked lost dup "max-lat" "write-gap" "rss-MB" fds \
    "peak-rss" "peak-fd" errors
for fault in "${faults[@]}"; do
    psql_pg -c "TRUNCATE ledger"
    # psycopg notes on stderr why it could not roll back after a failed COMMIT; the JSON has the errors.
    target=$conninfo
    [ "$fault" = latency ] && target=${conninfo/dbname=postgres/dbname=through_relay}
    sample_shoal > "$dir/$fault.samples" &
    sampler=$!
    /usr/bin/python3 Benchmarks/faults_driver.py "$target" "$run_seconds" 16 "$dir/$fault.json" 2>> "$dir/driver.log" &
    driver=$!
    sleep 3
    inject "$fault"
    wait "$driver"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    psql_pg -c "SELECT id FROM ledger" > "$dir/$fault.rows"
    rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$shoal_pid/status")
    fds=$(ls "/proc/$shoal_pid/fd" | wc -l)
    peaks=$(awk 'BEGIN {r = 0; f = 0} {if ($1 > r) r = $1; if ($2 > f) f = $2} END {printf "%8d %7d", r, f}' "$dir/$fault.samples")
    /usr/bin/python3 - "$dir/$fault.json" "$dir/$fault.rows" "$fault" "$rss" "$fds" "$peaks" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
rows = [int(line) for line in open(sys.argv[2]) if line.strip()]
acked = set(summary["acknowledged"])
lost = len(acked - set(rows))
dup = len(rows) - len(set(rows))
times = summary["successes"]
gap = max((b - a for a, b in zip(times, times[1:])), default=0)
errors = ", ".join(f"{count}× {kind}" for kind, count in sorted(summary["errors"].items(), key=lambda kv: -kv[1])[:3]) or "-"
print(f"{sys.argv[3]:<16} {len(acked):>7} {lost:>5} {dup:>5} {summary['max_latency']:>8.2f}s {gap:>8.2f}s {sys.argv[4]:>7} {sys.argv[5]:>6} {sys.argv[6]}  {errors}")
PY
done
echo "shoal: $(git rev-parse --short HEAD) ($shoal_bin); PostgreSQL 15, max_connections 60; pool 10, query_timeout 3 s"

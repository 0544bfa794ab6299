#!/usr/bin/env bash
# End-to-end comparison on one machine, in one run: direct PostgreSQL, Shoal (release build) and PgBouncer
# (Debian's package) with equivalent settings — transaction pooling, the same pool size, scram-sha-256 —
# driven by pgbench in interleaved rounds so a noisy machine affects all alike.
# Usage: Benchmarks/e2e.sh [seconds per run, default 10] [rounds, default 3]
# TLS=1: TLS on every hop (PostgreSQL ssl=on, both poolers with client_tls_sslmode and server_tls_sslmode
# require, every client with sslmode=require), with a self-signed certificate made here.
# SHOAL_NOPIN=1 adds a second Shoal with pin_session_state = off, to measure what session-state detection costs
# (NOPIN_NO_PREPARED=1: and max_prepared_statements = 0). SHOAL_VARIANT='key = value; key = value' adds a Shoal
# with those settings on top ("shoal-variant", e.g. SHOAL_VARIANT='worker_threads = 1'). ONLY_LOAD=1 runs only the shoal-load scenario.
# IDLE_CLIENTS=0 skips the idle-memory measurement; LOAD_USERS=0 skips the shoal-load scenario.
# IDLE_WORKLOAD=idle-after-query measures idle clients that each sent one 32 KB statement first (default: idle,
# clients that only log in).
# BASELINE_BIN=path adds a Shoal built from another commit ("shoal-before") with the same config, interleaved
# with the others: a before/after comparison in one run (build it with
# `git worktree add /tmp/shoal-base REV && swift build -c release --product shoal --package-path /tmp/shoal-base`).
# SHOAL_BIN=path runs that binary as "shoal" instead of building one (compare two builds made the same way, e.g.
# both with --static-swift-stdlib). SCENARIOS='-S -C' (a substring) runs only the pgbench scenarios it matches.
# POOLER_BOUND=1: the poolers share CPU 0 (Shoal with worker_threads = 1, every thread of each pinned with
# taskset), PostgreSQL and pgbench get CPU 1, so the poolers' own cost limits throughput; compare the tps and
# check the pooler's core is the busy one (its CPU per second is printed as "pooler core use").
# NIO_FORWARDER=1 adds "nio-forwarder" (Benchmarks/Tools/NIOFloor): a bare SwiftNIO byte forwarder set up as Shoal
# sets up NIO, one PostgreSQL connection per client — what NIO alone costs per transaction, next to both poolers
# (PostgreSQL then takes up to 1,100 connections, for the 1,000-client row; the forwarder skips the idle clients).
# NIO_FORWARDER_CROSS=1 (with NIO_FORWARDER=1) adds "nio-cross": the same forwarder with each client's server on the
# other loop, so every message hops between threads — what a client linked to another loop's server pays.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/throwaway-postgres.sh
source scripts/lib/bench-run.sh
seconds=${1:-10}
rounds=${2:-3}
pool_size=${POOL_SIZE:-20}

bench_binaries

dir=$(mktemp -d /tmp/shoal-bench.XXXXXX)
chmod 755 "$dir"
# Below the kernel's ephemeral range (32768+): a port a client connection of an earlier run still holds
# (TIME_WAIT after thousands of connects) cannot be listened on, which made back-to-back runs fail to start.
pgport=$((20000 + RANDOM % 12000)); shoalport=$((pgport + 1)); bouncerport=$((pgport + 2)); nopinport=$((pgport + 3))
baseport=$((pgport + 4))
cleanup() {
    [ -n "${shoal_pid:-}" ] && kill -QUIT "$shoal_pid" 2>/dev/null || true
    [ -n "${base_pid:-}" ] && kill -QUIT "$base_pid" 2>/dev/null || true
    [ -n "${forwarder_pid:-}" ] && kill "$forwarder_pid" 2>/dev/null || true
    [ -n "${cross_pid:-}" ] && kill "$cross_pid" 2>/dev/null || true
    for pid in ${variant_pids[@]:-}; do kill -QUIT "$pid" 2>/dev/null || true; done
    # PgBouncer 1.18 ignores SIGQUIT; SIGINT waits for servers to be released, then exits.
    [ -n "${bouncer_pid:-}" ] && kill -INT "$bouncer_pid" 2>/dev/null || true
    sleep 1
    pkill -KILL -f "pgbouncer -q $dir/pgbouncer/pgbouncer.ini" 2>/dev/null || true
    pg_down "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT

tls_settings=()
pooler_tls=""
if [ "${TLS:-0}" = 1 ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/server.key" -out "$dir/server.crt" >/dev/null 2>&1
    chmod 600 "$dir/server.key"; chown postgres "$dir/server.key" "$dir/server.crt" 2>/dev/null || true
    tls_settings=("ssl=on" "ssl_cert_file=$dir/server.crt" "ssl_key_file=$dir/server.key")
    pooler_tls="client_tls_sslmode = require
client_tls_cert_file = $dir/server.crt
client_tls_key_file = $dir/server.key
server_tls_sslmode = require"
    export PGSSLMODE=require
fi
max_connections=300
[ "${NIO_FORWARDER:-0}" = 1 ] && max_connections=1100
pg_up "$dir" "$pgport" "max_connections=$max_connections" "${tls_settings[@]}"
ulimit -n "$(ulimit -Hn)"
# Both poolers get the same userlist: the SCRAM verifier PostgreSQL stores, as a real deployment would.
verifier=$(bench_stored_verifier)
printf '"postgres" "%s"\n' "$verifier" > "$dir/userlist.txt"
for who in shoal pgbouncer; do
    port=$shoalport; [ "$who" = pgbouncer ] && port=$bouncerport
    mkdir -p "$dir/$who"
    cat > "$dir/$who/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir/$who
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 12000
log_connections = 0
log_disconnections = 0
logfile = $dir/$who/log
$pooler_tls
INI
done
chown -R postgres "$dir" 2>/dev/null || true

if [ "${POOLER_BOUND:-0}" = 1 ]; then
    echo "worker_threads = 1" >> "$dir/shoal/pgbouncer.ini"
fi
"$shoal_bin" -q "$dir/shoal/pgbouncer.ini" &
shoal_pid=$!
if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- bash -c "ulimit -n $(ulimit -Hn); exec pgbouncer -q $dir/pgbouncer/pgbouncer.ini" &
else
    pgbouncer -q "$dir/pgbouncer/pgbouncer.ini" &
fi
bouncer_pid=$!
# A second Shoal with extra settings, interleaved with the others: start_variant NAME PORT 'key = value; ...'.
variant_pids=()
variant_targets=()
start_variant() {
    mkdir -p "$dir/$1"
    sed -e "s/^listen_port = .*/listen_port = $2/" -e "s#^unix_socket_dir = .*#unix_socket_dir = $dir/$1#" \
        -e "s#^logfile = .*#logfile = $dir/$1/log#" "$dir/shoal/pgbouncer.ini" > "$dir/$1/pgbouncer.ini"
    tr ';' '\n' <<<"$3" | sed 's/^ *//' >> "$dir/$1/pgbouncer.ini"
    "$shoal_bin" -q "$dir/$1/pgbouncer.ini" &
    local pid=$!
    variant_pids+=("$pid")
    wait_port "$2"
    variant_targets+=(--target "$1=$2:$pid")
}
if [ "${SHOAL_NOPIN:-0}" = 1 ]; then
    nopin_settings="pin_session_state = off"
    [ "${NOPIN_NO_PREPARED:-0}" = 1 ] && nopin_settings="$nopin_settings; max_prepared_statements = 0"
    start_variant shoal-nopin "$nopinport" "$nopin_settings"
fi
[ -n "${SHOAL_VARIANT:-}" ] && start_variant shoal-variant "$((pgport + 5))" "$SHOAL_VARIANT"
base_target=()
if [ -n "${BASELINE_BIN:-}" ]; then
    mkdir -p "$dir/shoal-before"
    sed -e "s/^listen_port = .*/listen_port = $baseport/" -e "s#^unix_socket_dir = .*#unix_socket_dir = $dir/shoal-before#" \
        -e "s#^logfile = .*#logfile = $dir/shoal-before/log#" "$dir/shoal/pgbouncer.ini" > "$dir/shoal-before/pgbouncer.ini"
    "$BASELINE_BIN" -q "$dir/shoal-before/pgbouncer.ini" &
    base_pid=$!
    wait_port "$baseport"
    base_target=(--target "shoal-before=$baseport:$base_pid")
fi
forwarder_target=()
if [ "${NIO_FORWARDER:-0}" = 1 ]; then
    swift build -c release --product NIOFloor --package-path Benchmarks >/dev/null
    [ "${POOLER_BOUND:-0}" = 1 ] && forwarder_loops=1 || forwarder_loops=$(nproc)
    Benchmarks/.build/release/NIOFloor "$((pgport + 6))" "$pgport" "$forwarder_loops" &
    forwarder_pid=$!
    wait_port "$((pgport + 6))"
    forwarder_target=(--target "nio-forwarder=$((pgport + 6)):$forwarder_pid")
    if [ "${NIO_FORWARDER_CROSS:-0}" = 1 ]; then
        Benchmarks/.build/release/NIOFloor "$((pgport + 7))" "$pgport" "$forwarder_loops" cross &
        cross_pid=$!
        wait_port "$((pgport + 7))"
        forwarder_target+=(--target "nio-cross=$((pgport + 7)):$cross_pid")
    fi
fi
wait_port "$shoalport"; wait_port "$bouncerport"
sleep 0.5
# runuser forks: find the pgbouncer process itself for CPU accounting.
bouncer_pid=$(pgrep -f "pgbouncer -q $dir/pgbouncer/pgbouncer.ini" | tail -1)
if [ "${POOLER_BOUND:-0}" = 1 ]; then
    # Every thread of every pooler on CPU 0; the postmaster on CPU 1 (backends it forks later inherit it).
    for pid in "$shoal_pid" "$bouncer_pid" ${variant_pids[@]:-} ${base_pid:-} ${forwarder_pid:-} ${cross_pid:-}; do taskset -a -p -c 0 "$pid" >/dev/null; done
    taskset -a -p -c 1 "$(head -1 "$dir/data/postmaster.pid")" >/dev/null
    export PGBENCH_WRAP="taskset -c 1"
fi

PGPASSWORD=$PG_PASSWORD pgbench -i -s 10 -q -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1
"$load_bin" --init --init-users 20000 --duration 1 --rounds 1 --users 1 \
    --target "direct=host=127.0.0.1 port=$pgport dbname=postgres user=postgres password=$PG_PASSWORD" >/dev/null 2>&1
load_option=(--shoal-load "$load_bin" --load-users "${LOAD_USERS:-2000}")
[ "${LOAD_USERS:-2000}" = 0 ] && load_option=()
python3 Benchmarks/compare.py --seconds "$seconds" --rounds "$rounds" --password "$PG_PASSWORD" \
    "${load_option[@]}" \
    --target "direct=$pgport:" --target "shoal=$shoalport:$shoal_pid" --target "pgbouncer=$bouncerport:$bouncer_pid" "${variant_targets[@]}" \
    "${base_target[@]}" "${forwarder_target[@]}"
# Memory per idle client: RSS before and after 10,000 clients connect and stay idle (shoal-load --workload idle,
# or IDLE_WORKLOAD).
idle_clients=${IDLE_CLIENTS:-10000}
[ "$idle_clients" = 0 ] || for who in shoal pgbouncer ${base_pid:+shoal-before}; do
    pid=$shoal_pid; port=$shoalport
    [ "$who" = pgbouncer ] && pid=$bouncer_pid && port=$bouncerport
    [ "$who" = shoal-before ] && pid=$base_pid && port=$baseport
    before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    "$load_bin" --workload "${IDLE_WORKLOAD:-idle}" --users "$idle_clients" --ramp-up 20 --duration 40 --rounds 1 \
        --target "$who=host=127.0.0.1 port=$port dbname=postgres user=postgres password=$PG_PASSWORD" > "$dir/idle-$who.txt" 2>&1 &
    load_pid=$!
    sleep 35
    after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    connected=$(ss -Htn state established "( sport = :$port )" | wc -l)
    wait "$load_pid" || true
    echo "idle clients (${IDLE_WORKLOAD:-idle}), $who: RSS ${before} kB -> ${after} kB with $connected connections: $(( (after - before) * 1024 / (connected > 0 ? connected : 1) )) bytes per client"
done

echo
echo "TLS: ${TLS:-0}; machine: $(nproc) cores, $(uname -r); $(pgbouncer --version | head -1); $(psql --version); pool_size $pool_size; commit $(git rev-parse --short HEAD)"

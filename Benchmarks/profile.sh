#!/usr/bin/env bash
# Where Shoal's CPU goes under one pgbench scenario: a throwaway PostgreSQL, Shoal (release build) in front of
# it with e2e.sh's settings (transaction mode, pool 20, scram-sha-256 with PostgreSQL's stored verifier), then
# `perf record -g` on the Shoal process while pgbench runs. Prints the CPU per transaction and the samples split
# into kernel, NIO, Swift runtime, Shoal, crypto and libc (profile_summary.py), plus the top symbols.
#
#   Benchmarks/profile.sh [SECONDS, default 10] [pgbench options, default: -S -C -c 50 -j 2]
#   SHOAL_BIN=path profiles that binary; PERF_OUT=dir keeps perf.data there; SHOAL_INI='key = value' lines are
#   added to Shoal's configuration (e.g. SHOAL_INI='worker_threads = 1'). PERF_EVENT=event records every such
#   event instead of CPU samples and prints the count per transaction and the callers (e.g. malloc, below).
#   BENCH_POOLER=pgbouncer profiles PgBouncer (Debian's package) with the same settings instead, to compare
#   where each pooler's samples go (Shoal-only keys in SHOAL_INI would make PgBouncer refuse the file);
#   BENCH_POOLER=nio-forwarder profiles a bare NIO byte forwarder set up as Shoal sets up NIO (NIOFloor), to tell
#   NIO's share from Shoal's (under -S only: it dials PostgreSQL per client, so -S -C is not a floor).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
source scripts/lib/throwaway-postgres.sh
source scripts/lib/bench-run.sh
seconds=${1:-10}
shift || true
pgbench_args=("$@")
[ ${#pgbench_args[@]} -gt 0 ] || pgbench_args=(-S -C -c 50 -j 2)

bench_setup profile
pg_up "$dir/pg" "$pgport" "max_connections=300"
PGPASSWORD=$PG_PASSWORD pgbench -i -s 1 -q -h 127.0.0.1 -p "$pgport" -U postgres postgres >/dev/null 2>&1
# As in e2e.sh: the verifier PostgreSQL stores, not the plaintext password.
bench_secret=$(bench_stored_verifier)
bench_start_shoal <<INI
default_pool_size = 20
${SHOAL_INI:-}
INI

out=${PERF_OUT:-$dir}
mkdir -p "$out"
cpu() { awk '{print $14 + $15}' "/proc/$shoal_pid/stat"; }
PGPASSWORD=$PG_PASSWORD pgbench -n -h 127.0.0.1 -p "$shoalport" -U postgres -T 2 "${pgbench_args[@]}" postgres >/dev/null 2>&1 # warm-up
before=$(cpu)
PGPASSWORD=$PG_PASSWORD pgbench -n -h 127.0.0.1 -p "$shoalport" -U postgres -T "$seconds" "${pgbench_args[@]}" postgres > "$dir/pgbench.txt" 2>&1 &
bench=$!
if [ -n "${PERF_EVENT:-}" ]; then
    # Every event, not a sample of them: e.g. PERF_EVENT=probe_libc:malloc after
    # `perf probe -x /lib/x86_64-linux-gnu/libc.so.6 malloc` counts Shoal's allocations and where they come from.
    perf record -q -e "$PERF_EVENT" -c 1 -g -p "$shoal_pid" -o "$out/perf.data" -- sleep "$((seconds - 1))" 2>/dev/null
else
    perf record -q -F 2000 -g -p "$shoal_pid" -o "$out/perf.data" -- sleep "$((seconds - 1))" 2>/dev/null
fi
wait "$bench"
after=$(cpu)
done_tx=$(awk '/actually processed/ {print $NF}' "$dir/pgbench.txt")
tps=$(awk '/^tps/ {print $3; exit}' "$dir/pgbench.txt")
ticks=$(getconf CLK_TCK)
case "${BENCH_POOLER:-shoal}" in pgbouncer) who=PgBouncer ;; nio-forwarder) who="the NIO forwarder" ;; *) who=Shoal ;; esac
echo "pgbench ${pgbench_args[*]} through $who, ${seconds} s: $done_tx transactions, $tps tps," \
     "$(python3 -c "print(f'{($after - $before) / $ticks / $done_tx * 1e6:.1f}')") µs $who CPU per transaction (commit $(git rev-parse --short HEAD))"
if [ -n "${PERF_EVENT:-}" ]; then
    # The recording covers seconds - 1 of the run: scale the transactions to it.
    events=$(perf script -i "$out/perf.data" -F event 2>/dev/null | wc -l)
    echo "$PERF_EVENT: $events events, $(python3 -c "print(f'{$events / ($done_tx * ($seconds - 1) / $seconds):.1f}')") per transaction"
    echo "callers (the nearest frames above the event, by share of events):"
    perf report -i "$out/perf.data" --no-children --stdio -g caller,0.5,callee,function,percent --percent-limit 1 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -"${PERF_LINES:-120}" | cut -c1-200
    exit 0
fi
perf report -i "$out/perf.data" --no-children --sort sym --stdio -F overhead,sym 2>/dev/null | python3 Benchmarks/profile_summary.py

# Sourced by Benchmarks/faults.sh and Benchmarks/soak.sh (after throwaway-postgres.sh): release binaries, a
# scratch folder, ports, and a cleanup that stops Shoal and PostgreSQL.
#   bench_setup NAME     sets shoal_bin (SHOAL_BIN, or a release build), load_bin, dir, pgport, shoalport
bench_setup() {
    if [ -n "${SHOAL_BIN:-}" ]; then
        shoal_bin=$SHOAL_BIN
    else
        swift build -c release --product shoal --scratch-path .build-release >/dev/null
        shoal_bin=.build-release/release/shoal
    fi
    swift build -c release --product shoal-load --scratch-path .build-release >/dev/null
    load_bin=.build-release/release/shoal-load
    dir=$(mktemp -d "/tmp/shoal-$1.XXXXXX")
    chmod 755 "$dir"
    pgport=$((30000 + RANDOM % 10000)); shoalport=$((pgport + 1))
    trap bench_cleanup EXIT
    ulimit -n "$(ulimit -Hn)"
}

bench_cleanup() {
    [ -n "${shoal_pid:-}" ] && kill -QUIT "$shoal_pid" 2>/dev/null || true
    pg_down "$dir/pg"
    rm -rf "$dir"
}

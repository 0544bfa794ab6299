# Sourced by the benchmark scripts (after throwaway-postgres.sh).
#   bench_binaries        sets shoal_bin (SHOAL_BIN, or a release build) and load_bin
#   bench_setup NAME      bench_binaries, then a scratch folder `dir`, `pgport`, `shoalport`, and a cleanup that
#                         stops Shoal and PostgreSQL on exit
#   bench_start_shoal     starts Shoal in front of $pgport with transaction pooling, scram-sha-256 and the
#                         settings on its standard input (pgbouncer.ini lines); sets shoal_pid and conninfo. The
#                         auth file holds $bench_secret (default: the plaintext password). BENCH_POOLER=pgbouncer
#                         starts PgBouncer with the same file instead (shoal_pid is then PgBouncer's);
#                         BENCH_POOLER=nio-forwarder starts Benchmarks/Tools/NIOFloor's bare NIO byte forwarder
#                         (one PostgreSQL connection per client, no pooling: NIO's own cost)
#   bench_stored_verifier prints the SCRAM verifier PostgreSQL on $pgport stores for postgres (what a real
#                         deployment's userlist holds)
bench_binaries() {
    if [ -n "${SHOAL_BIN:-}" ]; then
        shoal_bin=$SHOAL_BIN
    else
        swift build -c release --product shoal --scratch-path .build-release >/dev/null
        shoal_bin=.build-release/release/shoal
    fi
    swift build -c release --product shoal-load --scratch-path .build-release >/dev/null
    load_bin=.build-release/release/shoal-load
}

bench_setup() {
    bench_binaries
    dir=$(mktemp -d "/tmp/shoal-$1.XXXXXX")
    chmod 755 "$dir"
    # Below the ephemeral range (32768+), where an earlier run's client ports may still be held (TIME_WAIT).
    pgport=$((20000 + RANDOM % 12000)); shoalport=$((pgport + 1))
    trap bench_cleanup EXIT
    ulimit -n "$(ulimit -Hn)"
}

bench_cleanup() {
    # PgBouncer 1.18 ignores SIGQUIT; SIGINT is its safe shutdown (the benchmark's clients are gone by now).
    local signal=QUIT
    case "${BENCH_POOLER:-shoal}" in pgbouncer) signal=INT ;; nio-forwarder) signal=TERM ;; esac
    [ -n "${shoal_pid:-}" ] && kill -"$signal" "$shoal_pid" 2>/dev/null || true
    pg_down "$dir/pg"
    rm -rf "$dir"
}

bench_start_shoal() {
    {
        cat <<INI
[databases]
postgres = host=127.0.0.1 port=$pgport dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $shoalport
unix_socket_dir = $dir
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 20000
log_connections = 0
log_disconnections = 0
INI
        cat
    } > "$dir/shoal.ini"
    printf '"postgres" "%s"\n' "${bench_secret:-$PG_PASSWORD}" > "$dir/userlist.txt"
    if [ "${BENCH_POOLER:-shoal}" = nio-forwarder ]; then
        swift build -c release --product NIOFloor --package-path Benchmarks >/dev/null
        Benchmarks/.build/release/NIOFloor "$shoalport" "$pgport" 2> "$dir/shoal.log" &
        shoal_pid=$!
        wait_port "$shoalport"
    elif [ "${BENCH_POOLER:-shoal}" = pgbouncer ]; then
        # PgBouncer with the same file, for the same measurement of the other pooler. It refuses to run as
        # root; shoal_pid is then PgBouncer's (runuser forks: find the process itself).
        chown -R postgres "$dir" 2>/dev/null || true
        if [ "$(id -u)" -eq 0 ]; then
            runuser -u postgres -- bash -c "ulimit -n $(ulimit -Hn); exec pgbouncer -q $dir/shoal.ini" > /dev/null 2> "$dir/shoal.log" &
        else
            pgbouncer -q "$dir/shoal.ini" > /dev/null 2> "$dir/shoal.log" &
        fi
        wait_port "$shoalport"
        shoal_pid=$(pgrep -f "pgbouncer -q $dir/shoal.ini" | tail -1)
    else
        "$shoal_bin" -q "$dir/shoal.ini" 2> "$dir/shoal.log" &
        shoal_pid=$!
        wait_port "$shoalport"
    fi
    conninfo="host=127.0.0.1 port=$shoalport dbname=postgres user=postgres password=$PG_PASSWORD sslmode=disable"
}

bench_stored_verifier() {
    PGPASSWORD=$PG_PASSWORD psql -X -At -h 127.0.0.1 -p "$pgport" -U postgres \
        -c "select rolpassword from pg_authid where rolname='postgres'" postgres
}

# Sourced by the demo and the benchmarks: a throwaway PostgreSQL 15 on loopback.
# initdb runs as an unprivileged user (the `postgres` account when we are root), SCRAM for TCP.
export PATH="/usr/lib/postgresql/15/bin:$PATH"
PG_PASSWORD="${PG_PASSWORD:-shoal-demo-pw}"

as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_up DIR PORT [extra postgres -c settings...]
pg_up() {
    local dir=$1 port=$2; shift 2
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    echo "$PG_PASSWORD" > "$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pwfile"
    as_pg_user initdb -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile="$dir/pwfile" -E UTF8 --locale=C >/dev/null
    local settings="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=1100"
    for extra in "$@"; do settings="$settings -c $extra"; done
    as_pg_user pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -o "$settings" start >/dev/null
}

pg_down() {
    local dir=$1
    [ -d "$dir/data" ] && as_pg_user pg_ctl -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
}

# wait_port PORT: until something listens there (10 s at most)
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

<?php
// Moodle's session-state patterns through php-pgsql, as its pgsql driver issues them in one PHP request:
// the session handler's SET, a recordset read through a WITH HOLD cursor (DECLARE with pg_query_params,
// FETCH, CLOSE as separate autocommit statements), the lock factory's advisory lock, and a temp table.
// Every row names the worker that asked for it; prints "OK <rounds>" or the first problem.
$conn = pg_connect(sprintf("host=%s port=%s dbname=postgres user=postgres password=%s options='--client_encoding=utf8'",
    getenv('SHOAL_HOST'), getenv('SHOAL_PORT'), getenv('SHOAL_PASSWORD')), PGSQL_CONNECT_FORCE_NEW);
if (!$conn) { fwrite(STDERR, "connect failed\n"); exit(1); }
$worker = (int)getenv('WORKER');
$rounds = (int)getenv('ROUNDS');
function fail($conn, $what) { fwrite(STDERR, "$what: " . pg_last_error($conn) . "\n"); exit(1); }

pg_query($conn, "SET statement_timeout = " . (30001 + $worker)) or fail($conn, "set");
for ($round = 0; $round < $rounds; $round++) {
    $result = pg_query_params($conn, 'DECLARE crs1 NO SCROLL CURSOR WITH HOLD FOR SELECT $1::int AS worker, g FROM generate_series(1, 120) g', [$worker]);
    if (!$result) fail($conn, "declare");
    $rows = 0;
    while (true) {
        $fetched = pg_query($conn, "FETCH 50 FROM crs1") or fail($conn, "fetch");
        if (pg_num_rows($fetched) == 0) break;
        while ($row = pg_fetch_assoc($fetched)) {
            if ((int)$row['worker'] !== $worker) { fwrite(STDERR, "foreign row from worker {$row['worker']}\n"); exit(1); }
            $rows++;
        }
    }
    if ($rows !== 120) { fwrite(STDERR, "fetched $rows rows\n"); exit(1); }
    pg_query($conn, "CLOSE crs1") or fail($conn, "close");

    $locked = pg_fetch_result(pg_query_params($conn, 'SELECT pg_try_advisory_lock($1::int, $2::int)', [4242, $worker]), 0, 0);
    if ($locked !== 't') { fwrite(STDERR, "lock not obtained\n"); exit(1); }
    pg_query($conn, "CREATE TEMPORARY TABLE mdl_temp_backup (worker int)") or fail($conn, "create temp");
    pg_query_params($conn, 'INSERT INTO mdl_temp_backup VALUES ($1::int)', [$worker]) or fail($conn, "insert temp");
    $seen = pg_fetch_all_columns(pg_query($conn, "SELECT worker FROM mdl_temp_backup"));
    if ($seen != [(string)$worker]) { fwrite(STDERR, "temp table holds " . json_encode($seen) . "\n"); exit(1); }
    pg_query($conn, "DROP TABLE mdl_temp_backup") or fail($conn, "drop temp");
    $unlocked = pg_fetch_result(pg_query_params($conn, 'SELECT pg_advisory_unlock($1::int, $2::int)', [4242, $worker]), 0, 0);
    if ($unlocked !== 't') { fwrite(STDERR, "unlock ran where the lock is not held\n"); exit(1); }
    $timeout = pg_fetch_result(pg_query($conn, "SHOW statement_timeout"), 0, 0);
    if ($timeout !== (30001 + $worker) . "ms") { fwrite(STDERR, "statement_timeout is $timeout\n"); exit(1); }
}
echo "OK $rounds\n";

<?php
// Replays what Moodle's pgsql driver does on every request, through Shoal.
// Connection string as Moodle builds it (lib/dml/pgsql_native_moodle_database.php), options included.
$host = getenv('SHOAL_HOST'); $port = getenv('SHOAL_PORT'); $pass = getenv('SHOAL_PASSWORD');
$rounds = (int)getenv('ROUNDS');
$worker = getenv('WORKER');
$conninfo = "host='$host' port='$port' user='postgres' password='$pass' dbname='postgres' "
          . "options='--client_encoding=utf8 --standard_conforming_strings=on'";

function check($condition, $what) {
    if (!$condition) { fwrite(STDERR, "FAILED: $what\n"); exit(1); }
}

for ($i = 1; $i <= $rounds; $i++) {
    $persistent = ($i % 2 == 0);
    $db = $persistent ? pg_pconnect($conninfo) : pg_connect($conninfo, PGSQL_CONNECT_FORCE_NEW);
    check($db !== false, "connect round $i");
    check(pg_parameter_status($db, 'client_encoding') === 'UTF8', "client_encoding round $i");
    $r = pg_query_params($db, 'SELECT id, name FROM mdl_config WHERE name = $1', array('version'));
    $row = pg_fetch_assoc($r);
    check($row && $row['name'] === 'version', "select round $i");
    check(pg_query($db, 'BEGIN') !== false, "begin $i");
    $ins = pg_query_params($db, 'INSERT INTO mdl_logstore (round, persistent) VALUES ($1, $2) RETURNING id', array($i, $persistent ? 't' : 'f'));
    check(pg_num_rows($ins) === 1, "insert $i");
    $upd = pg_query_params($db, 'UPDATE mdl_config SET value = $1 WHERE name = $2', array((string)$i, "lastround_$worker"));
    check(pg_affected_rows($upd) === 1, "update $i");
    check(pg_query($db, 'COMMIT') !== false, "commit $i");
    $check = pg_query_params($db, 'SELECT value FROM mdl_config WHERE name = $1', array("lastround_$worker"));
    check(pg_fetch_result($check, 0, 0) === (string)$i, "read back $i");
    if (!$persistent) { pg_close($db); }
}
echo "OK $rounds\n";

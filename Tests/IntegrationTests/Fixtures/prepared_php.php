<?php
// PHP's pg_prepare / pg_execute (named server-side statements) through Shoal in transaction mode.
$conn = pg_connect(sprintf("host=%s port=%s dbname=postgres user=postgres password=%s", getenv('SHOAL_HOST'), getenv('SHOAL_PORT'), getenv('SHOAL_PASSWORD')));
if (!$conn) { fwrite(STDERR, "connect failed\n"); exit(1); }
$worker = (int)getenv('WORKER');
if (!pg_prepare($conn, "double_it", 'SELECT $1::int * 2')) { fwrite(STDERR, pg_last_error($conn)); exit(1); }
if (!pg_prepare($conn, "tag_it", 'SELECT $1::text || $2::text')) { fwrite(STDERR, pg_last_error($conn)); exit(1); }
for ($i = 0; $i < 100; $i++) {
    $result = pg_execute($conn, "double_it", [$worker * 1000 + $i]);
    if (!$result) { fwrite(STDERR, pg_last_error($conn)); exit(1); }
    $value = (int)pg_fetch_result($result, 0, 0);
    if ($value !== ($worker * 1000 + $i) * 2) { fwrite(STDERR, "wrong answer $value\n"); exit(1); }
    $tag = pg_fetch_result(pg_execute($conn, "tag_it", ["w", (string)$worker]), 0, 0);
    if ($tag !== "w$worker") { fwrite(STDERR, "wrong tag $tag\n"); exit(1); }
}
echo "OK\n";

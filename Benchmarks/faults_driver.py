#!/usr/bin/env python3
"""The PHP request pattern with a ledger, for Benchmarks/faults.sh: each worker connects, inserts one numbered
row in a transaction, commits and disconnects, again and again. A row counts as acknowledged only when its
COMMIT returned. Writes a JSON summary: acknowledged ids, errors by SQLSTATE/message, success times.

    faults_driver.py CONNINFO SECONDS WORKERS OUT.json
"""
import json, sys, threading, time

import psycopg

conninfo, seconds, workers, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
next_id = [0]
acknowledged, successes, errors, latencies = [], [], {}, []
start = time.monotonic()
deadline = start + seconds


def worker():
    while time.monotonic() < deadline:
        with lock:
            next_id[0] += 1
            n = next_id[0]
        began = time.monotonic()
        try:
            with psycopg.connect(conninfo, connect_timeout=15) as conn:
                with conn.transaction():
                    conn.execute("INSERT INTO ledger (id) VALUES (%s)", (n,))
            done = time.monotonic()
            with lock:
                acknowledged.append(n)
                successes.append(done - start)
                latencies.append(done - began)
        except Exception as error:  # every failure is counted, by SQLSTATE when there is one
            key = getattr(getattr(error, "diag", None), "sqlstate", None) or type(error).__name__
            message = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            with lock:
                latencies.append(time.monotonic() - began)
                errors.setdefault(f"{key}: {message}", 0)
                errors[f"{key}: {message}"] += 1
            time.sleep(0.05)


threads = [threading.Thread(target=worker) for _ in range(workers)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with open(out, "w") as f:
    json.dump({"acknowledged": acknowledged, "successes": sorted(successes), "errors": errors,
               "max_latency": max(latencies) if latencies else 0, "attempts": next_id[0]}, f)

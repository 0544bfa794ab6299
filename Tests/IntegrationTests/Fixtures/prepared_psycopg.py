"""psycopg 3 with prepare_threshold=0 (every query a named server-side statement), several connections in
threads through Shoal's small pool; prints OK <n> when every answer matched."""
import sys
import threading

import psycopg

conninfo, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors, done = [], []


def client(number):
    try:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as connection:
            for round_number in range(rounds):
                value = connection.execute("SELECT %s::int * 2 + %s::int", (number, round_number)).fetchone()[0]
                if value != number * 2 + round_number:
                    errors.append(f"client {number}: {value}")
                name = connection.execute("SELECT %s::text || '-' || %s::text", ("c", number)).fetchone()[0]
                if name != f"c-{number}":
                    errors.append(f"client {number}: {name}")
            done.append(number)
    except Exception as error:  # noqa: BLE001 - report every failure
        errors.append(f"client {number}: {error}")


threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if errors:
    print("\n".join(errors[:5]))
    sys.exit(1)
print(f"OK {len(done)}")

"""psycopg 3 pipeline mode with server-side prepared statements (prepare_threshold=0) and errors mid-batch.
Prints a transcript of what each step returned or raised, so a run through Shoal can be compared with a run
straight against PostgreSQL: Shoal must answer exactly as the server would."""
import sys

import psycopg

conninfo = sys.argv[1]
transcript = []


def step(label, body):
    try:
        transcript.append(f"{label}: {body()}")
    except psycopg.Error as error:
        transcript.append(f"{label}: {type(error).__name__}")


with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as connection:
    for round_number in range(6):
        def failing_execution():
            with connection.pipeline():
                connection.execute("SELECT %s::int + 1", (round_number,))
                connection.execute("SELECT 1 / %s::int", (0,))
                connection.execute("SELECT %s::text || 'never'", ("x",))
        step(f"{round_number} division", failing_execution)

        step(f"{round_number} after", lambda: connection.execute("SELECT %s::int + 1", (round_number,)).fetchone()[0])
        step(f"{round_number} never", lambda: connection.execute("SELECT %s::text || 'never'", ("x",)).fetchone()[0])
        # (A Parse error mid-pipeline is left out: psycopg 3.1 then decides by timing whether the skipped
        # statements count as prepared, so even two direct runs can differ.)
print("\n".join(transcript))

"""asyncpg with its statement cache on (every query a named server-side statement), several connections at
once through Shoal's small pool; prints OK <n> when every answer matched."""
import asyncio
import sys

import asyncpg


async def client(dsn, number, rounds):
    connection = await asyncpg.connect(dsn, statement_cache_size=100)
    try:
        for round_number in range(rounds):
            value = await connection.fetchval("SELECT $1::int * 3 + $2::int", number, round_number)
            assert value == number * 3 + round_number, (number, value)
            rows = await connection.fetch("SELECT g FROM generate_series(1, $1::int) g", number % 5 + 1)
            assert len(rows) == number % 5 + 1, (number, rows)
    finally:
        await connection.close()


async def main():
    dsn, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    await asyncio.gather(*(client(dsn, n, rounds) for n in range(clients)))
    print(f"OK {clients}")


asyncio.run(main())

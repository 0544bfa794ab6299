#!/usr/bin/env python3
"""A TCP relay that adds latency on demand, for Benchmarks/faults.sh (this kernel has no tc netem).

    delay_relay.py LISTEN_PORT TARGET_PORT FLAG_FILE DELAY_MS

Forwards every connection made to 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT. While FLAG_FILE exists, each
chunk read in either direction is written DELAY_MS later (in order, so a 200 ms delay each way adds 400 ms to a
round trip, as a 200 ms one-way netem delay on both hops would); otherwise chunks pass straight through.
"""
import asyncio, os, sys, time

listen_port, target_port, flag, delay = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) / 1000


async def pump(reader, writer):
    # Chunks are queued with the time they are due, so a delay never reorders them and reading goes on meanwhile.
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            await queue.put((time.monotonic() + (delay if os.path.exists(flag) else 0), data))
    except ConnectionError:
        pass
    await queue.put((0, None))
    try:
        await sender
    except ConnectionError:
        pass


async def relay(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(relay, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


asyncio.run(main())

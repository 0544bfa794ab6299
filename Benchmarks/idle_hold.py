#!/usr/bin/env python3
"""Opens COUNT TCP connections to 127.0.0.1:PORT, sends 8 bytes on each unless MODE is `silent`, waits, and
prints how much the RSS of process PID grew per connection."""
import resource, socket, sys, time

port, count, pid, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kb():
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


before = rss_kb()
held = []
for _ in range(count):
    connection = socket.create_connection(("127.0.0.1", port))
    if mode != "silent":
        connection.send(b"\0\0\0\x08\x04\xd2\x16\x2f")  # an SSLRequest's bytes: any 8 bytes would do
    held.append(connection)
time.sleep(3)
after = rss_kb()
print(f"NIO floor, {mode}: RSS {before} kB -> {after} kB with {count} connections: {(after - before) * 1024 // count} bytes per connection")

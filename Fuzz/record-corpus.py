#!/usr/bin/env python3
"""Records real client traffic and turns it into the fuzz targets' seed corpora.

    record-corpus.py relay LISTEN_PORT PG_PORT OUTDIR   # a recording TCP relay (runs until killed)
    record-corpus.py seeds OUTDIR CORPUSDIR             # recorded connections -> Corpus/<target>/ seeds

record-corpus.sh drives both around a throwaway PostgreSQL and real clients (psql, pgbench, psycopg, asyncpg,
PHP pgsql). Each recorded connection is a list of (direction, chunk) in the order the relay saw them.
"""
import hashlib, os, pickle, random, socket, struct, sys, threading

MAX_SEED = 4096


def relay(listen_port, pg_port, outdir):
    os.makedirs(outdir, exist_ok=True)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    counter = [0]
    lock = threading.Lock()

    def serve(client):
        upstream = socket.create_connection(("127.0.0.1", pg_port))
        chunks = []
        with lock:
            counter[0] += 1
            number = counter[0]

        def pump(source, sink, direction):
            try:
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    with lock:
                        chunks.append((direction, data))
                    sink.sendall(data)
            except OSError:
                pass
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threads = [threading.Thread(target=pump, args=(client, upstream, "c")),
                   threading.Thread(target=pump, args=(upstream, client, "s"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with open(os.path.join(outdir, "conn-%04d.pickle" % number), "wb") as f:
            pickle.dump(chunks, f)

    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def messages(stream, typed=True):
    """Splits a byte stream into (type, body) frames; stops at an incomplete one."""
    out, i = [], 0
    while i + 5 <= len(stream):
        length = struct.unpack(">i", stream[i + 1:i + 5])[0]
        if length < 4 or i + 1 + length > len(stream):
            break
        out.append((stream[i:i + 1], stream[i + 5:i + 1 + length]))
        i += 1 + length
    return out


def seeds(indir, corpus):
    def write(target, data):
        data = data[:MAX_SEED]
        if not data:
            return
        folder = os.path.join(corpus, target)
        os.makedirs(folder, exist_ok=True)
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)

    for file in sorted(os.listdir(indir)):
        with open(os.path.join(indir, file), "rb") as f:
            chunks = pickle.load(f)
        client = b"".join(d for k, d in chunks if k == "c")
        server = b"".join(d for k, d in chunks if k == "s")
        # Untyped startup packets (SSLRequest, then StartupMessage) at the front of the client stream.
        i = 0
        while i + 8 <= len(client):
            length = struct.unpack(">i", client[i:i + 4])[0]
            code = struct.unpack(">i", client[i + 4:i + 8])[0]
            if length < 8 or length > 10000:
                break
            write("fuzz-startup-packet", client[i:i + length])
            i += length
            if code == 196608:
                break
        typed_client = client[i:]
        typed_server = server[1:] if server[:1] in (b"N", b"S") else server
        for stream in (typed_client, typed_server):
            write("fuzz-frame-scanner", bytes([random.randrange(256), random.randrange(256)]) + stream)
        # SCRAM: the client's SASLInitialResponse/SASLResponse, the server's SASLContinue/SASLFinal.
        client_sasl = [body for t, body in messages(typed_client) if t == b"p"]
        server_sasl = [body[4:] for t, body in messages(typed_server) if t == b"R" and struct.unpack(">i", body[:4])[0] in (11, 12)]
        if len(client_sasl) >= 2 and b"\0" in client_sasl[0]:
            first = client_sasl[0]
            data = first[first.index(b"\0") + 5:]
            write("fuzz-scram", bytes([1, min(len(data), 255)]) + data[:255] + client_sasl[1])
        if len(server_sasl) >= 2:
            write("fuzz-scram", bytes([3, min(len(server_sasl[0]), 255)]) + server_sasl[0][:255] + server_sasl[1])
        # SQL texts.
        for t, body in messages(typed_client):
            if t == b"Q":
                write("fuzz-session-state", body.rstrip(b"\0"))
            elif t == b"P":
                rest = body[body.index(b"\0") + 1:]
                write("fuzz-session-state", rest[:rest.index(b"\0")] if b"\0" in rest else rest)
        # The linked phase: the chunks after the login's first ReadyForQuery, as fuzz-link-raw events
        # (0 = client bytes, 7 = a server assigned, 4 = server bytes; each chunk at most 255 bytes).
        events = bytearray([0])
        logged_in, assigned, seen = False, False, b""
        for kind, data in chunks:
            if not logged_in:
                if kind == "s":
                    seen += data
                    logged_in = any(t == b"Z" for t, _ in messages(seen[1:] if seen[:1] in (b"N", b"S") else seen))
                continue
            for start in range(0, len(data), 255):
                piece = data[start:start + 255]
                if kind == "c":
                    events += bytes([0, len(piece)]) + piece
                else:
                    if not assigned:
                        events.append(7)
                        assigned = True
                    events += bytes([4, len(piece)]) + piece
            if len(events) > MAX_SEED:
                break
        if len(events) > 1:
            write("fuzz-link-raw", bytes(events))


if __name__ == "__main__":
    random.seed(1)
    if sys.argv[1] == "relay":
        relay(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        seeds(sys.argv[2], sys.argv[3])

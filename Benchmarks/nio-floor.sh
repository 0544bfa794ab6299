#!/usr/bin/env bash
# Memory per idle connection under SwiftNIO alone (Benchmarks/Tools/NIOFloor: Shoal's child-channel options, a handler
# that keeps nothing), to set against Shoal's figure from e2e.sh: 10,000 connections held open, once without
# sending anything (never read) and once after 8 bytes each (one read: the channel keeps its receive buffer).
#   Benchmarks/nio-floor.sh [connections, default 10000]
set -euo pipefail
cd "$(dirname "$0")"
count=${1:-10000}
swift build -c release --product NIOFloor >/dev/null
ulimit -n "$(ulimit -Hn)"
for mode in silent one-read; do
    port=$((20000 + RANDOM % 8000)) # below the ephemeral range, where held client ports live
    .build/release/NIOFloor "$port" &
    pid=$!
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    python3 idle_hold.py "$port" "$count" "$pid" "$mode"
    kill "$pid"; wait "$pid" 2>/dev/null || true
done

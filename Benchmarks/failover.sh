#!/usr/bin/env bash
# Failover timing: runs the two failover tests (primary + 2 streaming replicas, four clients writing numbered
# rows through Shoal, primary stopped, first replica promoted; health_check_period 1 s) N times and prints
# each run and the medians: time from the `pg_ctl promote` command to the first acknowledged write through
# Shoal, and from the stop command. Also counts acknowledged commits lost (must be 0) and client errors.
#   usage: bash Benchmarks/failover.sh [runs]        (after scripts/test.sh or swift build --build-tests)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/lib/postgresql/15/bin:$PATH"
runs=${1:-5}
out=$(mktemp)
for _ in $(seq "$runs"); do
    swift test --skip-build --filter 'RoutingTests/(writesFollowThePromotedReplica|synchronousReplicationLosesNoCommitOnACrash)' 2>&1 \
        | grep -E '^failover \(' | tee -a "$out"
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"failover \((.*?)\): first write ([\d.]+) s after the promote command \(([\d.]+) s after the stop command\); (\d+) acknowledged, (\d+) lost, (\d+) errors", line)
    if m:
        rows.setdefault(m.group(1), []).append(tuple(float(m.group(i)) for i in range(2, 7)))
for label, values in rows.items():
    promote = statistics.median(v[0] for v in values)
    stop = statistics.median(v[1] for v in values)
    print(f"{label}: {len(values)} runs, median {promote:.2f} s from promote, {stop:.2f} s from stop; "
          f"lost acknowledged commits {int(sum(v[3] for v in values))}, client errors {int(sum(v[4] for v in values))} in all")
PY
rm -f "$out"

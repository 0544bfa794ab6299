#!/usr/bin/env python3
"""Runs pgbench scenarios against several targets in interleaved rounds and prints medians and ratios.

CPU per transaction is the pooler process's user+system time (from /proc/PID/stat) spent during the run,
divided by the transactions pgbench completed. Direct PostgreSQL has no pooler process, so no CPU figure.
Each round's line also gives the pooler's context switches per transaction (every thread's voluntary and
involuntary switches): each is a sleep and a wake-up, which on a shared machine is where most kernel time goes.
"""
import argparse, json, os, re, statistics, subprocess, tempfile

SCENARIOS = [
    ("pgbench -S, 50 clients", ["-S", "-c", "50", "-j", "2"]),
    ("pgbench -S -C, 50 clients", ["-S", "-C", "-c", "50", "-j", "2"]),
    ("pgbench -S, 1000 clients", ["-S", "-c", "1000", "-j", "2"]),
]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def context_switches(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def run(port, args, seconds, password):
    """Returns (tps, transactions, failed, p99 ms). p99 comes from pgbench's per-transaction log, sampled at 10%."""
    with tempfile.TemporaryDirectory() as logs:
        # PGBENCH_WRAP='taskset -c 1' runs pgbench under that (the pooler-bound run keeps it off the pooler's core).
        command = os.environ.get("PGBENCH_WRAP", "").split() + ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-T", str(seconds),
                   "-l", "--sampling-rate=0.1", f"--log-prefix={logs}/tx"] + args + ["postgres"]
        out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password}, timeout=seconds * 4 + 60)
        latencies = []
        for name in os.listdir(logs):
            with open(os.path.join(logs, name)) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 3 and fields[2].isdigit():
                        latencies.append(int(fields[2]))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] / 1000 if latencies else float("nan")
    tps = re.search(r"tps = ([0-9.]+)", out.stdout)
    done = re.search(r"actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if not tps or not done:
        return None, 0, out.stderr.strip().splitlines()[-1:] or ["no output"], None
    return float(tps.group(1)), int(done.group(1)), int(failed.group(1)) if failed else 0, p99


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--password", required=True)
    parser.add_argument("--target", action="append", required=True, help="name=port:pid (pid empty for none)")
    parser.add_argument("--shoal-load", help="shoal-load binary: adds the php-request scenario for the poolers")
    parser.add_argument("--load-users", type=int, default=2000)
    options = parser.parse_args()
    targets = []
    for spec in options.target:
        name, rest = spec.split("=", 1)
        port, pid = rest.split(":", 1)
        targets.append((name, int(port), int(pid) if pid else None))

    results = {}
    if os.environ.get("ONLY_LOAD"):
        SCENARIOS.clear()  # just the shoal-load scenario (ONLY_LOAD=1 Benchmarks/e2e.sh)
    if os.environ.get("SCENARIOS"):
        # SCENARIOS='-S -C': only the scenarios whose name contains it (more rounds where the noise is).
        SCENARIOS[:] = [entry for entry in SCENARIOS if os.environ["SCENARIOS"] in entry[0]]
    for round_number in range(options.rounds):
        for scenario, args in SCENARIOS:
            # Rotate the order each round so no target always runs first.
            ordered = targets[round_number % len(targets):] + targets[:round_number % len(targets)]
            for name, port, pid in ordered:
                before = cpu_seconds(pid) if pid else None
                switches_before = context_switches(pid) if pid else None
                tps, done, failed, p99 = run(port, args, options.seconds, options.password)
                after = cpu_seconds(pid) if pid else None
                switches = context_switches(pid) - switches_before if pid else None
                entry = results.setdefault((scenario, name), {"tps": [], "cpu_us": [], "failed": 0, "p99": []})
                if tps is None:
                    entry["failed"] += 1
                    print(f"round {round_number + 1} {scenario} {name}: failed: {failed}", flush=True)
                    continue
                entry["tps"].append(tps)
                entry["failed"] += failed
                entry["p99"].append(p99)
                if pid and done:
                    entry["cpu_us"].append((after - before) * 1e6 / done)
                # Pooler core use: CPU seconds per second of the run (1.0 = one core busy throughout).
                cpu = (f", {entry['cpu_us'][-1]:.1f} µs CPU/xact, pooler core use {(after - before) / options.seconds:.2f}, "
                       f"{switches / done:.2f} context switches/xact") if pid and done else ""
                print(f"round {round_number + 1} {scenario:28} {name:10} {tps:10.0f} tps, p99 {p99:.1f} ms{cpu}", flush=True)

    if options.shoal_load:
        scenario = f"shoal-load php-request, {options.load_users} users"
        SCENARIOS.append((scenario, None))
        for round_number in range(options.rounds):
            for name, port, pid in targets:
                if not pid:
                    continue  # direct PostgreSQL cannot take thousands of connections
                conninfo = f"host=127.0.0.1 port={port} dbname=postgres user=postgres password={options.password}"
                with tempfile.NamedTemporaryFile(suffix=".json") as report:
                    before = cpu_seconds(pid)
                    out = subprocess.run([options.shoal_load, "--workload", "php-request", "--users", str(options.load_users),
                                          "--duration", str(options.seconds), "--rounds", "1", "--init-users", "20000",
                                          "--target", f"{name}={conninfo}", "--json", report.name],
                                         capture_output=True, text=True, timeout=options.seconds * 6 + 60)
                    after = cpu_seconds(pid)
                    entry = results.setdefault((scenario, name), {"tps": [], "cpu_us": [], "failed": 0, "p99": []})
                    try:
                        target = json.load(open(report.name))["targets"][0]
                    except Exception:
                        entry["failed"] += 1
                        print(f"round {round_number + 1} {scenario} {name}: failed: {out.stderr.strip()[-200:]}", flush=True)
                        continue
                    entry["tps"].append(target["requests_per_second"])
                    entry["failed"] += sum(target["errors"].values())
                    entry.setdefault("p99", []).append(target["request"]["p99_us"] / 1000)
                    if not target["requests"]:
                        print(f"round {round_number + 1} {scenario} {name}: no request completed, errors {target['errors']}", flush=True)
                        continue
                    entry["cpu_us"].append((after - before) * 1e6 / target["requests"])
                    print(f"round {round_number + 1} {scenario:28} {name:10} {target['requests_per_second']:10.0f} req/s, "
                          f"{entry['cpu_us'][-1]:.1f} µs CPU/request, request p99 {target['request']['p99_us'] / 1000:.1f} ms, "
                          f"errors {target['errors']}", flush=True)

    print()
    print(f"| scenario | target | tps (median of {options.rounds}) | p99 ms (median) | pooler CPU µs/xact (median) | failed xacts |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, _ in SCENARIOS:
        for name, _, _ in targets:
            entry = results.get((scenario, name), {"tps": [], "cpu_us": [], "failed": 0, "p99": []})
            tps = f"{statistics.median(entry['tps']):.0f}" if entry["tps"] else "—"
            p99 = f"{statistics.median(entry['p99']):.1f}" if entry.get("p99") else "—"
            cpu = f"{statistics.median(entry['cpu_us']):.1f}" if entry["cpu_us"] else "—"
            print(f"| {scenario} | {name} | {tps} | {p99} | {cpu} | {entry['failed']} |")
    print()
    print("| scenario | Shoal/PgBouncer throughput | Shoal/PgBouncer CPU per xact |")
    print("|---|---:|---:|")
    for scenario, _ in SCENARIOS:
        s, b = results.get((scenario, "shoal")), results.get((scenario, "pgbouncer"))
        if s and b and s["tps"] and b["tps"]:
            ratio = statistics.median(s["tps"]) / statistics.median(b["tps"])
            cpu = (statistics.median(s["cpu_us"]) / statistics.median(b["cpu_us"])) if s["cpu_us"] and b["cpu_us"] else float("nan")
            print(f"| {scenario} | {ratio:.2f} | {cpu:.2f} |")
    # Any other pooler target (e.g. shoal-nopin, nio-forwarder) against shoal, for on/off comparisons of one
    # feature, and against PgBouncer (for the forwarder: NIO's own cost, the floor under Shoal's ratio).
    others = [name for name, _, pid in targets if pid and name not in ("shoal", "pgbouncer")]
    for other in others:
        print()
        print(f"| scenario | shoal/{other} throughput | shoal/{other} CPU per xact | {other}/pgbouncer CPU per xact |")
        print("|---|---:|---:|---:|")
        for scenario, _ in SCENARIOS:
            s, o, b = results.get((scenario, "shoal")), results.get((scenario, other)), results.get((scenario, "pgbouncer"))
            if s and o and s["tps"] and o["tps"]:
                ratio = statistics.median(s["tps"]) / statistics.median(o["tps"])
                cpu = (statistics.median(s["cpu_us"]) / statistics.median(o["cpu_us"])) if s["cpu_us"] and o["cpu_us"] else float("nan")
                floor = (statistics.median(o["cpu_us"]) / statistics.median(b["cpu_us"])) if o["cpu_us"] and b and b["cpu_us"] else float("nan")
                print(f"| {scenario} | {ratio:.3f} | {cpu:.3f} | {floor:.3f} |")
    for name, _, pid in targets:
        if pid:
            print(f"peak RSS {name}: {peak_rss_kb(pid) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()

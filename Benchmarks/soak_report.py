#!/usr/bin/env python3
"""Plots soak.csv (Benchmarks/soak.sh) as an SVG and checks for upward trends.

A series trends upward when a least-squares line through its second half rises by more than 10 % of its
median over that half (and by more than a small absolute floor: 2 MB of RSS, 3 descriptors beyond the open
connections), or when its last
quarter's median exceeds its second quarter's by that much. Servers refill after every RECONNECT and restart,
so they are judged by a bound instead: never more than POOL_SIZE (environment, default 20). Prints one line per series and exits
1 when any trends. The first half is warm-up (pools filling, allocator arenas growing) and is not judged.
"""
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1])))
if len(rows) < 8:
    sys.exit("too few samples for a trend (run at least 2 minutes)")
t = [float(r["seconds"]) for r in rows]
series = {
    "RSS (MB)": ([float(r["rss_kb"]) / 1024 for r in rows], 2.0),
    # Descriptors follow the connections open at the sample (servers refill after each RECONNECT and restart):
    # what is left beyond them (listeners, files, leaked sockets) is what must stay flat.
    "fds beyond connections": ([float(r["fds"]) - sum(float(r[k] or 0) for k in ("sv_active", "sv_idle", "cl_active", "cl_waiting"))
                                for r in rows], 3.0),
    "open fds": ([float(r["fds"]) for r in rows], None),
    "servers (active+idle)": ([float(r["sv_active"] or 0) + float(r["sv_idle"] or 0) for r in rows], None),
    "p99 request (ms)": ([float(r["p99_ms"]) for r in rows], None),
}


def slope(xs, ys):
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


trending = False
half = len(rows) // 2
for name, (ys, floor) in series.items():
    xs2, ys2 = t[half:], ys[half:]
    rise = slope(xs2, ys2) * (xs2[-1] - xs2[0])
    median = statistics.median(ys2)
    q = len(rows) // 4
    late = statistics.median(ys[3 * q:]) - statistics.median(ys[q:2 * q])
    judged = floor is not None
    up = judged and ((rise > max(floor, 0.1 * median)) or (late > max(floor, 0.1 * median)))
    trending |= up
    print(f"{name:<24} median {median:9.2f}  second-half rise {rise:+9.2f}  last-vs-second quarter {late:+9.2f}"
          + ("  TRENDS UP" if up else ("  flat" if judged else "  (reported, not judged)")))
import os
pool_size = int(os.environ.get("POOL_SIZE", "20"))
servers = series["servers (active+idle)"][0]
if max(servers) > pool_size:
    trending = True
    print(f"servers reached {max(servers):.0f}, above the pool size {pool_size}")
errors = sum(int(r["errors"]) for r in rows)
requests = sum(int(r["requests"]) for r in rows)
events = [r["event"] for r in rows if r["event"]]
print(f"{requests} requests, {errors} errors, {len(events)} events ({events.count('reload')} reloads, "
      f"{events.count('reconnect')} reconnects, {events.count('postgres-restart')} PostgreSQL restarts) over {t[-1]:.0f} s")

# SVG: one panel per series, event times as vertical marks.
width, height, pad = 900, 150, 40
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height * len(series) + 20}" font-family="sans-serif" font-size="11">']
for index, (name, (ys, _)) in enumerate(series.items()):
    top = index * height + 10
    low, high = min(ys), max(ys)
    span = (high - low) or 1
    def px(x): return pad + (x - t[0]) / ((t[-1] - t[0]) or 1) * (width - 2 * pad)
    def py(y): return top + height - 25 - (y - low) / span * (height - 45)
    svg.append(f'<text x="{pad}" y="{top + 10}">{name}: {low:.1f} – {high:.1f}</text>')
    svg.append(f'<rect x="{pad}" y="{top + 15}" width="{width - 2 * pad}" height="{height - 40}" fill="none" stroke="#ccc"/>')
    for r, x in zip(rows, t):
        if r["event"]:
            color = {"reload": "#9c9", "reconnect": "#99c", "postgres-restart": "#c99"}.get(r["event"], "#ccc")
            svg.append(f'<line x1="{px(x):.1f}" y1="{top + 15}" x2="{px(x):.1f}" y2="{top + height - 25}" stroke="{color}"/>')
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(t, ys))
    svg.append(f'<polyline points="{points}" fill="none" stroke="#236" stroke-width="1.5"/>')
svg.append(f'<text x="{pad}" y="{height * len(series) + 15}">seconds 0 – {t[-1]:.0f}; marks: reload (green), RECONNECT (blue), PostgreSQL restart (red)</text>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg))
sys.exit(1 if trending else 0)

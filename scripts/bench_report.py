#!/usr/bin/env python3
"""Parse memcaslap (libmemcached-tools 1.1.x "memaslap v1.0") output and
render the benchmark table for scripts/bench.sh.

  bench_report.py parse FILE          -> one JSON object on stdout
  bench_report.py report RESULTS.jsonl [--baseline memcached] -> markdown
  bench_report.py stats PORT          -> the `stats` reply of 127.0.0.1:PORT

What memcaslap prints (run with -S equal to -t so the statistics are dumped
once, at the end):

  Total Statistics (424253 events)
     Min:        11
     Max:     29421
     Avg:       471
     Geo:    309.41
     Std:    676.51
     Log2 Dist:
         4:       33     1152    43036    43793
         8:    55348   171495    82500    20480
        12:     4612     1302      401      101
  ...
  Run time: 4.0s Ops: 424303 TPS: 106052 Net_rate: 118.7M/s

All times are microseconds.  memcaslap prints no percentiles: the "Log2
Dist" histogram has one count per bucket b, where bucket b holds latencies
in (2^(b-1), 2^b] us (memaslap's ms_local_log2 rounds up); each row starts
at the bucket number shown before the colon.  p50/p99 reported here are the
upper bound 2^b of the bucket where the cumulative count crosses 50% / 99%,
so they are exact to within a factor of two (a "<= X us" bound).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict


def parse(text: str) -> dict:
    out: dict = {}
    m = re.search(r"Run time: ([0-9.]+)s Ops: ([0-9]+) TPS: ([0-9]+) Net_rate: ([0-9.]+)M/s", text)
    if not m:
        raise ValueError("no 'Run time: ... TPS:' line in memcaslap output")
    out["run_time_s"] = float(m.group(1))
    out["ops"] = int(m.group(2))
    out["tps"] = int(m.group(3))
    out["net_mb_s"] = float(m.group(4))
    for key in ("cmd_get", "cmd_set", "get_misses"):
        mm = re.search(r"^%s: ([0-9]+)" % key, text, re.M)
        if mm:
            out[key] = int(mm.group(1))
    for kind in ("Get", "Set", "Total"):
        block = re.search(
            r"^%s Statistics \(([0-9]+) events\)\n(.*?)(?:\n\s*\n|\Z)" % kind, text, re.M | re.S)
        if not block:
            continue
        body = block.group(2)
        st = {"events": int(block.group(1))}
        for field in ("Min", "Max", "Avg", "Geo", "Std"):
            fm = re.search(r"^\s*%s:\s+([0-9.]+)" % field, body, re.M)
            if fm:
                st[field.lower()] = float(fm.group(1))
        hist = {}
        dist = body.split("Log2 Dist:", 1)
        if len(dist) == 2:
            for line in dist[1].strip().splitlines():
                parts = line.split()
                if not parts or not parts[0].endswith(":"):
                    break
                base = int(parts[0][:-1])
                for i, count in enumerate(parts[1:]):
                    hist[base + i] = int(count)
        st["log2_hist"] = hist
        total = sum(hist.values())
        for name, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
            st[name] = _bucket_quantile(hist, total, q)
        out[kind.lower()] = st
    return out


def _bucket_quantile(hist: dict, total: int, q: float):
    if not total:
        return None
    acc = 0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= q * total:
            return 2 ** b
    return 2 ** max(hist)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, digits=0):
    if x is None:
        return "n/a"
    return ("{:,.%df}" % digits).format(x)


def report(path: str, baseline: str = "memcached") -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(list)
    order_w, order_t = [], []
    for r in rows:
        by[(r["workload"], r["target"])].append(r)
        if r["workload"] not in order_w:
            order_w.append(r["workload"])
        if r["target"] not in order_t:
            order_t.append(r["target"])
    lines = [
        "| workload | server | TPS per round | median TPS | vs %s | median avg latency (us) "
        "| median p99 (us, <=) | max latency (us, worst round) |" % baseline,
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for w in order_w:
        base = _median([r["tps"] for r in by.get((w, baseline), [])])
        for t in order_t:
            rs = by.get((w, t))
            if not rs:
                continue
            tps = [r["tps"] for r in rs]
            med = _median(tps)
            ratio = "%.2fx" % (med / base) if base and med is not None else "n/a"
            if t == baseline:
                ratio = "1.00x"
            avg = _median([r.get("total", {}).get("avg") for r in rs])
            p99s = [r.get("total", {}).get("p99") for r in rs]
            p99s = [x for x in p99s if x is not None]
            p99 = statistics.median_low(p99s) if p99s else None  # stays a bucket bound
            mx = max([r.get("total", {}).get("max") or 0 for r in rs]) or None
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                w, t, " / ".join(_fmt(x) for x in tps), _fmt(med), ratio, _fmt(avg),
                _fmt(p99), _fmt(mx)))
    return "\n".join(lines)


def server_stats(port):
    """The `stats` reply of the server on 127.0.0.1:port."""
    import socket
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode("utf-8", "replace")


def main(argv):
    if len(argv) >= 2 and argv[0] == "stats":
        sys.stdout.write(server_stats(argv[1]))
        return 0
    if len(argv) >= 2 and argv[0] == "parse":
        print(json.dumps(parse(open(argv[1], errors="replace").read())))
        return 0
    if len(argv) >= 2 and argv[0] == "report":
        baseline = "memcached"
        if "--baseline" in argv:
            baseline = argv[argv.index("--baseline") + 1]
        print(report(argv[1], baseline))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

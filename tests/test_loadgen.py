"""memroute-loadgen (tools/loadgen) end to end, against a real memcached on
loopback: a short closed-loop run with pipelined multi-gets, an open-loop
run at a low rate, and the plot subcommand.

The binary is $LOADGEN_BIN, else memroute-loadgen beside $MEMROUTE_BIN, else
target/debug/memroute-loadgen (`cargo build --workspace` makes it)."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO_ROOT, missing

SVG_NS = "{http://www.w3.org/2000/svg}"


def loadgen_bin() -> str:
    env = os.environ.get("LOADGEN_BIN")
    if env:
        path = Path(env)
    elif os.environ.get("MEMROUTE_BIN"):
        path = Path(os.environ["MEMROUTE_BIN"]).parent / "memroute-loadgen"
    else:
        path = REPO_ROOT / "target" / "debug" / "memroute-loadgen"
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing("memroute-loadgen not built (cargo build --workspace; looked for %s)" % path)
    return str(path)


def run_loadgen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run([loadgen_bin(), *args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout,
                                                                      p.stderr)
    return p


def check_latency(lat: dict) -> None:
    assert lat["count"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    cdf = lat["cdf"]
    assert cdf[0][0] >= 0 and cdf[-1] == [100, lat["max"]]
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(cdf, cdf[1:]))


def series_count(svg_path: Path) -> int:
    root = ET.parse(svg_path).getroot()  # fails on malformed XML
    assert root.tag == SVG_NS + "svg"
    return sum(1 for e in root.iter(SVG_NS + "polyline") if e.get("class") == "series")


@pytest.mark.slow
def test_closed_loop_pipelined_mget_against_memcached(memcached_factory, tmp_path):
    mc = memcached_factory("-t", "1")
    out = tmp_path / "closed.json"
    p = run_loadgen("-s", mc.addr, "-c", "4", "--depth", "4", "--mget", "5", "--set-ratio", "0.2",
                    "--keys", "2000", "--prefill", "-d", "2s", "--label", "memcached",
                    "--json", str(out), "--svg", str(tmp_path / "closed.svg"))
    assert "ops/s" in p.stdout and "p99.9 us" in p.stdout
    r = json.loads(out.read_text())
    assert r["label"] == "memcached" and r["config"]["mode"] == "closed"
    assert r["ops"] > 100, r["ops"]
    assert r["ops_per_sec"] > 50
    assert 1.9 <= r["elapsed_s"] < 5
    assert r["errors"]["total"] == 0, r["errors"]
    # Prefilled: every key is there, and every value came back right.
    assert r["prefill"]["ops"] == 2000 and r["prefill"]["errors"]["total"] == 0
    assert r["misses"] == 0 and r["hits"] > 0
    for op in ("all", "set", "mget"):
        check_latency(r["latency_us"][op])
    assert "get" not in r["latency_us"]  # --mget 5 sends only multi-gets
    assert r["latency_us"]["all"]["count"] == r["ops"]
    assert series_count(tmp_path / "closed.svg") == 1


@pytest.mark.slow
def test_rate_mode_holds_the_asked_rate(memcached_factory, tmp_path):
    mc = memcached_factory("-t", "1")
    out = tmp_path / "open.json"
    run_loadgen("-s", mc.addr, "-c", "2", "--rate", "200", "-d", "2s", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["config"]["mode"] == "open" and r["config"]["rate"] == 200
    assert r["errors"]["total"] == 0, r["errors"]
    # 2 s at 200/s: 400 requests on the timetable, all answered.
    assert 380 <= r["ops"] <= 400, r["ops"]
    assert 160 <= r["ops_per_sec"] <= 210, r["ops_per_sec"]
    check_latency(r["latency_us"]["all"])


def test_plot_overlays_runs(memcached_factory, tmp_path):
    mc = memcached_factory("-t", "1")
    files = []
    for i, label in enumerate(["direct", "twemproxy", "memroute"]):
        f = tmp_path / ("%s.json" % label)
        run_loadgen("-s", mc.addr, "-c", "2", "-n", "300", "--label", label, "--seed", str(i + 1),
                    "--json", str(f))
        r = json.loads(f.read_text())
        assert r["ops"] == 300 and r["errors"]["total"] == 0
        files.append(str(f))
    svg = tmp_path / "cdf.svg"
    run_loadgen("plot", *files, "--svg", str(svg), "--title", "get latency & <co>")
    assert series_count(svg) == 3
    text = svg.read_text()
    for label in ("direct", "twemproxy", "memroute", "0%", "90%", "99%"):
        assert label in text


def test_errors_are_counted_and_fail_the_exit_status(memcached_factory, tmp_path):
    # Values over memcached's item size limit (1 MiB): every set gets a
    # SERVER_ERROR, and the run says so in its status.
    mc = memcached_factory()
    out = tmp_path / "err.json"
    p = subprocess.run([loadgen_bin(), "-s", mc.addr, "-c", "1", "-n", "10", "--set-ratio", "1",
                        "--value-size", "1100000", "--json", str(out)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2, p.stdout + p.stderr
    r = json.loads(out.read_text())
    assert r["errors"]["server_error"] == 10 and r["ops"] == 0

"""The Prometheus / OpenMetrics endpoint (--metrics-listen), scraped by a
real Prometheus (Debian package `prometheus`).

Each test sends known traffic to memroute, then starts Prometheus with a
generated config scraping memroute every second, waits for a scrape, and
asks Prometheus's HTTP API what it recorded. Prometheus asks for
OpenMetrics, so its scrape checks that format; `promtool check metrics`
checks the Prometheus text format the endpoint gives other clients.
Everything started here is stopped by pid, and every wait is bounded."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import (EXAMPLES_DIR, HOST, RawClient, free_port, missing,
                      run_memroute_expect_failure, stats_dict, wait_until)

SCRAPE_WAIT = 30.0  # seconds for Prometheus to start and record a scrape
HTTP_TIMEOUT = 5.0


def prometheus_bin() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).is_file():
        missing("prometheus not installed (Debian package prometheus; run "
                "scripts/install-test-deps.sh)")
    return path


def fnv1a64(data: bytes) -> str:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def http_get(url: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class Prometheus:
    """A real Prometheus scraping ``target`` every second."""

    def __init__(self, tmp_path: Path, target: str):
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: memroute\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            "    static_configs:\n"
            "      - targets: ['%s']\n" % target)
        self.log = self.dir / "prometheus.log"
        argv = [prometheus_bin(), "--config.file=%s" % config,
                "--storage.tsdb.path=%s" % (self.dir / "data"),
                "--web.listen-address=%s:%d" % (HOST, self.port),
                "--log.level=warn"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=str(self.dir),
                                         start_new_session=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def query(self, promql: str) -> list:
        """The result vector of an instant query ([] when nothing matches)."""
        url = "http://%s:%d/api/v1/query?%s" % (
            HOST, self.port, urllib.parse.urlencode({"query": promql}))
        status, _, body = http_get(url)
        assert status == 200, (promql, status, body[:500])
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str):
        """The single value of ``promql``, or None when it has none."""
        result = self.query(promql)
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])

    def wait_for_scrape(self) -> None:
        """Until Prometheus has scraped memroute successfully."""
        def scraped() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited:\n" + self.log_tail())
            try:
                return self.value('up{job="memroute"}') == 1.0
            except (OSError, AssertionError, ValueError):
                return False
        try:
            wait_until(scraped, SCRAPE_WAIT, 0.2, "a successful scrape of memroute")
        except pytest.fail.Exception as e:
            pytest.fail("%s\n%s" % (e, self.log_tail()), pytrace=False)


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(target: str) -> Prometheus:
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


def send_known_traffic(client) -> tuple:
    """37 sets, then 50 single-key gets of which 20 hit; the bytes sent and
    received."""
    sent = received = 0
    for i in range(37):
        req = b"set mkey:%d 0 0 %d\r\nvalue-%d\r\n" % (i, len(b"value-%d" % i), i)
        reply = client.request(req)
        assert reply == b"STORED\r\n"
        sent, received = sent + len(req), received + len(reply)
    for i in range(50):
        key = b"mkey:%d" % i if i < 20 else b"missing:%d" % i
        req = b"get " + key + b"\r\n"
        reply = client.request(req, b"END\r\n")
        assert (reply != b"END\r\n") == (i < 20), reply
        sent, received = sent + len(req), received + len(reply)
    return sent, received


def metrics_url(port: int) -> str:
    return "http://%s:%d/metrics" % (HOST, port)


def check_exposition(port: int) -> str:
    """The raw endpoint: content types, 404/405, and promtool's verdict on
    the Prometheus text format. Returns the plain text."""
    status, headers, plain = http_get(metrics_url(port))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, headers, om = http_get(
        metrics_url(port), {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n"), om[-200:]
    assert http_get("http://%s:%d/" % (HOST, port))[0] == 404
    assert http_get("http://%s:%d/metricsx" % (HOST, port))[0] == 404
    status, headers, _ = http_get(metrics_url(port), method="POST")
    assert status == 405 and "GET" in headers["Allow"]
    text = plain.decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            assert line.split()[2].startswith("memroute_"), line
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "metrics"], input=plain,
                              capture_output=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
    return text


def test_embedded_mode_series_match_the_traffic(memroute_factory, prometheus):
    port = free_port()
    mr = memroute_factory("--metrics-listen", ":%d" % port)
    with mr.client() as c:
        sent, received = send_known_traffic(c)
    text = check_exposition(port)
    assert 'memroute_info{version="1.6.18-memroute-' in text
    assert 'config_digest="none"' in text
    assert "memroute_backend_" not in text, "no backends without a startfile"

    prom = prometheus("%s:%d" % (HOST, port))
    prom.wait_for_scrape()
    assert prom.value("memroute_cmd_set_total") == 37
    assert prom.value("memroute_cmd_get_total") == 50
    assert prom.value("memroute_get_hits_total") == 20
    assert prom.value("memroute_get_misses_total") == 30
    assert prom.value("memroute_cache_items") == 37
    assert prom.value("memroute_cache_stored_items_total") == 37
    assert prom.value("memroute_cache_limit_bytes") == 64 * 1024 * 1024
    assert prom.value("memroute_cache_bytes") > 0
    assert prom.value("memroute_cache_evictions_total") == 0
    assert prom.value('memroute_info{config_digest="none"}') == 1
    assert prom.value("memroute_connections_total") >= 2  # the harness's check and ours
    # A ratio as a dashboard would compute it.
    ratio = prom.value("memroute_get_hits_total / memroute_cmd_get_total")
    assert ratio == pytest.approx(0.4)

    # Prometheus recorded what `stats` says: every counter of `stats`
    # exported as memroute_<name>_total has the same value. The scrapes
    # saw no traffic after ours; Prometheus's values are taken before the
    # `stats` command, which counts its own line in bytes_read (7 bytes)
    # but not its reply in bytes_written.
    counters = ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits",
                "get_misses", "get_expired", "get_flushed", "delete_misses", "delete_hits",
                "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses",
                "cas_hits", "cas_badval", "touch_hits", "touch_misses", "store_too_large",
                "store_no_memory", "bytes_read", "bytes_written")
    recorded = {name: prom.value("memroute_%s_total" % name) for name in counters}
    recorded["curr_items"] = prom.value("memroute_cache_items")
    recorded["bytes"] = prom.value("memroute_cache_bytes")
    with mr.client() as c:
        st = stats_dict(c)
    st["bytes_read"] = str(int(st["bytes_read"]) - len(b"stats\r\n"))
    for name, value in recorded.items():
        assert value == int(st[name]), (name, value, st[name])
    assert len(recorded) == 26
    assert prom.value("memroute_curr_items") is None  # it is memroute_cache_items
    # Our connection's bytes are among them.
    assert recorded["bytes_read"] >= sent
    assert recorded["bytes_written"] >= received


def test_proxy_mode_backend_series(backends, memroute_factory, prometheus):
    (backend,) = backends(1)
    startfile = EXAMPLES_DIR / "single-pool.lua"
    port = free_port()
    mr = memroute_factory("--config", str(startfile), "--config-arg", backend.addr,
                          "--metrics-listen", "%s:%d" % (HOST, port))
    with mr.client() as c:
        send_known_traffic(c)
    check_exposition(port)

    prom = prometheus("%s:%d" % (HOST, port))
    prom.wait_for_scrape()
    # The configuration digest (startfile and resolved backends) is the
    # one `stats` shows.
    with mr.client() as c:
        digest = stats_dict(c)["config_digest"]
    assert digest != fnv1a64(startfile.read_bytes()), "not the startfile alone"
    assert prom.value('memroute_info{config_digest="%s"}' % digest) == 1
    assert prom.value("memroute_routed_requests_total") == 87
    assert prom.value("memroute_lua_errors_total") == 0
    assert prom.value("memroute_config_reloads_total") == 0
    b1 = '{backend="b1"}'
    assert prom.value("memroute_backend_requests_total" + b1) == 87
    assert prom.value("memroute_backend_responses_total" + b1) == 87
    assert prom.value("memroute_backend_failed_requests_total" + b1) == 0
    assert prom.value("memroute_backend_timeouts_total" + b1) == 0
    assert prom.value("memroute_backend_connects_total" + b1) >= 1
    assert prom.value("memroute_backend_connections" + b1) >= 1
    assert prom.value("memroute_backend_in_flight" + b1) == 0
    assert prom.value('memroute_backend_state{backend="b1",state="healthy"}') == 1
    assert prom.value('memroute_backend_state{backend="b1",state="bad"}') == 0
    # The latency histogram: one observation per reply, +Inf holds them all,
    # and PromQL's histogram functions read it.
    assert prom.value("memroute_backend_latency_seconds_count" + b1) == 87
    assert prom.value('memroute_backend_latency_seconds_bucket{backend="b1",le="+Inf"}') == 87
    assert prom.value("memroute_backend_latency_seconds_sum" + b1) > 0
    p99 = prom.value("histogram_quantile(0.99, memroute_backend_latency_seconds_bucket)")
    assert p99 is not None and 0 < p99 <= 5.0
    # The embedded cache saw none of it.
    assert prom.value("memroute_cmd_get_total") == 0
    assert prom.value("memroute_cache_items") == 0

    # The backend itself agrees about the traffic.
    with backend.client() as c:
        st = stats_dict(c)
    assert int(st["cmd_set"]) == 37
    assert int(st["get_hits"]) == 20 and int(st["get_misses"]) == 30


def test_user_stats_and_reload_digest(backends, memroute_factory, prometheus, tmp_path):
    """mcp.add_stat counters appear as memroute_user_stat{name}; a reload
    changes config_digest and counts in config_reloads_total."""
    (backend,) = backends(1)
    startfile = tmp_path / "stats.lua"
    body = """
        function mcp_config_pools()
            mcp.add_stat(1, "gets_seen")
            return mcp.pool({ mcp.backend("b1", "%s", %d) })
        end
        function mcp_config_routes(pool)
            mcp.attach(mcp.CMD_GET, function(r)
                mcp.stat(1, 1)
                return pool(r)
            end)
        end
    """ % (HOST, backend.port)
    startfile.write_text(body)
    port = free_port()
    mr = memroute_factory("--config", str(startfile), "--metrics-listen", str(port))
    with mr.client() as c:
        for i in range(5):
            c.request(b"get u:%d\r\n" % i, b"END\r\n")
    prom = prometheus("%s:%d" % (HOST, port))
    prom.wait_for_scrape()
    assert prom.value('memroute_user_stat{name="gets_seen"}') == 5
    def digest():
        with mr.client() as c:
            return stats_dict(c)["config_digest"]
    old = digest()
    assert prom.value('memroute_info{config_digest="%s"}' % old) == 1

    startfile.write_text(body + "\n-- changed\n")
    mr.proc.send_signal(signal.SIGHUP)
    new = wait_until(lambda: digest() != old and digest(), SCRAPE_WAIT, 0.1,
                     "stats config_digest to change")
    wait_until(lambda: prom.value('memroute_info{config_digest="%s"}' % new) == 1,
               SCRAPE_WAIT, 0.2, "the new digest in Prometheus")
    assert prom.value("memroute_config_reloads_total") == 1


def test_pool_and_route_series(backends, memroute_factory, prometheus, tmp_path):
    """Per pool and per attached route: Prometheus records the requests
    sent down each, and the routes' replies by outcome, as sent here (two
    pools, one of them unreachable; an untagged and a tagged listener)."""
    (backend,) = backends(1)
    dead_port = free_port()  # nothing listens there: every request fails
    startfile = tmp_path / "pools.lua"
    startfile.write_text("""
        function mcp_config_pools()
            return {
                main = mcp.pool({ mcp.backend("b1", "%s", %d) }, { name = "main" }),
                dead = mcp.pool({ mcp.backend("gone", "%s", %d) }, { name = "dead" }),
            }
        end
        function mcp_config_routes(p)
            mcp.attach(mcp.CMD_SET, p.main)
            mcp.attach(mcp.CMD_GET, p.main)
            mcp.attach(mcp.CMD_DELETE, p.dead)
            -- tagged clients' gets go through Lua to the same pool
            mcp.attach(mcp.CMD_GET, function(r) return p.main(r) end, "tg")
        end
    """ % (HOST, backend.port, HOST, dead_port))
    port, tagged_port = free_port(), free_port()
    mr = memroute_factory("--config", str(startfile), "--metrics-listen", str(port),
                          "-l", "tag_tg_:%s:%d" % (HOST, tagged_port))
    with mr.client() as c:
        for i in range(10):
            assert c.request(b"set pk:%d 0 0 1\r\nv\r\n" % i) == b"STORED\r\n"
        for i in range(6):  # 4 hits, 2 misses
            reply = c.request(b"get pk:%d\r\n" % (i if i < 4 else 100 + i), b"END\r\n")
            assert (reply != b"END\r\n") == (i < 4), reply
        # A multi-key get is one route request (and one line to the pool's
        # one backend).
        reply = c.request(b"get pk:1 pk:2 nope\r\n", b"END\r\n")
        assert reply.count(b"VALUE ") == 2, reply
        for i in range(3):
            reply = c.request(b"delete pk:%d\r\n" % i)
            assert reply.startswith(b"SERVER_ERROR"), reply
    with RawClient(HOST, tagged_port) as c:
        for i in range(5):
            assert c.request(b"get tg:%d\r\n" % i, b"END\r\n") == b"END\r\n"
    text = check_exposition(port)
    assert 'memroute_pool_requests_total{pool="main"}' in text

    prom = prometheus("%s:%d" % (HOST, port))
    prom.wait_for_scrape()
    def route(name: str, tag: str = "", outcome: str | None = None):
        labels = 'route="%s",tag="%s"' % (name, tag)
        if outcome is None:
            return prom.value("memroute_route_requests_total{%s}" % labels)
        return prom.value('memroute_route_replies_total{%s,outcome="%s"}' % (labels, outcome))
    assert route("set") == 10
    assert (route("set", outcome="ok"), route("set", outcome="miss"),
            route("set", outcome="error")) == (10, 0, 0)
    assert route("get") == 7
    assert (route("get", outcome="ok"), route("get", outcome="miss"),
            route("get", outcome="error")) == (5, 2, 0)
    assert route("delete") == 3 and route("delete", outcome="error") == 3
    assert route("get", "tg") == 5 and route("get", "tg", "miss") == 5
    # Only routes that were taken have series.
    assert prom.value('memroute_route_requests_total{route="mg"}') is None
    assert prom.value("count(memroute_route_requests_total)") == 4
    assert prom.value("sum(memroute_route_requests_total)") == 25
    assert prom.value("memroute_routed_requests_total") == 25
    assert prom.value('sum(memroute_route_replies_total)') == 25

    pool = lambda family, name: prom.value('memroute_pool_%s_total{pool="%s"}' % (family, name))
    assert pool("requests", "main") == 10 + 6 + 1 + 5
    assert pool("errors", "main") == 0
    assert pool("requests", "dead") == 3
    assert pool("errors", "dead") == 3
    # The pool's backend saw exactly what the pool counted.
    assert prom.value('memroute_backend_requests_total{backend="b1"}') == 22
    with backend.client() as c:
        st = stats_dict(c)
    assert int(st["cmd_set"]) == 10
    assert int(st["get_hits"]) + int(st["get_misses"]) == 6 + 3 + 5
    with mr.client() as c:
        proxy = stats_dict(c, b"proxy")
    assert int(proxy["routed_requests"]) == 25


def test_metrics_listen_errors():
    bad = run_memroute_expect_failure(["--metrics-listen", "not an address"])
    assert bad.returncode == 2 and "--metrics-listen" in bad.stderr, bad.stderr
    # A port already taken stops the start.
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run_memroute_expect_failure(["--metrics-listen", "%s:%d" % (HOST, port)])
    assert busy.returncode == 1 and "cannot listen on %s:%d" % (HOST, port) in busy.stderr, \
        busy.stderr

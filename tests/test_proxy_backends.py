"""memcached backends seen from the outside, against real memcached:

* `stats backends` sums each backend's per-worker counters; `stats proxybe`
  lists the backends some worker sees bad, as memcached's proxy does
  (`bad_<label> 1`);
* many clients' big multi-gets, more keys at once than a backend connection
  takes in flight, wait their turn instead of failing.

Every wait is bounded.
"""

from __future__ import annotations

import signal
import threading

from conftest import stats_dict, wait_until, write_startfile
from test_proxy_failures import FAILOVER_STARTFILE

NUMERIC = ["workers", "bad_workers", "connections", "in_flight", "requests", "responses",
           "failed_requests", "fast_fails", "busy", "failures", "timeouts", "connects",
           "reconnects", "connect_failures", "marked_bad", "writes", "bytes_written",
           "bytes_read", "latency_mean_us", "latency_p50_us", "latency_p90_us",
           "latency_p99_us", "latency_p999_us"]


def start(memroute_factory, startfile_dir, backends, label=None, threads="2"):
    """memroute with one pool over `backends`, labelled b1, b2... (or all
    `label`), quick to mark bad (failure limit 2) and to retry (0.2 s)."""
    text = FAILOVER_STARTFILE
    if label is not None:
        text = text.replace('"b" .. (#bs + 1)', label)
        assert label in text
    path = write_startfile(startfile_dir, "stats.lua", text)
    arg = ",".join(b.addr for b in backends)
    return memroute_factory("--config", str(path), "--config-arg", arg, "-t", threads)


def per_backend(stats: dict) -> dict:
    """{name: {field: value}} from `stats backends`."""
    out: dict = {}
    for key, value in stats.items():
        name, field = key.rsplit(":", 1)
        out.setdefault(name, {})[field] = value
    return out


def test_stats_backends_counts_every_request(backends, memroute_factory, startfile_dir):
    b1, b2 = backends(2)
    mr = start(memroute_factory, startfile_dir, [b1, b2])
    n = 60
    with mr.client() as c:
        for i in range(n):
            assert c.request(b"set s%d 0 0 2\r\nab\r\n" % i) == b"STORED\r\n"
        for i in range(n):
            assert c.request(b"get s%d\r\n" % i, b"END\r\n") == b"VALUE s%d 0 2\r\nab\r\nEND\r\n" % i
        seen = per_backend(stats_dict(c, b"backends"))
    assert set(seen) == {"b1", "b2"}
    assert seen["b1"]["address"] == b1.addr and seen["b2"]["address"] == b2.addr
    for name, s in seen.items():
        for field in NUMERIC:
            assert s[field].isdigit(), (name, field, s[field])
        assert s["state"] == "healthy"
        assert s["workers"] == "2", "each of the 2 workers has its own connections"
        assert s["bad_workers"] == "0" and s["failures"] == "0" and s["marked_bad"] == "0"
        assert s["responses"] == s["requests"]
        assert s["in_flight"] == "0"
        assert int(s["connections"]) >= 1 and int(s["connects"]) >= 1
        assert int(s["bytes_written"]) > 0 and int(s["bytes_read"]) > 0
        assert int(s["latency_p50_us"]) <= int(s["latency_p99_us"]) <= int(s["latency_p999_us"])
    # every set and every get reached exactly one backend
    assert sum(int(s["requests"]) for s in seen.values()) == 2 * n
    assert all(int(s["requests"]) > 0 for s in seen.values()), "keys spread over both"

    with mr.client() as c:
        assert c.request(b"stats reset\r\n") == b"RESET\r\n"
        after = per_backend(stats_dict(c, b"backends"))
    for s in after.values():
        assert s["requests"] == "0" and s["latency_mean_us"] == "0"
        assert s["state"] == "healthy" and int(s["connections"]) >= 1, "gauges stay"


def test_one_label_on_two_addresses_is_told_apart(backends, memroute_factory, startfile_dir):
    b1, b2 = backends(2)
    mr = start(memroute_factory, startfile_dir, [b1, b2], label='"same"', threads="1")
    with mr.client() as c:
        seen = per_backend(stats_dict(c, b"backends"))
    assert set(seen) == {"same@%s" % b1.addr, "same@%s" % b2.addr}


def test_killed_backend_shows_bad_then_recovers(backends, memcached_factory, memroute_factory,
                                                startfile_dir):
    b1, b2 = backends(2)
    mr = start(memroute_factory, startfile_dir, [b1, b2])
    with mr.client() as c:
        assert stats_dict(c, b"proxybe") == {}, "no bad backend at start"
        for i in range(20):
            c.request(b"set k%d 0 0 1\r\nx\r\n" % i)

    b2.proc.send_signal(signal.SIGKILL)
    b2.proc.wait(5)
    b2.stop(expect_clean=False)

    def b2_bad():
        # requests to b2's keys (one-line replies) are what makes each
        # worker notice
        with mr.client() as c:
            for i in range(20):
                c.request(b"touch k%d 0\r\n" % i)
            return stats_dict(c, b"proxybe") == {"bad_b2": "1"}
    wait_until(b2_bad, 5, what="stats proxybe to list b2")
    with mr.client() as c:
        seen = per_backend(stats_dict(c, b"backends"))
    assert seen["b2"]["state"] == "bad"
    assert int(seen["b2"]["marked_bad"]) >= 1 and int(seen["b2"]["bad_workers"]) >= 1
    assert int(seen["b2"]["fast_fails"]) + int(seen["b2"]["failed_requests"]) > 0
    assert seen["b1"]["state"] == "healthy" and seen["b1"]["marked_bad"] == "0"

    memcached_factory(port=b2.port)

    def recovered():
        with mr.client() as c:
            return stats_dict(c, b"proxybe") == {}
    wait_until(recovered, 8, what="b2 to recover by itself")
    with mr.client() as c:
        assert per_backend(stats_dict(c, b"backends"))["b2"]["state"] == "healthy"
        assert c.request(b"set again 0 0 1\r\ny\r\n") == b"STORED\r\n"


def test_stats_backends_without_proxy_is_empty(memroute):
    with memroute.client() as c:
        assert stats_dict(c, b"backends") == {}
        assert stats_dict(c, b"proxybe") == {}


def test_multigets_beyond_the_in_flight_limit_wait_instead_of_failing(
        backends, memroute_factory, startfile_dir):
    """8 clients x 400-key gets on one worker and one backend connection:
    3,200 keys at once against a limit of 1,024 in flight."""
    (b1,) = backends(1)
    mr = start(memroute_factory, startfile_dir, [b1], threads="1")
    keys = [b"big:%d" % i for i in range(400)]
    with mr.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k)) == b"STORED\r\n"
    want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k), k) for k in keys) + b"END\r\n"
    line = b"get " + b" ".join(keys) + b"\r\n"
    go = threading.Barrier(8)
    bad = []

    def client():
        with mr.client() as c:
            go.wait(10)
            for _ in range(3):
                c.send(line)
                reply = c.read_until(b"END\r\n")
                if reply != want:
                    bad.append(reply[:200])
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not bad, bad[:3]
    with mr.client() as c:
        seen = per_backend(stats_dict(c, b"backends"))["b1"]
    assert seen["busy"] == "0" and seen["failed_requests"] == "0"
    assert int(seen["requests"]) == 400 + 8 * 3 * 400

"""memcached backends seen from the outside, against real memcached:

* `stats backends` sums each backend's per-worker counters; `stats proxybe`
  lists the backends some worker sees bad, as memcached's proxy does
  (`bad_<label> 1`);
* many clients' big multi-gets, more keys at once than a backend connection
  takes in flight, wait their turn instead of failing;
* a client's NUL byte in a command line cannot put a backend connection,
  which many clients share, out of step.

Every wait is bounded.
"""

from __future__ import annotations

import signal
import threading

import pytest

from conftest import REPO_ROOT, RawClient, stats_dict, wait_until, write_startfile
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


# Lines holding a NUL byte. memroute reads a NUL as a key byte like any
# other (as memcached 1.6.45's parser does), but memcached 1.6.18 (the one
# these tests run, Debian 12's) ends a command line at a NUL: sent on,
# `set a<NUL>b 0 0 9` and its data `get nokey` would be `set a` (ERROR) and
# `get nokey` (END), two replies to one request, the second handed to the
# next request on the connection, another client's.
NUL_LINES = [
    b"set a\x00b 0 0 9\r\nget nokey\r\n",
    b"ms a\x00b 9\r\nget nokey\r\n",
    b"delete a\x00b\r\n",
    b"get a\x00b\r\n",
    b"mg victim\x00 v\r\n",
]


@pytest.mark.parametrize("startfile", ["examples/single-pool.lua",
                                       "scripts/bench/funcgen-route.lua",
                                       "scripts/bench/lua-route.lua"])
def test_a_nul_byte_cannot_put_a_shared_backend_connection_out_of_step(
        backends, memroute_factory, startfile):
    """A request whose line holds a NUL byte is refused with `CLIENT_ERROR
    bad command line format`, not sent, through a pool, a funcgen and a
    classic route alike; the next request on the same backend connection
    (one worker, so one connection: the same client's or another's) gets its
    own reply, and the backend is not counted as failing. Before, the `set`
    above went out whole and the get of a stored key behind it read the
    extra `END`: a miss."""
    (b,) = backends(1)
    mr = memroute_factory("--config", str(REPO_ROOT / startfile), "--config-arg", b.addr,
                          "-t", "1")
    with mr.client() as victim:
        assert victim.request(b"set victim 0 0 5\r\nhello\r\n") == b"STORED\r\n"
        for line in NUL_LINES:
            with mr.client() as sender:
                # The get goes out right behind the line, on the same
                # backend connection, as another client's would.
                sender.send(line + b"get victim\r\n")
                got = sender.read_available(0.3)
            for _ in range(3):
                assert victim.request(b"get victim\r\n", b"END\r\n") == \
                    b"VALUE victim 0 5\r\nhello\r\nEND\r\n", line
            assert got == b"CLIENT_ERROR bad command line format\r\n" \
                b"VALUE victim 0 5\r\nhello\r\nEND\r\n", line
        seen = per_backend(stats_dict(victim, b"backends"))["b1"]
        victim.assert_alive()
    assert seen["failures"] == "0" and seen["marked_bad"] == "0", seen
    # Nothing of those lines reached the backend.
    with RawClient(b.host, b.port, 5) as direct:
        assert direct.request(b"get a\r\n") == b"END\r\n"
        assert direct.request(b"get victim\r\n", b"END\r\n") == \
            b"VALUE victim 0 5\r\nhello\r\nEND\r\n"

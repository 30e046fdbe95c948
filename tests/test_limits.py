"""Limits that keep one client from taking memroute down (issue 16).

* A multi-key get of one large value asked many times: memroute streams the
  reply (embedded cache) or sends the keys a window at a time within the
  client's reply budget (routed), so its memory stays bounded. Before, it
  built the whole reply in memory: `get big` x 4,000 of a 1 MB value asked
  for 4 GB and aborted the process.
* A backend value over the item size limit is dropped as it streams in,
  its request alone gets memcached's error, and the backend connection
  stays in step for everyone else.
* `-o idle_timeout=N` closes clients that send no request for N seconds,
  even if they drip bytes that never make one.

memroute runs with default flags here (no -v): these are the limits an
operator gets out of the box.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from conftest import EXAMPLES_DIR

VALUE_SIZE = 1000 * 1000  # fits memcached's and memroute's default -I 1m
KEY_REPEATS = 400  # a 400 MB reply if held whole
# Peak resident memory allowed: the 64 MiB default reply budget, buffers,
# the embedded cache's copy of the value and the runtime, with room to
# spare; holding the reply whole would need over 400 MB.
PEAK_RSS_LIMIT = 200 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM for pid %d" % pid)


def set_value(client, key: bytes, value: bytes) -> None:
    client.send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    assert client.read_line(timeout=30) == b"STORED\r\n"


def read_multi_get(client, keys: int, value_size: int) -> int:
    """Reads a multi-get reply of `keys` values of `value_size` bytes,
    slowly at first (a client that does not keep up), and returns how many
    values came back."""
    header = re.compile(rb"VALUE big 0 (\d+)\r\n")
    got = 0
    time.sleep(1.0)  # let memroute face a client that is not reading
    while True:
        line = client.read_line(timeout=30)
        if line == b"END\r\n":
            return got
        m = header.fullmatch(line)
        assert m, line[:80]
        assert int(m.group(1)) == value_size
        data = client.read_exact(value_size + 2, timeout=30)
        assert data.endswith(b"\r\n")
        got += 1


def big_get(client) -> bytes:
    return b"get" + b" big" * KEY_REPEATS + b"\r\n"


def test_embedded_multi_get_of_a_big_value_streams(memroute_factory):
    mr = memroute_factory("-t", "1")
    value = b"v" * VALUE_SIZE
    with mr.client(timeout=30) as c:
        set_value(c, b"big", value)
        c.send(big_get(c))
        assert read_multi_get(c, KEY_REPEATS, VALUE_SIZE) == KEY_REPEATS
        c.assert_alive()
    assert peak_rss(mr.pid) < PEAK_RSS_LIMIT, "peak RSS %d" % peak_rss(mr.pid)


def lua_route_startfile(startfile_dir, backend) -> str:
    path = startfile_dir / "lua-route.lua"
    path.write_text(
        """
function mcp_config_pools()
    return mcp.pool({ mcp.backend("b1", "%s", %d) })
end
function mcp_config_routes(pool)
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return pool(r) end)
end
""" % (backend.host, backend.port)
    )
    return str(path)


@pytest.mark.parametrize("route", ["pool", "lua"])
def test_routed_multi_get_of_a_big_value_stays_within_the_budget(
        backends, memroute_factory, startfile_dir, route):
    (b,) = backends(1)
    if route == "pool":
        mr = memroute_factory("-t", "1", "--config", str(EXAMPLES_DIR / "single-pool.lua"),
                              "--config-arg", b.addr)
    else:
        mr = memroute_factory("-t", "1", "--config", lua_route_startfile(startfile_dir, b))
    value = b"v" * VALUE_SIZE
    with mr.client(timeout=30) as c:
        set_value(c, b"big", value)
        c.send(big_get(c))
        assert read_multi_get(c, KEY_REPEATS, VALUE_SIZE) == KEY_REPEATS
        # Another client was served all along on the same backend.
        with mr.client() as other:
            assert other.request(b"get nothing\r\n", b"END\r\n") == b"END\r\n"
    assert peak_rss(mr.pid) < PEAK_RSS_LIMIT, "peak RSS %d" % peak_rss(mr.pid)


def backend_stat(mr, field: str) -> int:
    with mr.client() as c:
        c.send(b"stats backends\r\n")
        stats = c.read_until(b"END\r\n")
    m = re.search(rb"STAT \S+:" + field.encode() + rb" (\d+)", stats)
    assert m, stats
    return int(m.group(1))


def test_a_backend_value_over_the_item_limit_is_dropped_not_buffered(
        backends, memroute_factory):
    # The backend holds items up to 4 MB; memroute's limit is 1 MB.
    (b,) = backends(1, "-I", "4m")
    big = b"x" * (3 * 1024 * 1024)
    with b.client(timeout=10) as direct:
        set_value(direct, b"huge", big)
        set_value(direct, b"small", b"ok")
    mr = memroute_factory("-t", "1", "--config", str(EXAMPLES_DIR / "single-pool.lua"),
                          "--config-arg", b.addr)
    with mr.client(timeout=10) as c:
        # Pipelined with gets around it on the same backend connection.
        c.send(b"get small\r\nget huge\r\nget small\r\nget small huge small\r\n")
        assert c.read_until(b"END\r\n") == b"VALUE small 0 2\r\nok\r\nEND\r\n"
        assert c.read_line() == b"SERVER_ERROR out of memory writing get response\r\n"
        assert c.read_until(b"END\r\n") == b"VALUE small 0 2\r\nok\r\nEND\r\n"
        # In a multi-key get the key reads as a miss, as a failed key does.
        assert c.read_until(b"END\r\n") == (
            b"VALUE small 0 2\r\nok\r\nVALUE small 0 2\r\nok\r\nEND\r\n")
        c.send(b"mg huge v\r\n")
        assert c.read_line() == b"SERVER_ERROR out of memory writing get response\r\n"
    assert backend_stat(mr, "oversize_values") == 3
    assert backend_stat(mr, "failures") == 0, "the connection stayed in step"
    assert backend_stat(mr, "connects") == 1


def test_idle_clients_are_closed(memroute_factory):
    mr = memroute_factory("-o", "idle_timeout=1")
    idle = mr.client(timeout=5)
    dripping = mr.client(timeout=5)
    busy = mr.client(timeout=5)
    # The dripping client never completes a request: its bytes do not count.
    stop = threading.Event()

    def drip():
        for ch in b"get somethin":
            if stop.is_set():
                return
            try:
                dripping.send(bytes([ch]))
            except OSError:
                return
            time.sleep(0.25)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    start = time.monotonic()
    # The busy client keeps sending requests and stays.
    while time.monotonic() - start < 2.5:
        assert busy.request(b"version\r\n").startswith(b"VERSION ")
        time.sleep(0.2)
    assert idle.wait_closed(timeout=3) == b""
    dripping.wait_closed(timeout=3)
    stop.set()
    t.join(5)
    elapsed = time.monotonic() - start
    assert elapsed < 6
    busy.assert_alive()
    stats = busy.request(b"stats\r\n", b"END\r\n")
    m = re.search(rb"STAT idle_kicks (\d+)", stats)
    assert m and int(m.group(1)) == 2, stats
    for c in (idle, dripping, busy):
        c.close()


def test_idle_kicks_is_absent_without_an_idle_timeout(server):
    # memcached shows idle_kicks only when idle_timeout is set.
    with server.client() as c:
        stats = c.request(b"stats\r\n", b"END\r\n")
    assert b"idle_kicks" not in stats

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
    """The process's peak resident set size (VmHWM), in bytes; also
    printed, for docs/reliability.md (pytest -s shows it)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
                print("peak RSS of pid %d: %.1f MB" % (pid, peak / 1e6))
                return peak
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


def funcgen_route_startfile(startfile_dir, backend) -> str:
    path = startfile_dir / "funcgen-route.lua"
    path.write_text(
        """
function mcp_config_pools()
    return mcp.pool({ mcp.backend("b1", "%s", %d) })
end
function mcp_config_routes(pool)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(pool)
    fgen:ready({ n = "big", f = function(rctx)
        return function(r) return rctx:enqueue_and_wait(r, h) end
    end })
    mcp.attach(mcp.CMD_ANY_STORAGE, fgen)
end
""" % (backend.host, backend.port)
    )
    return str(path)


@pytest.mark.parametrize("route", ["pool", "lua", "funcgen"])
def test_routed_multi_get_of_a_big_value_stays_within_the_budget(
        backends, memroute_factory, startfile_dir, route):
    """The keys go a window at a time, as many as the client's reply budget
    holds, whatever the route (one line per backend for a pool, a request
    per key for a Lua route or a funcgen's slots)."""
    (b,) = backends(1)
    if route == "pool":
        mr = memroute_factory("-t", "1", "--config", str(EXAMPLES_DIR / "single-pool.lua"),
                              "--config-arg", b.addr)
    elif route == "lua":
        mr = memroute_factory("-t", "1", "--config", lua_route_startfile(startfile_dir, b))
    else:
        mr = memroute_factory("-t", "1", "--config", funcgen_route_startfile(startfile_dir, b))
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


# --------------------------------------------------------------------------
# The proxy's limits: mcp.backend_depth_limit, mcp.active_req_limit,
# mcp.buffer_memory_limit (memcached's names, replies and stats)
# --------------------------------------------------------------------------


class HoldingBackend:
    """A scripted backend on loopback: it answers `version` (memroute's
    connection check), then either holds every request unanswered or
    answers each `mg` with `EN` once told to. Used to keep requests in
    flight; everything else in these tests is real."""

    def __init__(self, answer: bool):
        self.answer = answer
        self.release = threading.Event()
        self.seen = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _serve(self, conn):
        buf = b""
        conn.settimeout(0.2)
        pending = 0
        while not self.stop.is_set():
            if self.answer and self.release.is_set() and pending:
                conn.sendall(b"EN\r\n" * pending)
                pending = 0
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"version"):
                    conn.sendall(b"VERSION 1.6.99-holding\r\n")
                else:
                    self.seen += 1
                    pending += 1

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_and_close, args=(conn,), daemon=True).start()

    def _serve_and_close(self, conn):
        with conn:
            self._serve(conn)

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(2)


@pytest.fixture
def holding_backend():
    made = []

    def make(answer: bool = False) -> HoldingBackend:
        b = HoldingBackend(answer)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def limits_startfile(startfile_dir, port: int, setting: str) -> str:
    path = startfile_dir / "limits.lua"
    path.write_text(
        """
function mcp_config_pools()
    %s
    return mcp.pool({ mcp.backend({ label = "b1", host = "127.0.0.1", port = %d,
                                     readtimeout = 30 }) })
end
function mcp_config_routes(pool)
    mcp.attach(mcp.CMD_ANY_STORAGE, pool)
end
""" % (setting, port)
    )
    return str(path)


def general_stat(client, name: str) -> int:
    stats = client.request(b"stats\r\n", b"END\r\n")
    m = re.search(rb"STAT " + name.encode() + rb" (\d+)", stats)
    assert m, stats
    return int(m.group(1))


def test_backend_depth_limit_fails_fast(holding_backend, memroute_factory, startfile_dir):
    be = holding_backend()
    mr = memroute_factory("-t", "1", "--config",
                          limits_startfile(startfile_dir, be.port, "mcp.backend_depth_limit(3)"))
    holder = mr.client(timeout=5)
    holder.send(b"mg foo s t v\r\n" * 3)
    wait_until(lambda: be.seen >= 3, "the backend to hold 3 requests")
    with mr.client(timeout=5) as c:
        c.send(b"mg foo s t v\r\n")
        assert c.read_line() == b"SERVER_ERROR backend failure\r\n"
        assert general_stat(c, "proxy_request_failed_depth") == 1
    assert backend_stat(mr, "depth_refused") == 1
    assert backend_stat(mr, "failures") == 0, "a refusal is not a backend failure"
    holder.close()
    be.close()  # the held requests fail, so memroute can stop


def test_active_req_limit_refuses_past_the_limit(holding_backend, memroute_factory,
                                                 startfile_dir):
    be = holding_backend(answer=True)
    mr = memroute_factory("-t", "1", "--config",
                          limits_startfile(startfile_dir, be.port, "mcp.active_req_limit(4)"))
    with mr.client(timeout=5) as c:
        c.send(b"".join(b"mg /test/%s\r\n" % k for k in (b"a", b"b", b"c", b"d", b"e", b"f")))
        wait_until(lambda: be.seen >= 4, "the backend to get 4 requests")
        time.sleep(0.25)
        assert be.seen == 4, "only the first four went out"
        be.release.set()
        for _ in range(4):
            assert c.read_line() == b"EN\r\n"
        for _ in range(2):
            assert c.read_line() == b"SERVER_ERROR active request limit reached\r\n"
        assert general_stat(c, "proxy_request_failed_active") == 2
        assert general_stat(c, "proxy_req_active") == 0


def test_buffer_memory_limit_refuses_when_the_worker_holds_too_much(
        holding_backend, memroute_factory, startfile_dir):
    be = holding_backend()
    # 1,500 KB for the one worker; each routed get reserves about 1 MB (-I).
    mr = memroute_factory("-t", "1", "--config",
                          limits_startfile(startfile_dir, be.port,
                                           "mcp.buffer_memory_limit(1500)"))
    holder = mr.client(timeout=5)
    holder.send(b"get held\r\n")
    wait_until(lambda: be.seen >= 1, "the backend to hold a get")
    with mr.client(timeout=5) as c:
        c.send(b"get other\r\n")
        assert c.read_line() == b"SERVER_ERROR out of memory\r\n"
        # Requests that hold no reply room still go through the limit.
        stats = c.request(b"stats proxy\r\n", b"END\r\n")
        m = re.search(rb"STAT buffer_memory_used (\d+)", stats)
        assert m and int(m.group(1)) >= 1024 * 1024, stats
        assert general_stat(c, "proxy_request_failed_bufmem") == 1
    holder.close()
    be.close()  # the held request fails, so memroute can stop


def test_limits_are_checked_in_the_config_vm(memroute_factory, startfile_dir, tmp_path):
    path = startfile_dir / "bad.lua"
    path.write_text("""
function mcp_config_pools() mcp.active_req_limit(-1) return {} end
function mcp_config_routes(p) end
""")
    with pytest.raises(Exception) as e:
        memroute_factory("--config", str(path))
    assert "mcp.active_req_limit: the limit must be an integer >= 0" in str(e.value)


def wait_until(cond, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)

"""Proxy mode under trouble, with clients hammering it the whole time:

* a backend killed under load: its keys get `SERVER_ERROR backend failure`
  quickly (no hang) while it is down, the other backend's keys are not
  affected, and everything recovers by itself once memcached is back on the
  same port;
* SIGHUP reloads under load fail no request, and the new configuration is
  active afterwards; a broken startfile on reload keeps the old one.

Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import (Closed, RawClient, ReadTimeout, mc_get, stats_dict, wait_until,
                      write_startfile)

BACKEND_FAILURE = b"SERVER_ERROR backend failure\r\n"


class Load:
    """Client threads doing `set k v` + `get k` in a loop through memroute,
    classifying every reply. ``keys`` is a list of (key, group); each
    thread owns the keys at its index modulo the thread count, so no other
    thread overwrites a value between its set and its get."""

    def __init__(self, host, port, keys, threads=4, timeout=3.0):
        self.host, self.port = host, port
        self.keys = keys
        self.timeout = timeout
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.events = []  # (t, group, kind, latency)
        self.errors = []  # unexpected replies: never allowed
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(10)
        assert not any(t.is_alive() for t in self.threads), "load threads hung"

    def _record(self, group, kind, latency):
        with self.lock:
            self.events.append((time.monotonic(), group, kind, latency))

    def _error(self, msg):
        with self.lock:
            self.errors.append(msg)

    def _run(self, n):
        c = None
        i = 0
        run = uuid.uuid4().hex[:4]
        mine = self.keys[n::len(self.threads)]
        assert mine, "fewer keys than threads"
        while not self.stop_flag.is_set():
            key, group = mine[i % len(mine)]
            i += 1
            value = b"%s-%d-%d" % (run.encode(), n, i)
            try:
                if c is None:
                    c = RawClient(self.host, self.port, self.timeout)
                t0 = time.monotonic()
                c.send(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))
                stored = c.read_line()
                c.send(b"get %s\r\n" % key.encode())
                first = c.read_line()
                got = first
                if first.startswith(b"VALUE "):
                    got += c.read_until(b"END\r\n")
                latency = time.monotonic() - t0
            except (ReadTimeout, Closed, OSError) as e:
                self._error("thread %d key %s: %r" % (n, key, e))
                self._record(group, "hang", self.timeout)
                if c is not None:
                    c.close()
                c = None
                continue
            want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key.encode(), len(value), value)
            if stored == b"STORED\r\n" and got == want:
                self._record(group, "ok", latency)
            elif stored == BACKEND_FAILURE and got in (BACKEND_FAILURE, b"END\r\n"):
                self._record(group, "backend_failure", latency)
            elif stored == b"STORED\r\n" and got in (BACKEND_FAILURE, b"END\r\n"):
                # the backend went away (or came back empty) between the two
                self._record(group, "backend_failure", latency)
            elif stored == BACKEND_FAILURE and got == want:
                # cannot happen: nobody else writes this value
                self._error("thread %d key %s: failed set, then read its value" % (n, key))
            else:
                self._error("thread %d key %s: unexpected %r / %r" % (n, key, stored, got))
        if c is not None:
            c.close()

    def window(self, t0, t1, group=None):
        with self.lock:
            return [e for e in self.events if t0 <= e[0] < t1 and (group is None or e[1] == group)]


def kill_by_pid(handle):
    """SIGKILL a server started by the harness (by its pid) and reap it."""
    handle.proc.send_signal(signal.SIGKILL)
    handle.proc.wait(5)
    handle.stop(expect_clean=False)  # bookkeeping only: it is gone


FAILOVER_STARTFILE = """
function mcp_config_pools()
    local bs = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(bs, mcp.backend{ label = "b" .. (#bs + 1), host = host,
            port = tonumber(port), connecttimeout = 0.5, readtimeout = 1,
            retrywaittime = 0.2, failurelimit = 2 })
    end
    return { main = mcp.pool(bs) }
end

function mcp_config_routes(p)
    local main = p.main
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return main(r) end)
end
"""


def test_backend_killed_under_load_fails_fast_and_recovers(backends, memcached_factory,
                                                           memroute_factory, startfile_dir):
    b1, b2 = backends(2)
    path = write_startfile(startfile_dir, "failover.lua", FAILOVER_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", "%s,%s" % (b1.addr, b2.addr),
                          "-t", "2")
    # find keys on each backend
    keys = []
    with mr.client() as c:
        for i in range(40):
            k = "kill:%d" % i
            assert c.request(b"set %s 0 0 1\r\nx\r\n" % k.encode()) == b"STORED\r\n"
            keys.append((k, "b1" if mc_get(b1, k) is not None else "b2"))
    assert {g for _, g in keys} == {"b1", "b2"}

    with Load(mr.host, mr.port, keys, threads=4) as load:
        time.sleep(0.5)
        t_kill = time.monotonic()
        kill_by_pid(b2)
        time.sleep(1.5)
        t_restart = time.monotonic()
        b2_again = memcached_factory(port=b2.port)
        t_back = time.monotonic()

        # recovers by itself: b2's keys work again within a bounded time
        def recovered():
            now = time.monotonic()
            recent = load.window(now - 0.3, now, "b2")
            return len(recent) >= 5 and all(e[2] == "ok" for e in recent)
        wait_until(recovered, 8, what="b2's keys to work again after its restart")
        t_recovered = time.monotonic()
        time.sleep(0.5)
        t_end = time.monotonic()
    assert not load.errors, load.errors[:10]

    before = load.window(0, t_kill)
    assert before and all(e[2] == "ok" for e in before)
    # while down (after a short settling time), b2's keys fail fast
    down = load.window(t_kill + 0.2, t_restart, "b2")
    assert len(down) >= 10, "too few requests while b2 was down: %d" % len(down)
    assert all(e[2] == "backend_failure" for e in down), {e[2] for e in down}
    assert max(e[3] for e in down) < 1.5, "a request waited %.2fs" % max(e[3] for e in down)
    # b1's keys are not affected at all
    b1_events = load.window(t_kill, t_end, "b1")
    assert b1_events and all(e[2] == "ok" for e in b1_events)
    # after recovery everything works
    assert all(e[2] == "ok" for e in load.window(t_recovered, t_end))
    assert t_recovered - t_back < 5
    # and the restarted memcached really holds b2's keys again
    assert any(mc_get(b2_again, k) is not None for k, g in keys if g == "b2")


# --------------------------------------------------------------------------
# reload under load
# --------------------------------------------------------------------------

RELOAD_TEMPLATE = """
-- version VERSION
function mcp_config_pools()
    local bs = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(bs, mcp.backend("b" .. (#bs + 1), host, tonumber(port)))
    end
    local extra = nil
    if EXTRA then
        -- the last backend becomes a pool of its own
        extra = mcp.pool({ table.remove(bs) })
    else
        table.remove(bs)
    end
    mcp.add_stat(1, "reload_version_VERSION")
    return { main = mcp.pool(bs), extra = extra, version = VERSION }
end

function mcp_config_routes(p)
    local main, extra = p.main, p.extra
    local version = "SERVER_ERROR version=" .. p.version .. "\\r\\n"
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        local key = r:key()
        if key == "version" then
            return version
        end
        if extra and string.sub(key, 1, 7) == "/extra/" then
            return extra(r)
        end
        return main(r)
    end)
end
"""


def write_version(path: Path, version: int, extra: bool = False) -> None:
    text = RELOAD_TEMPLATE.replace("VERSION", str(version)).replace(
        "EXTRA", "true" if extra else "false")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # the reload never sees a half-written file


def version_of(mr) -> bytes:
    with mr.client() as c:
        return c.request(b"get version\r\n")


def test_reload_under_load_fails_no_request(backends, memroute_factory, startfile_dir):
    b1, b2, b3 = backends(3)
    path = startfile_dir / "reload.lua"
    write_version(path, 1)
    mr = memroute_factory("--config", str(path), "--config-arg",
                          ",".join(b.addr for b in (b1, b2, b3)), "-t", "4")
    assert version_of(mr) == b"SERVER_ERROR version=1\r\n"
    keys = [("reload:%d" % i, "main") for i in range(50)]

    with Load(mr.host, mr.port, keys, threads=6) as load:
        time.sleep(0.3)
        for v in range(2, 7):
            write_version(path, v, extra=v >= 4)
            mr.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: version_of(mr) == b"SERVER_ERROR version=%d\r\n" % v, 5,
                       what="version %d to be active" % v)
            time.sleep(0.2)
    assert not load.errors, load.errors[:10]
    kinds = {e[2] for e in load.events}
    assert kinds == {"ok"}, kinds
    assert len(load.events) > 200, "too little load: %d requests" % len(load.events)

    with mr.client() as c:
        stats = stats_dict(c, b"proxy")
        assert stats["config_reloads"] == "5", stats
        assert stats["config_reload_fails"] == "0", stats
        # the stat registered by the new configuration is the one shown
        assert "reload_version_6" in stats and "reload_version_1" not in stats
        # the pool added by a reload is used
        assert c.request(b"set /extra/k 0 0 2\r\nex\r\n") == b"STORED\r\n"
    assert mc_get(b3, "/extra/k") == b"ex"
    assert mc_get(b1, "/extra/k") is None and mc_get(b2, "/extra/k") is None


@pytest.mark.parametrize("broken", [
    "function mcp_config_pools()\n  return {\nend\n",  # syntax error
    "function mcp_config_pools() return {} end\n"
    "function mcp_config_routes(p) error('worker stage fails') end\n",
    "function mcp_config_pools() return { p = mcp.pool({}) } end\n"
    "function mcp_config_routes(p) end\n",
])
def test_reload_with_broken_startfile_keeps_old_config(broken, backends, memroute_factory,
                                                      startfile_dir):
    b1, b2 = backends(2)
    path = startfile_dir / "reload.lua"
    write_version(path, 1)
    mr = memroute_factory("--config", str(path), "--config-arg",
                          ",".join(b.addr for b in (b1, b2)), "-t", "2")
    keys = [("broken:%d" % i, "main") for i in range(20)]
    with Load(mr.host, mr.port, keys, threads=3) as load:
        time.sleep(0.2)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(broken)
        os.replace(tmp, path)
        mr.proc.send_signal(signal.SIGHUP)

        def fails():
            with mr.client() as c:
                return stats_dict(c, b"proxy").get("config_reload_fails") == "1"
        wait_until(fails, 5, what="config_reload_fails to become 1")
        time.sleep(0.3)
    assert not load.errors, load.errors[:10]
    assert {e[2] for e in load.events} == {"ok"}
    assert mr.is_running()
    assert version_of(mr) == b"SERVER_ERROR version=1\r\n"
    with mr.client() as c:
        stats = stats_dict(c, b"proxy")
        assert stats["config_reloads"] == "0"
        assert "reload_version_1" in stats  # the old config's stats stay
        assert c.request(b"set after 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert "reload failed" in mr.stderr_tail(20000)
    # fixing the file and reloading again works
    write_version(path, 2)
    mr.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: version_of(mr) == b"SERVER_ERROR version=2\r\n", 5, what="version 2")

"""Rate limiters and config-VM crons, as memcached 1.6.45's proxy has them,
against real memcached backends.

- `mcp.ratelim_tbf{limit=, fillrate=, tickrate=}` (a worker's own bucket)
  admits while it holds more tokens than asked, refuses, then refills;
- `mcp.ratelim_global_tbf{...}`, made in the config VM and passed to the
  workers like a pool, is one bucket for every worker (`-t 2`);
- routelib's `route_ratelim` sends admitted requests to its child and
  answers the others as `route_null` does (or the other way round with
  `fail_until_limit`);
- `mcp.register_cron` runs on schedule, counted in
  `proxy_config_cron_runs` / `proxy_config_cron_fails` (a failing cron is
  logged and does not stop the server); crons follow reloads;
- `mcp.schedule_config_reload()` reloads like SIGHUP does, and the config
  VM's globals live on across the reload, as in memcached.

Every wait is bounded; buckets that must not refill during a test use
`fillrate = 0`.
"""

from __future__ import annotations

import signal
import time

import pytest

from conftest import (mc_get, mc_set, run_memroute_expect_failure, stats_dict, wait_until,
                      write_startfile)


def get_value(c, key: bytes):
    """`get key`: the value, None on a miss, or the SERVER_ERROR line."""
    c.send(b"get " + key + b"\r\n")
    line = c.read_line()
    if line == b"END\r\n":
        return None
    if line.startswith(b"SERVER_ERROR"):
        return line.strip().decode()
    assert line.startswith(b"VALUE "), line
    size = int(line.split()[3])
    data = c.read_exact(size + 2)
    assert c.read_line() == b"END\r\n"
    return data[:-2]


# A get route per key prefix: "x" through a bucket that never refills,
# "y" through one that refills a token every 300 ms.
TBF_STARTFILE = """
function mcp_config_pools()
    return mcp.pool({ mcp.backend("a", "127.0.0.1", %(port)d) })
end

function mcp_config_routes(pool)
    local fixed = mcp.ratelim_tbf({ limit = 5, fillrate = 0, tickrate = 1000 })
    local refilling = mcp.ratelim_tbf({ limit = 3, fillrate = 1, tickrate = 300 })
    mcp.attach(mcp.CMD_GET, function(r)
        local lim = fixed
        if string.sub(r:key(), 1, 1) == "y" then
            lim = refilling
        end
        if lim(1) then
            return pool(r)
        end
        return "SERVER_ERROR slow down\\r\\n"
    end)
end
"""


def test_tbf_admits_refuses_and_refills(backends, memroute_factory, startfile_dir):
    (a,) = backends(1)
    mc_set(a, "x1", b"v")
    mc_set(a, "y1", b"w")
    path = write_startfile(startfile_dir, "tbf.lua", TBF_STARTFILE % {"port": a.port})
    mr = memroute_factory("--config", str(path), "-t", "1")
    with mr.client() as c:
        # 5 tokens admit 4 takes of 1 (memcached's rule: more tokens than
        # the take), then refuse; the route never reached the backend then.
        got = [get_value(c, b"x1") for _ in range(8)]
        assert got == [b"v"] * 4 + ["SERVER_ERROR slow down"] * 4
        # A refilling bucket: drained, refused, then admits again.
        drained = [get_value(c, b"y1") for _ in range(6)]
        assert drained[0] == b"w" and "SERVER_ERROR slow down" in drained
        wait_until(lambda: get_value(c, b"y1") == b"w", 3, interval=0.1,
                   what="the bucket to refill")
        # The fixed bucket stays empty.
        assert get_value(c, b"x1") == "SERVER_ERROR slow down"


GLOBAL_STARTFILE = """
function mcp_config_pools()
    return {
        pool = mcp.pool({ mcp.backend("a", "127.0.0.1", %(port)d) }),
        shared = mcp.ratelim_global_tbf({ limit = 11, fillrate = 0, tickrate = 1000 }),
    }
end

function mcp_config_routes(c)
    local own = mcp.ratelim_tbf({ limit = 11, fillrate = 0, tickrate = 1000 })
    local function limited(lim)
        return function(r)
            if lim(1) then
                return c.pool(r)
            end
            return "SERVER_ERROR slow down\\r\\n"
        end
    end
    mcp.attach(mcp.CMD_GET, limited(c.shared))
    mcp.attach(mcp.CMD_GETS, limited(own))
end
"""


def test_global_tbf_is_one_bucket_for_every_worker(backends, memroute_factory, startfile_dir):
    (a,) = backends(1)
    mc_set(a, "k", b"v")
    path = write_startfile(startfile_dir, "global.lua", GLOBAL_STARTFILE % {"port": a.port})
    mr = memroute_factory("--config", str(path), "-t", "2")

    def admitted(command: bytes) -> int:
        # Four connections: accepted round-robin, two on each worker.
        clients = [mr.client() for _ in range(4)]
        try:
            count = 0
            for _ in range(8):
                for c in clients:
                    c.send(command + b" k\r\n")
                    line = c.read_line()
                    if line.startswith(b"VALUE"):
                        c.read_line()
                        assert c.read_line() == b"END\r\n"
                        count += 1
                    else:
                        assert line == b"SERVER_ERROR slow down\r\n", line
            return count
        finally:
            for c in clients:
                c.close()

    # Per-worker buckets of 11 admit 10 each on both workers ...
    assert admitted(b"gets") == 20
    # ... the global one admits 10 in all.
    assert admitted(b"get") == 10


@pytest.mark.parametrize("config_pools, config_routes, message", [
    ("", "mcp.ratelim_tbf({ limit = 10, fillrate = 1, tickrate = 0 })", "tickrate"),
    ("", "mcp.ratelim_tbf({ limit = -1, tickrate = 10 })",
     "mcp.ratelim_tbf: arguments must be unsigned 32 bit integer"),
    ("", "mcp.ratelim_tbf({ limit = 4294967295, tickrate = 10 })",
     "arguments must be unsigned 32 bit integer"),
    ("", "mcp.ratelim_tbf({ limit = 5, fill = 1, tickrate = 10 })", "unknown option 'fill'"),
    ("", "mcp.ratelim_tbf(5)", "expected a table"),
    ("", "mcp.ratelim_global_tbf({ limit = 5, tickrate = 10 })",
     "mcp.ratelim_global_tbf is only available in mcp_config_pools"),
    ("mcp.ratelim_tbf({ limit = 5, tickrate = 10 })", "",
     "mcp.ratelim_tbf is only available in mcp_config_routes"),
    ("mcp.ratelim_global_tbf({ limit = 5, tickrate = 0 })", "", "tickrate"),
    ("", "mcp.register_cron('x', { every = 1, func = function() end })",
     "mcp.register_cron is only available in mcp_config_pools"),
    ("mcp.register_cron('x', { every = 0, func = function() end })", "",
     "proxy cron entry 'every' must be > 0"),
    ("mcp.register_cron('x', { every = 1 })", "", "proxy cron entry missing 'func' field"),
    ("mcp.register_cron('x', { func = function() end })", "",
     "proxy cron entry missing 'every' field"),
])
def test_bad_limiters_and_crons_stop_the_start(startfile_dir, config_pools, config_routes,
                                               message):
    path = write_startfile(startfile_dir, "bad.lua", """
function mcp_config_pools()
    %s
    return {}
end
function mcp_config_routes(c)
    %s
end
""" % (config_pools, config_routes))
    proc = run_memroute_expect_failure(["--config", str(path)])
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_route_ratelim_in_a_routelib_file(backends, memroute_factory, startfile_dir):
    (a,) = backends(1)
    for key in ("lim/k", "inv/k", "glob/k"):
        mc_set(a, key, b"v")
    path = write_startfile(startfile_dir, "routes.lua", """
pools{ main = { backends = { "%s" } } }
routes{
    map = {
        lim = route_ratelim{ child = "main", limit = 4, fillrate = 0, tickrate = 1000 },
        inv = route_ratelim{ child = "main", limit = 3, fillrate = 0, tickrate = 1000,
                             fail_until_limit = true },
        glob = route_ratelim{ child = "main", limit = 5, fillrate = 0, tickrate = 1000,
                              global = true },
    },
    default = route_direct{ child = "main" },
}
""" % a.addr)
    mr = memroute_factory("--routes", str(path), "-t", "2")
    with mr.client() as c:
        # 3 admitted, then route_null's answer: a miss, nothing sent.
        assert [get_value(c, b"lim/k") for _ in range(5)] == [b"v"] * 3 + [None] * 2
        # A refused set is NOT_STORED and never reaches the backend.
        assert c.request(b"set lim/new 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        assert c.request(b"mg lim/k v\r\n") == b"EN\r\n"
        assert mc_get(a, "lim/new") is None
        # fail_until_limit: the null answer while tokens last, then the child.
        assert [get_value(c, b"inv/k") for _ in range(4)] == [None, None, b"v", b"v"]
    # global = true: one bucket of 5 for both workers (connections are
    # given to the workers in turn).
    clients = [mr.client() for _ in range(4)]
    try:
        hits = sum(get_value(c, b"glob/k") == b"v" for _ in range(3) for c in clients)
    finally:
        for c in clients:
            c.close()
    assert hits == 4


@pytest.mark.parametrize("handler, message", [
    ('route_ratelim{ child = "main", limit = 4, fillrate = 1 }', "tickrate is required"),
    ('route_ratelim{ child = "main", limit = 4, fillrate = 1, tickrate = 0 }',
     "tickrate must be at least 1"),
    ('route_ratelim{ child = "main", limit = 1.5, fillrate = 1, tickrate = 10 }',
     "limit must be a whole number"),
    ('route_ratelim{ child = "main", limit = 4, fillrate = 1, tickrate = 10, burst = 2 }',
     "unknown option 'burst'"),
])
def test_route_ratelim_mistakes_name_the_line(startfile_dir, handler, message):
    path = write_startfile(startfile_dir, "routes.lua", """
pools{ main = { backends = { "127.0.0.1:11211" } } }
routes{
    default = %s,
}
""" % handler)
    proc = run_memroute_expect_failure(["--routes", str(path)])
    err = proc.stderr
    assert proc.returncode != 0 and message in err and "routes.lua:3" in err, err


CRON_STARTFILE = """
function mcp_config_pools()
    mcp.register_cron("tick", { every = 1, func = function() ticks = (ticks or 0) + 1 end })
    mcp.register_cron("fail", { every = 1, func = function() error("cron boom") end })
    mcp.register_cron("once", { every = 1, rerun = false, func = function() end })
    return {}
end

function mcp_config_routes(c)
    mcp.attach(mcp.CMD_GET, function(r) return "SERVER_ERROR routed\\r\\n" end)
end
"""


def cron_counts(c):
    s = stats_dict(c)
    return int(s["proxy_config_cron_runs"]), int(s["proxy_config_cron_fails"])


def test_crons_run_on_schedule_and_failures_are_counted(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "cron.lua", CRON_STARTFILE)
    started = time.monotonic()
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert cron_counts(c) == (0, 0)
        # "tick" and "fail" run every second, "once" only once: runs are
        # twice the failures plus one.
        runs, fails = wait_until(
            lambda: (lambda r, f: (r, f) if f >= 3 and r == 2 * f + 1 else None)(*cron_counts(c)),
            8, interval=0.1, what="three passes of the crons")
        assert time.monotonic() - started >= 2.5, "crons ran more often than every second"
        # The failures did not stop anything.
        assert c.request(b"get k\r\n") == b"SERVER_ERROR routed\r\n"
        proxy = stats_dict(c, b"proxy")
        assert int(proxy["config_cron_fails"]) >= fails
    assert "cron fail failed" in mr.stderr_tail() and "cron boom" in mr.stderr_tail()


def test_crons_follow_reloads(memroute_factory, startfile_dir):
    failing = """
function mcp_config_pools()
    mcp.register_cron("a", { every = 1, func = function() error("old cron") end })
    return {}
end
function mcp_config_routes(c) end
"""
    working = """
function mcp_config_pools()
    mcp.register_cron("b", { every = 1, func = function() end })
    return {}
end
function mcp_config_routes(c) end
"""
    path = write_startfile(startfile_dir, "cron.lua", failing)
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        wait_until(lambda: cron_counts(c)[1] >= 1, 5, interval=0.1, what="the old cron")
        path.write_text(working)
        mr.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: stats_dict(c, b"proxy").get("config_reloads") == "1", 5,
                   what="the reload")
        time.sleep(0.2)
        runs, fails = cron_counts(c)
        # "a" is gone, "b" runs.
        wait_until(lambda: cron_counts(c)[0] >= runs + 2, 5, interval=0.1, what="the new cron")
        assert cron_counts(c)[1] == fails
        # A reload that fails keeps the crons of the configuration in use.
        path.write_text("function mcp_config_pools( -- broken\n")
        mr.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: stats_dict(c).get("proxy_config_reload_fails") == "1", 5,
                   what="the failed reload")
        runs = cron_counts(c)[0]
        wait_until(lambda: cron_counts(c)[0] >= runs + 1, 5, interval=0.1,
                   what="the cron after a failed reload")
        assert cron_counts(c)[1] == fails


def test_schedule_config_reload_reloads_and_globals_live_on(memroute_factory, startfile_dir):
    # The cron bumps a global and asks for a reload; the reload reads the
    # global (the config VM lives on, as memcached's does) and hands it to
    # the routes. Twice: once at once, once after a delay.
    path = write_startfile(startfile_dir, "reload.lua", """
generation = generation or 0

function mcp_config_pools()
    if generation < 2 then
        mcp.register_cron("bump", { every = 1, rerun = false, func = function()
            generation = generation + 1
            if generation == 1 then
                mcp.schedule_config_reload()
            else
                mcp.schedule_config_reload(0.5)
            end
        end })
    end
    return { generation = generation }
end

function mcp_config_routes(c)
    local line = "SERVER_ERROR generation " .. c.generation .. "\\r\\n"
    mcp.attach(mcp.CMD_GET, function(r) return line end)
end
""")
    mr = memroute_factory("--config", str(path), "-t", "2")
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR generation 0\r\n"
        wait_until(lambda: c.request(b"get k\r\n") == b"SERVER_ERROR generation 2\r\n", 8,
                   interval=0.1, what="two reloads asked for by the cron")
        # memcached's count: every load begun, the first one included.
        s = stats_dict(c)
        assert s["proxy_config_reloads"] == "3" and s["proxy_config_reload_fails"] == "0"
        assert s["proxy_config_cron_runs"] == "2"
        # No cron left: no more reloads.
        time.sleep(1.5)
        assert stats_dict(c, b"proxy")["config_reloads"] == "2"

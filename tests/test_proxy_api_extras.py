"""Parts of memcached's proxy API closed for issue 13, end to end against
real memcached backends: several startfiles in one `proxy_config`,
`mcp.start_arg` in memcached's form, `mcp.server_stats`,
`mcp.await_logerrors`, `r:flag_token_int` and `res:flag_blank`."""

from __future__ import annotations

import os
import re
import signal
import uuid

import pytest

from conftest import (HOST, mc_set, run_memroute_expect_failure, stats_dict, wait_until,
                      write_startfile)
from test_proxy_api import BlackHole


TS = rb"ts=\d+\.\d{1,6} gid=\d+ "


def fresh(prefix: str) -> str:
    return "%s/%s" % (prefix, uuid.uuid4().hex[:8])


# --------------------------------------------------------------------------
# several startfiles: proxy_config=a.lua:b.lua
# --------------------------------------------------------------------------

FIRST = """
    -- Runs first, in the config VM and in every worker VM.
    order = (order or "") .. "a"
    function backend_port() return tonumber(mcp.start_arg) end
"""

SECOND = """
    order = order .. "b"
    function mcp_config_pools()
        local b = mcp.backend("b1", "127.0.0.1", backend_port())
        return { main = mcp.pool({ b }), seen = order }
    end
    function mcp_config_routes(p)
        local worker_order = order
        mcp.attach(mcp.CMD_GET, function(r)
            if r:key() == "order" then
                return "SERVER_ERROR config=" .. p.seen .. " worker=" .. worker_order
            end
            return p.main(r)
        end)
    end
"""


@pytest.mark.parametrize("spelling", ["--config", "-o", "-o-empty-parts"])
def test_several_startfiles_run_in_order_in_every_vm(spelling, startfile_dir, backends,
                                                      memroute_factory):
    a = write_startfile(startfile_dir, "a.lua", FIRST)
    b = write_startfile(startfile_dir, "b.lua", SECOND)
    (mc,) = backends(1)
    if spelling == "--config":
        args = ["--config", "%s:%s" % (a, b), "--config-arg", str(mc.port)]
    elif spelling == "-o":
        args = ["-o", "proxy_config=%s:%s,proxy_arg=%d" % (a, b, mc.port)]
    else:
        # memcached splits with strtok: empty parts are skipped.
        args = ["-o", "proxy_config=:%s::%s:,proxy_arg=%d" % (a, b, mc.port)]
    mr = memroute_factory(*args, "-t", "2")
    k = fresh("several")
    mc_set(mc, k, b"v1")
    with mr.client() as c:
        assert c.request(b"get order\r\n") == b"SERVER_ERROR config=ab worker=ab\r\n"
        assert c.request(b"get %s\r\n" % k.encode(), b"END\r\n") == \
            b"VALUE %s 0 2\r\nv1\r\nEND\r\n" % k.encode()


def test_error_in_a_later_startfile_names_that_file_and_line(startfile_dir):
    a = write_startfile(startfile_dir, "a.lua", FIRST)
    b = write_startfile(startfile_dir, "bad.lua", """
        order = order .. "b"
        error("boom in the second file")
    """)
    proc = run_memroute_expect_failure(["--config", "%s:%s" % (a, b)])
    assert proc.returncode != 0
    assert re.search(r"bad\.lua:2:.*boom in the second file", proc.stderr), proc.stderr


def test_missing_later_startfile_is_named(startfile_dir):
    a = write_startfile(startfile_dir, "a.lua", FIRST)
    missing = startfile_dir / "nope.lua"
    proc = run_memroute_expect_failure(["-o", "proxy_config=%s:%s" % (a, missing)])
    assert proc.returncode != 0
    assert "nope.lua" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------
# mcp.start_arg
# --------------------------------------------------------------------------

SHOW_ARG = """
    local function show(v)
        if type(v) ~= "table" then return type(v) .. ":" .. tostring(v) end
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = k end
        table.sort(keys)
        local out = {}
        for _, k in ipairs(keys) do
            out[#out + 1] = k .. "=" .. type(v[k]) .. ":" .. tostring(v[k])
        end
        return "table:" .. table.concat(out, ",")
    end
    function mcp_config_pools() return { seen = show(mcp.start_arg) } end
    function mcp_config_routes(p)
        mcp.attach(mcp.CMD_GET, function(r)
            return "SERVER_ERROR config=" .. p.seen .. " worker=" .. show(mcp.start_arg)
        end)
    end
"""


@pytest.mark.parametrize("args, shown", [
    # No argument: false, as memcached gives it.
    ([], "boolean:false"),
    # memcached's spelling: a string without ":", else a table.
    (["-o", "proxy_arg=plain_word"], "string:plain_word"),
    (["-o", "proxy_arg=a_b:c_d"], "table:a=string:b,c=string:d"),
    # A lone word maps to true; runs of ":" and "_" count as one; a value
    # ends at the next "_"; a later part wins.
    (["-o", "proxy_arg=solo:x_y_z::__p__q:a_1:a_2"],
     "table:a=string:2,p=string:q,solo=boolean:true,x=string:y"),
    # memroute's --config-arg gives the string as it is.
    (["--config-arg", "a_b:c_d"], "string:a_b:c_d"),
    (["--config-arg", "127.0.0.1:11211,127.0.0.1:11212"],
     "string:127.0.0.1:11211,127.0.0.1:11212"),
])
def test_start_arg_forms(args, shown, startfile_dir, memroute_factory):
    path = write_startfile(startfile_dir, "arg.lua", SHOW_ARG)
    if args and args[0] == "-o":
        argv = ["-o", "proxy_config=%s,%s" % (path, args[1])]
    else:
        argv = ["--config", str(path)] + args
    mr = memroute_factory(*argv)
    with mr.client() as c:
        assert c.request(b"get k\r\n") == \
            ("SERVER_ERROR config=%s worker=%s\r\n" % (shown, shown)).encode()


def test_start_arg_part_without_a_name_is_refused(startfile_dir):
    path = write_startfile(startfile_dir, "arg.lua", SHOW_ARG)
    proc = run_memroute_expect_failure(["-o", "proxy_config=%s,proxy_arg=a_b:___" % path])
    assert proc.returncode != 0
    assert "proxy_arg=a_b:___" in proc.stderr and "has no name" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------
# mcp.server_stats
# --------------------------------------------------------------------------

SERVER_STATS = """
    function mcp_config_pools()
        loads = (loads or 0) + 1
        local s = mcp.server_stats()
        local settings = mcp.server_stats("settings")
        local proxy = mcp.server_stats("proxy")
        local bogus_ok, bogus = pcall(mcp.server_stats, "bogus")
        local reset_ok, reset = pcall(mcp.server_stats, "reset")
        local unknown = "unknown subcommand passed to server_stats"
        return {
            line = string.format(
                "pid=%s version=%s threads=%s maxconns=%s proxy=%s conns=%s loads=%d",
                s.pid, s.version, s.threads, settings.maxconns, type(proxy.config_reloads),
                s.total_connections, loads),
            refused = string.format("%s,%s,%s,%s", tostring(bogus_ok),
                tostring(string.find(tostring(bogus), unknown, 1, true) ~= nil),
                tostring(reset_ok),
                tostring(string.find(tostring(reset), unknown, 1, true) ~= nil)),
        }
    end
    function mcp_config_routes(p)
        local ok, err = pcall(mcp.server_stats)
        local in_worker = tostring(ok) .. "," .. tostring(
            string.find(tostring(err), "only available in mcp_config_pools", 1, true) ~= nil)
        mcp.attach(mcp.CMD_GET, function(r)
            return "SERVER_ERROR " .. p.line .. " refused=" .. p.refused .. " worker=" .. in_worker
        end)
    end
"""


def test_server_stats_in_the_config_vm(startfile_dir, memroute_factory):
    path = write_startfile(startfile_dir, "stats.lua", SERVER_STATS)
    mr = memroute_factory("--config", str(path), "-t", "3", "-c", "321")
    with mr.client() as c:
        version = c.request(b"version\r\n").split()[1].decode()
        first = c.request(b"get k\r\n").decode()
    m = re.fullmatch(
        r"SERVER_ERROR pid=(\d+) version=(\S+) threads=3 maxconns=321 proxy=string "
        r"conns=(\d+) loads=1 refused=false,true,false,true worker=false,true\r\n", first)
    assert m, first
    assert int(m.group(1)) == mr.pid
    assert m.group(2) == version
    conns_at_start = int(m.group(3))

    # The stats are live: a reload reads them again.
    for _ in range(3):
        with mr.client() as c:
            assert c.request(b"mn\r\n") == b"MN\r\n"
    os.kill(mr.pid, signal.SIGHUP)

    def reloaded():
        with mr.client() as c:
            reply = c.request(b"get k\r\n").decode()
        return reply if "loads=2" in reply else None

    second = wait_until(reloaded, 10, what="the reload")
    conns_at_reload = int(re.search(r" conns=(\d+)", second).group(1))
    assert conns_at_reload >= conns_at_start + 3, (first, second)
    with mr.client() as c:
        total = int(stats_dict(c)["total_connections"])
    assert conns_at_reload <= total


def test_server_stats_in_a_cron(startfile_dir, memroute_factory):
    path = write_startfile(startfile_dir, "cron.lua", """
        function mcp_config_pools()
            mcp.register_cron("stats", { every = 1, rerun = false, func = function()
                local s = mcp.server_stats()
                mcp.log("cron pid=" .. s.pid .. " threads=" .. s.threads)
            end })
            return {}
        end
        function mcp_config_routes(p) end
    """)
    mr = memroute_factory("--config", str(path), "-t", "2")
    w = mr.client()
    try:
        w.send(b"watch proxyuser\r\n")
        assert w.read_line() == b"OK\r\n"
        line = w.read_until(b"\n", timeout=5.0)
        assert re.fullmatch(TS + rb"type=proxy_user msg=cron pid=%d threads=2\n" % mr.pid,
                            line), line
    finally:
        w.close()


def test_server_stats_while_route_of_loads(startfile_dir):
    from test_route_of import route_of
    path = write_startfile(startfile_dir, "routeof.lua", """
        function mcp_config_pools()
            local s = mcp.server_stats()
            assert(s.pid and s.version, "no stats")
            return { main = mcp.pool({ mcp.backend("b1", "127.0.0.1", 1) }) }
        end
        function mcp_config_routes(p) mcp.attach(mcp.CMD_ANY_STORAGE, p.main) end
    """)
    code, out, err, _ = route_of("--config", str(path), "get", "k")
    assert code == 0, err
    assert "127.0.0.1:1" in out, out


# --------------------------------------------------------------------------
# mcp.await_logerrors
# --------------------------------------------------------------------------

AWAIT_LOGERRORS = """
    function mcp_config_pools()
        local ports = {}
        for port in string.gmatch(mcp.start_arg, "%d+") do ports[#ports + 1] = tonumber(port) end
        local ok = mcp.backend("ok", "127.0.0.1", ports[1])
        local hole = mcp.backend({ label = "hole", host = "127.0.0.1", port = ports[2],
                                   readtimeout = 0.3, failurelimit = 100 })
        return { ok = mcp.pool({ ok }), hole = mcp.pool({ hole }) }
    end
    function mcp_config_routes(p)
        mcp.attach(mcp.CMD_GET, function(r)
            local key = r:key()
            if string.find(key, "^empty/") then
                return mcp.await_logerrors(r, {})
            end
            local await = mcp.await
            if string.find(key, "^logged/") then await = mcp.await_logerrors end
            -- The first pool's answer is returned; the black hole's timeout
            -- comes later.
            local res = await(r, { p.ok, p.hole }, 1, mcp.AWAIT_FIRST, "tagged")
            return res[1]
        end)
    end
"""


@pytest.fixture
def logerrors_proxy(startfile_dir, backends, memroute_factory):
    hole = BlackHole()
    try:
        (mc,) = backends(1)
        path = write_startfile(startfile_dir, "logerr.lua", AWAIT_LOGERRORS)
        mr = memroute_factory("--config", str(path), "--config-arg",
                              "%d,%d" % (mc.port, hole.port), "-t", "1")
        yield mr, hole
    finally:
        hole.close()


def watch_proxyreqs(mr):
    w = mr.client()
    w.send(b"watch proxyreqs\r\n")
    assert w.read_line() == b"OK\r\n"
    return w


def test_await_logerrors_logs_late_error_replies(logerrors_proxy):
    mr, hole = logerrors_proxy
    w = watch_proxyreqs(mr)
    try:
        # mcp.await logs nothing, even after the black hole times out.
        plain = fresh("plain")
        with mr.client() as c:
            assert c.request(b"get %s\r\n" % plain.encode()) == b"END\r\n"
        assert w.read_available(quiet=1.0) == b""

        logged = fresh("logged")
        with mr.client() as c:
            assert c.request(b"get %s\r\n" % logged.encode()) == b"END\r\n"
        line = w.read_until(b"\n", timeout=5.0)
        assert re.fullmatch(
            TS + rb"type=proxy_req elapsed=\d+ type=\d+ code=\d+ status=-1 res=\d+ cfd=\d+ "
            rb"be=127\.0\.0\.1:" + str(hole.port).encode() + rb" detail=tagged req=get "
            + logged.encode() + rb"\n", line), line
        # One line: the good reply is not logged.
        assert w.read_available(quiet=0.5) == b""
    finally:
        w.close()


def test_await_logerrors_checks_its_arguments(logerrors_proxy):
    mr, _ = logerrors_proxy
    with mr.client() as c:
        assert c.request(b"get empty/x\r\n") == b"SERVER_ERROR lua failure\r\n"
    assert "mcp.await_logerrors: the pool list must have at least one pool" in mr.stderr_tail()


# --------------------------------------------------------------------------
# r:flag_token_int and res:flag_blank
# --------------------------------------------------------------------------

FLAGS = """
    function mcp_config_pools()
        return { main = mcp.pool({ mcp.backend("b1", "127.0.0.1", tonumber(mcp.start_arg)) }) }
    end
    function mcp_config_routes(p)
        local function has(key, prefix) return string.find(key, "^" .. prefix .. "/") ~= nil end
        local function answer(r)
            local key = r:key()
            if has(key, "int") or has(key, "opaque") then
                local found, n = r:flag_token_int(has(key, "int") and "T" or "O")
                return "SERVER_ERROR " .. tostring(found) .. " " .. tostring(n) .. " " .. math.type(n or 0)
            end
            if has(key, "badint") then r:flag_token_int("TT") end
            local res = p.main(r)
            if has(key, "blank") then
                res:flag_blank("t")
                return res
            end
            if has(key, "twice") then
                return "SERVER_ERROR " .. tostring(res:flag_blank("t")) .. " "
                    .. tostring(res:flag_blank("t")) .. " " .. tostring(res:flag_blank("H"))
            end
            if has(key, "badblank") then res:flag_blank("1") end
            return res
        end
        mcp.attach(mcp.CMD_MG, answer)
        mcp.attach(mcp.CMD_GET, answer)
    end
"""


@pytest.fixture
def flags_proxy(startfile_dir, backends, memroute_factory):
    (mc,) = backends(1)
    path = write_startfile(startfile_dir, "flags.lua", FLAGS)
    return memroute_factory("--config", str(path), "--config-arg", str(mc.port)), mc


def test_flag_token_int(flags_proxy):
    mr, _ = flags_proxy
    with mr.client() as c:
        k = fresh("int")
        assert c.request(b"mg %s v T30\r\n" % k.encode()) == b"SERVER_ERROR true 30 integer\r\n"
        assert c.request(b"mg %s T-7\r\n" % k.encode()) == b"SERVER_ERROR true -7 integer\r\n"
        # The flag is there but its token is no integer: true alone.
        o = fresh("opaque")
        assert c.request(b"mg %s Oabc\r\n" % o.encode()) == b"SERVER_ERROR true nil integer\r\n"
        assert c.request(b"mg %s O12\r\n" % o.encode()) == b"SERVER_ERROR true 12 integer\r\n"
        assert c.request(b"mg %s v\r\n" % k.encode()) == b"SERVER_ERROR false nil integer\r\n"
        # Not a meta command: no flags.
        assert c.request(b"get %s\r\n" % k.encode()) == b"SERVER_ERROR false nil integer\r\n"
        assert c.request(b"mg %s T1\r\n" % fresh("badint").encode()) == \
            b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()


def test_flag_blank(flags_proxy):
    mr, mc = flags_proxy
    k = fresh("blank")
    mc_set(mc, k, b"hi", flags=5)
    with mr.client() as c:
        # memcached's bytes with the t flag and its token turned to spaces.
        assert c.request(b"mg %s t f v\r\n" % k.encode(), b"hi\r\n") == \
            b"VA 2     f5\r\nhi\r\n"
        # Without the flag the reply is unchanged.
        assert c.request(b"mg %s f v\r\n" % k.encode(), b"hi\r\n") == b"VA 2 f5\r\nhi\r\n"
        # A miss has no return flags.
        assert c.request(b"mg %s t v\r\n" % fresh("blank").encode()) == b"EN\r\n"

        t = fresh("twice")
        mc_set(mc, t, b"x")
        # true, then false (already blanked); the reply code is no flag.
        assert c.request(b"mg %s t\r\n" % t.encode()) == b"SERVER_ERROR true false false\r\n"
        # A text protocol reply is not meta: nothing to blank.
        assert c.request(b"get %s\r\n" % t.encode()) == b"SERVER_ERROR false false false\r\n"

        assert c.request(b"mg %s t\r\n" % fresh("badblank").encode()) == \
            b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()

"""memcached's current proxy API (function generators, request contexts,
routers) and its global config setters, end to end: memroute runs
funcgen-style startfiles against real memcached backends, and routes
report what they observed in their reply (``SERVER_ERROR n=... class=...``)
so the tests assert bytes.

One memroute with the big startfile below serves most tests; tests of
bad configurations and of the config setters start their own.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import pytest

from conftest import (EXAMPLES_DIR, _factory, mc_get, mc_set, run_memroute_expect_failure,
                      stats_dict, wait_until, write_startfile)
from test_proxy_api import BlackHole

# --------------------------------------------------------------------------
# the shared funcgen startfile
# --------------------------------------------------------------------------

FGEN_STARTFILE = r"""
-- The constants have memcached's values, in both kinds of VM (this line
-- runs in each).
assert(mcp.WAIT_ANY == 1 and mcp.WAIT_OK == 2 and mcp.WAIT_GOOD == 3
       and mcp.WAIT_FASTGOOD == 4 and mcp.WAIT_RESUME == true
       and mcp.RES_GOOD == 8 and mcp.RES_OK == 16 and mcp.RES_ANY == 32)

-- start_arg: "host:port" of b1, b2, b3 and a black hole (accepts, never
-- answers), comma-separated.
local function split_arg()
    local out = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(out, { host = host, port = tonumber(port) })
    end
    return out
end

function mcp_config_pools()
    local a = split_arg()
    local b = {}
    for i = 1, 3 do
        b[i] = mcp.backend("b" .. i, a[i].host, a[i].port)
    end
    local hole = mcp.backend{ label = "hole", host = a[4].host, port = a[4].port,
                              readtimeout = 5 }
    return { p1 = mcp.pool({ b[1] }), p2 = mcp.pool({ b[2] }), p3 = mcp.pool({ b[3] }),
             hole = mcp.pool({ hole }) }
end

-- A funcgen whose slots run `body(rctx, handles, r)`, with a handle per
-- target of `targets`.
local function fgen_of(name, targets, body)
    local fg = mcp.funcgen_new()
    local handles = {}
    for i, t in ipairs(targets) do
        handles[i] = fg:new_handle(t)
    end
    fg:ready({ n = name, a = handles, f = function(rctx, hs)
        return function(r) return body(rctx, hs, r) end
    end })
    return fg
end

local function message(text)
    local fg = mcp.funcgen_new()
    fg:ready({ f = function(rctx)
        return function(r) return "SERVER_ERROR " .. text .. "\r\n" end
    end })
    return fg
end

-- "n=<count> classes=<RES_* of each handle>"
local function report(rctx, hs, n, timed_out)
    local classes = {}
    for i, h in ipairs(hs) do
        local _, class = rctx:result(h)
        classes[i] = tostring(class)
    end
    return string.format("SERVER_ERROR n=%s timeout=%s classes=%s\r\n", tostring(n),
        tostring(timed_out), table.concat(classes, ","))
end

function mcp_config_routes(p)
    local direct = fgen_of("direct", { p.p1 }, function(rctx, hs, r)
        return rctx:enqueue_and_wait(r, hs[1])
    end)

    -- The local zone first; on a miss, every far zone, first good wins.
    local failover = fgen_of("failover", { p.p1, p.p2, p.p3 }, function(rctx, hs, r)
        local res = rctx:enqueue_and_wait(r, hs[1])
        if res:hit() then
            return res
        end
        local far = { hs[2], hs[3] }
        rctx:enqueue(r, far)
        rctx:wait_cond(1, mcp.WAIT_GOOD)
        for _, h in ipairs(far) do
            local good = rctx:res_good(h)
            if good then return good end
        end
        return rctx:res_any(hs[1])
    end)

    -- Every handle at once; the key's second part names the wait mode.
    local modes = { any = mcp.WAIT_ANY, ok = mcp.WAIT_OK, good = mcp.WAIT_GOOD,
                    fastgood = mcp.WAIT_FASTGOOD }
    local all = fgen_of("all", { p.p1, p.p2, p.p3 }, function(rctx, hs, r)
        local mode = modes[string.match(r:key(), "^all/(%a+)/")]
        rctx:enqueue(r, hs)
        local n = rctx:wait_cond(#hs, mode)
        if r:command() == mcp.CMD_SET then
            return rctx:res_any(hs[1])
        end
        return report(rctx, hs, n)
    end)

    -- A good backend and a black hole: FASTGOOD returns at the hit, ANY
    -- only at its timeout.
    local partial = fgen_of("partial", { p.p1, p.hole }, function(rctx, hs, r)
        local mode = string.match(r:key(), "^partial/(%a+)/")
        rctx:enqueue(r, hs)
        local n, timed_out
        if mode == "fastgood" then
            n, timed_out = rctx:wait_cond(2, mcp.WAIT_FASTGOOD)
        else
            n, timed_out = rctx:wait_cond(2, mcp.WAIT_ANY, 0.3)
        end
        return report(rctx, { hs[1] }, n, timed_out)
    end)

    -- wait_handle on one of two queued handles; with a timeout on the hole.
    local handle = fgen_of("handle", { p.p1, p.p2, p.hole }, function(rctx, hs, r)
        if string.match(r:key(), "^handle/hole/") then
            local res, timed_out = rctx:enqueue_and_wait(r, hs[3], 0.2)
            return string.format("SERVER_ERROR res=%s timeout=%s\r\n", tostring(res),
                tostring(timed_out))
        end
        rctx:enqueue(r, { hs[1], hs[2] })
        return rctx:wait_handle(hs[2])
    end)

    -- A callback that counts its calls, re-classes misses as good and ends
    -- the wait at once: the hole is never waited for.
    local cb = mcp.funcgen_new()
    local cb1 = cb:new_handle(p.p1)
    local cb2 = cb:new_handle(p.hole)
    cb:ready({ n = "cb", f = function(rctx)
        local calls = 0
        rctx:handle_set_cb(cb1, function(res, req)
            calls = calls + 1
            if res:hit() then return mcp.WAIT_ANY end
            return mcp.WAIT_GOOD, mcp.WAIT_RESUME
        end)
        return function(r)
            rctx:enqueue(r, { cb1, cb2 })
            local n = rctx:wait_cond(2, mcp.WAIT_GOOD)
            local _, class = rctx:result(cb1)
            return string.format("SERVER_ERROR n=%d class=%d calls=%d key=%s\r\n", n, class,
                calls, r:key())
        end
    end })

    local sleepy = fgen_of("sleep", { p.p1 }, function(rctx, hs, r)
        local woke = rctx:sleep(0.25)
        local res = rctx:enqueue_and_wait(r, hs[1])
        return string.format("SERVER_ERROR woke=%s line=%s\r\n", tostring(woke), res:line())
    end)

    local ranked = fgen_of("ranked", { p.p1, p.p2, p.p3 }, function(rctx, hs, r)
        rctx:enqueue(r, hs)
        rctx:wait_cond(#hs, mcp.WAIT_ANY)
        local res, class
        if string.match(r:key(), "^ranked/best/") then
            res, class = rctx:best_result(hs)
        else
            res, class = rctx:worst_result(hs)
        end
        return string.format("SERVER_ERROR class=%d line=%s\r\n", class, res:line())
    end)

    -- A funcgen as a handle of another, and the embedded cache as one.
    local nested = fgen_of("nested", { direct, mcp.internal_handler }, function(rctx, hs, r)
        if string.match(r:key(), "^nested/internal/") then
            return rctx:enqueue_and_wait(r, hs[2])
        end
        local res = rctx:enqueue_and_wait(r, hs[1])
        local _, class = rctx:result(hs[1])
        return string.format("SERVER_ERROR class=%d line=%s\r\n", class, res:line())
    end)

    -- Slot-local state: each slot has its own counter.
    local counter = mcp.funcgen_new()
    counter:ready({ n = "count", f = function(rctx)
        local x = 0
        return function(r)
            x = x + 1
            return "HD t" .. x .. "\r\n"
        end
    end })

    local failing = fgen_of("failing", {}, function(rctx, hs, r)
        error("route boom")
    end)

    local router = mcp.router_new({
        map = {
            direct = direct, failover = failover, all = all, partial = partial,
            handle = handle, cb = cb, sleep = sleepy, ranked = ranked, nested = nested,
            failing = failing, count = counter,
            cmd = { [mcp.CMD_GET] = message("cmd get"),
                    [mcp.CMD_ANY_STORAGE] = message("cmd other") },
        },
        cmap = { [mcp.CMD_DELETE] = message("cmap delete") },
        default = message("default"),
    })
    mcp.attach(mcp.CMD_ANY_STORAGE, router)
    -- mg keys are matched between a leading "_" and a ",".
    mcp.attach(mcp.CMD_MG, mcp.router_new({
        map = { direct = direct }, mode = "anchor", start = "_", stop = ",",
        default = message("anchor default"),
    }))
    -- A long prefix separator.
    mcp.attach(mcp.CMD_MS, mcp.router_new({
        map = { direct = direct }, mode = "prefix", stop = "::" }))
end
"""


class FgenEnv:
    def __init__(self, backends, hole):
        self.backends = backends
        self.hole = hole
        self.mr = None

    @property
    def start_arg(self) -> str:
        return ",".join([b.addr for b in self.backends] + [self.hole.addr])

    def client(self):
        return self.mr.client()


@pytest.fixture(scope="module")
def fg(server_workdir, tmp_path_factory):
    mcf = _factory("memcached", server_workdir)
    mrf = _factory("memroute", server_workdir)
    hole = BlackHole()
    try:
        env = FgenEnv([mcf() for _ in range(3)], hole)
        path = write_startfile(tmp_path_factory.mktemp("fgen"), "fgen.lua", FGEN_STARTFILE)
        env.mr = mrf("--config", str(path), "--config-arg", env.start_arg, "-v", "-t", "2")
        yield env
    finally:
        mrf.stop_all()
        mcf.stop_all()
        hole.close()


def ask(env, data: bytes, terminator: bytes = b"\r\n") -> bytes:
    with env.client() as c:
        return c.request(data, terminator)


def fresh(prefix: str) -> str:
    return "%s%s" % (prefix, uuid.uuid4().hex[:10])


# --------------------------------------------------------------------------
# basic routes, routers
# --------------------------------------------------------------------------


def test_enqueue_and_wait_serves_a_pool(fg):
    key = fresh("direct/")
    assert ask(fg, b"set %s 3 0 2\r\nhi\r\n" % key.encode()) == b"STORED\r\n"
    assert mc_get(fg.backends[0], key) == b"hi"
    assert mc_get(fg.backends[1], key) is None
    assert ask(fg, b"get %s\r\n" % key.encode(), b"END\r\n") == \
        b"VALUE %s 3 2\r\nhi\r\nEND\r\n" % key.encode()


def test_slots_serve_pipelined_and_multi_key_requests(fg):
    keys = [fresh("direct/") for _ in range(20)]
    for k in keys:
        mc_set(fg.backends[0], k, k.encode())
    with fg.client() as c:
        # 20 requests at once need 20 slots at once; their replies keep order.
        c.send(b"".join(b"get %s\r\n" % k.encode() for k in keys))
        for k in keys:
            assert c.read_until(b"END\r\n") == \
                b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k.encode(), len(k), k.encode())
        # A multi-key get runs a slot per key, in the client's order.
        c.send(b"get " + " ".join(keys).encode() + b"\r\n")
        assert c.read_until(b"END\r\n") == b"".join(
            b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(k), k.encode()) for k in keys) \
            + b"END\r\n"



def test_multi_key_get_mixes_hits_misses_and_failures(fg):
    """A multi-key get through a router runs each key in a slot of the
    funcgen its prefix maps to, all in one future: hits come back in the
    client's key order; a miss and a key whose slot function fails read as
    misses; `gets` keys carry their cas."""
    hits = [fresh("direct/"), fresh("direct/")]
    for k in hits:
        mc_set(fg.backends[0], k, k.encode())
    missing = fresh("direct/")
    with fg.client() as c:
        c.send(b"get %s %s failing/x %s\r\n" % (hits[0].encode(), missing.encode(),
                                                  hits[1].encode()))
        assert c.read_until(b"END\r\n") == b"".join(
            b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(k), k.encode()) for k in hits) \
            + b"END\r\n"
        c.send(b"gets %s %s\r\n" % (hits[1].encode(), hits[0].encode()))
        reply = c.read_until(b"END\r\n")
        blocks = re.findall(rb"VALUE (\S+) 0 \d+ \d+\r\n", reply)
        assert blocks == [hits[1].encode(), hits[0].encode()], reply
        c.assert_alive()

def test_router_prefix_command_maps_cmap_and_default(fg):
    assert ask(fg, b"get cmd/x\r\n") == b"SERVER_ERROR cmd get\r\n"
    # CMD_ANY_STORAGE in a command map serves the commands not listed.
    assert ask(fg, b"set cmd/x 0 0 1\r\nx\r\n") == b"SERVER_ERROR cmd other\r\n"
    # No map entry: the router's cmap for the command, then its default.
    assert ask(fg, b"delete nomap/x\r\n") == b"SERVER_ERROR cmap delete\r\n"
    assert ask(fg, b"get nomap/x\r\n") == b"SERVER_ERROR default\r\n"
    # No separator, or nothing before it: the default.
    assert ask(fg, b"get direct\r\n") == b"SERVER_ERROR default\r\n"
    assert ask(fg, b"get /direct\r\n") == b"SERVER_ERROR default\r\n"


def test_router_anchor_and_long_separator(fg):
    key = fresh("_direct,")
    mc_set(fg.backends[0], key, b"anch")
    assert ask(fg, b"mg %s v\r\n" % key.encode(), b"anch\r\n") == b"VA 4\r\nanch\r\n"
    # Without the anchor, or without the stop: the default.
    assert ask(fg, b"mg direct,%s v\r\n" % key.encode()) == b"SERVER_ERROR anchor default\r\n"
    assert ask(fg, b"mg _direct v\r\n") == b"SERVER_ERROR anchor default\r\n"
    long_key = fresh("direct::")
    assert ask(fg, b"ms %s 2\r\nlk\r\n" % long_key.encode()) == b"HD\r\n"
    assert mc_get(fg.backends[0], long_key) == b"lk"
    # A router without a default answers what has no route.
    assert ask(fg, b"ms other::x 2\r\nlk\r\n") == b"SERVER_ERROR no route\r\n"


def test_a_failing_slot_function_is_a_lua_failure(fg):
    with fg.client() as c:
        before = int(stats_dict(c, b"proxy")["lua_errors"])
        assert c.request(b"get failing/x\r\n") == b"SERVER_ERROR lua failure\r\n"
        # The slot is made again and the connection goes on.
        assert c.request(b"get failing/y\r\n") == b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()
        assert int(stats_dict(c, b"proxy")["lua_errors"]) == before + 2


# --------------------------------------------------------------------------
# waits
# --------------------------------------------------------------------------


def test_failover_with_wait_cond(fg):
    b1, b2, b3 = fg.backends
    local, far, nowhere = fresh("failover/"), fresh("failover/"), fresh("failover/")
    mc_set(b1, local, b"near")
    mc_set(b3, far, b"far")
    assert ask(fg, b"get %s\r\n" % local.encode(), b"END\r\n") == \
        b"VALUE %s 0 4\r\nnear\r\nEND\r\n" % local.encode()
    assert ask(fg, b"get %s\r\n" % far.encode(), b"END\r\n") == \
        b"VALUE %s 0 3\r\nfar\r\nEND\r\n" % far.encode()
    # Nothing anywhere: the local zone's miss.
    assert ask(fg, b"get %s\r\n" % nowhere.encode()) == b"END\r\n"


@pytest.mark.parametrize("mode,holders,want", [
    # WAIT_GOOD counts hits; with one hit out of three it returns when
    # every handle has answered, having counted 1.
    ("good", [1], "n=1 timeout=nil classes=16,8,16"),
    ("good", [0, 1, 2], "n=3 timeout=nil classes=8,8,8"),
    # WAIT_OK and WAIT_ANY count misses too.
    ("ok", [], "n=3 timeout=nil classes=16,16,16"),
    ("any", [2], "n=3 timeout=nil classes=16,16,8"),
])
def test_all_sync_fan_out(fg, mode, holders, want):
    key = fresh("all/%s/" % mode)
    for i in holders:
        mc_set(fg.backends[i], key, b"v")
    assert ask(fg, b"get %s\r\n" % key.encode()) == ("SERVER_ERROR %s\r\n" % want).encode()


def test_fan_out_write_reaches_every_handle(fg):
    key = fresh("all/any/")
    assert ask(fg, b"set %s 0 0 3\r\nabc\r\n" % key.encode()) == b"STORED\r\n"
    assert [mc_get(b, key) for b in fg.backends] == [b"abc"] * 3


def test_fastgood_returns_at_the_first_hit(fg):
    key = fresh("partial/fastgood/")
    mc_set(fg.backends[0], key, b"v")
    start = time.monotonic()
    # The black hole never answers; the hit ends the wait.
    assert ask(fg, b"get %s\r\n" % key.encode()) == \
        b"SERVER_ERROR n=1 timeout=nil classes=8\r\n"
    assert time.monotonic() - start < 2


def test_wait_cond_timeout_returns_the_count_and_true(fg):
    key = fresh("partial/any/")
    start = time.monotonic()
    assert ask(fg, b"get %s\r\n" % key.encode()) == \
        b"SERVER_ERROR n=1 timeout=true classes=16\r\n"
    assert 0.25 <= time.monotonic() - start < 2


def test_wait_handle_and_its_timeout(fg):
    key = fresh("handle/")
    mc_set(fg.backends[1], key, b"two")
    assert ask(fg, b"get %s\r\n" % key.encode(), b"END\r\n") == \
        b"VALUE %s 0 3\r\ntwo\r\nEND\r\n" % key.encode()
    start = time.monotonic()
    assert ask(fg, b"get %s\r\n" % fresh("handle/hole/").encode()) == \
        b"SERVER_ERROR res=nil timeout=true\r\n"
    assert 0.15 <= time.monotonic() - start < 2


def test_handle_callback_reclasses_and_resumes(fg):
    miss = fresh("cb/")
    # A miss re-classed good (8) ends the wait without the black hole.
    start = time.monotonic()
    got = ask(fg, b"get %s\r\n" % miss.encode())
    assert got == ("SERVER_ERROR n=1 class=8 calls=1 key=%s\r\n" % miss).encode()
    assert time.monotonic() - start < 2


def test_slots_are_reused_with_their_state(fg):
    # One request at a time on one connection: the worker's one slot serves
    # them all, and its generator's upvalue counts on.
    with fg.client() as c:
        assert [c.request(b"get count/x\r\n") for _ in range(3)] == \
            [b"HD t1\r\n", b"HD t2\r\n", b"HD t3\r\n"]


COUNTER_STARTFILE = r"""
function mcp_config_pools() return {} end
function mcp_config_routes(p)
    local counter = mcp.funcgen_new()
    counter:ready({ f = function(rctx)
        local x = 0
        return function(r)
            x = x + 1
            return "HD t" .. x .. "\r\n"
        end
    end })
    mcp.attach(mcp.CMD_MG, counter)
end
"""


def test_idle_slots_are_let_go_as_memcached_eases_them(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "counter.lua", COUNTER_STARTFILE)
    mr = memroute_factory("--config", str(path), "-t", "1")
    with mr.client() as c:
        # One request at a time: the one slot is always free when it comes
        # back, so the pressure grows by one per request; past 1000 the
        # slot is let go and the next request gets a new one.
        replies = [c.request(b"mg k v\r\n") for _ in range(1002)]
    assert replies[:3] == [b"HD t1\r\n", b"HD t2\r\n", b"HD t3\r\n"]
    assert replies[-2:] == [b"HD t1001\r\n", b"HD t1\r\n"]


def test_reload_swaps_funcgens_with_a_request_in_flight(memroute_factory, startfile_dir):
    # The slot function sleeps, so a request is in flight across the reload:
    # it finishes on the configuration it started with.
    text = COUNTER_STARTFILE.replace("x = x + 1", "rctx:sleep(0.5); x = x + 1")
    path = write_startfile(startfile_dir, "reload.lua", text)
    mr = memroute_factory("--config", str(path), "-t", "1")
    with mr.client() as slow, mr.client() as c:
        slow.send(b"mg k v\r\n")
        time.sleep(0.1)
        path.write_text(COUNTER_STARTFILE.replace('"HD t"', '"HD new"'))
        os.kill(mr.pid, signal.SIGHUP)
        wait_until(lambda: stats_dict(c, b"proxy")["config_reloads"] == "1", 5,
                   what="the reload")
        assert slow.read_line() == b"HD t1\r\n"
        assert c.request(b"mg k v\r\n") == b"HD new1\r\n"


def test_sleep(fg):
    key = fresh("sleep/")
    start = time.monotonic()
    assert ask(fg, b"get %s\r\n" % key.encode()) == b"SERVER_ERROR woke=true line=END\r\n"
    assert time.monotonic() - start >= 0.25


def test_client_leaving_mid_request(fg):
    # The client goes while its request sleeps, and while one waits for the
    # black hole; the proxy goes on serving.
    for key in (fresh("sleep/"), fresh("partial/any/")):
        with fg.client() as c:
            c.send(b"get %s\r\n" % key.encode())
        time.sleep(0.4)
    key = fresh("direct/")
    mc_set(fg.backends[0], key, b"ok")
    assert ask(fg, b"get %s\r\n" % key.encode(), b"END\r\n") == \
        b"VALUE %s 0 2\r\nok\r\nEND\r\n" % key.encode()


def test_best_and_worst_result(fg):
    key = fresh("ranked/best/")
    mc_set(fg.backends[2], key, b"x")
    assert ask(fg, b"get %s\r\n" % key.encode()) == \
        b"SERVER_ERROR class=8 line=VALUE %s 0 1\r\n" % key.encode()
    key = fresh("ranked/worst/")
    mc_set(fg.backends[2], key, b"x")
    assert ask(fg, b"get %s\r\n" % key.encode()) == b"SERVER_ERROR class=16 line=END\r\n"


def test_nested_funcgen_and_internal_handler(fg):
    key = fresh("nested/")
    mc_set(fg.backends[0], key, b"deep")
    assert ask(fg, b"get %s\r\n" % key.encode()) == \
        b"SERVER_ERROR class=8 line=VALUE %s 0 4\r\n" % key.encode()
    ikey = fresh("nested/internal/")
    assert ask(fg, b"set %s 0 0 2\r\nin\r\n" % ikey.encode()) == b"STORED\r\n"
    assert ask(fg, b"get %s\r\n" % ikey.encode(), b"END\r\n") == \
        b"VALUE %s 0 2\r\nin\r\nEND\r\n" % ikey.encode()
    assert all(mc_get(b, ikey) is None for b in fg.backends)


CFD_STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b1", host, tonumber(port)) }) }
end

function mcp_config_routes(c)
    -- What rctx:cfd() said where there was no client: in the generator
    -- call fgen:ready makes at load time.
    local at_load = nil
    -- What it said in a handle callback run after the slot had returned.
    local in_callback = "none"

    local inner = mcp.funcgen_new()
    inner:ready({ n = "inner", f = function(rctx)
        return function(r) return "HD inner=" .. tostring(rctx:cfd()) .. "\r\n" end
    end })

    local outer = mcp.funcgen_new()
    local nested = outer:new_handle(inner)
    local pool = outer:new_handle(c.p)
    outer:ready({ n = "cfd", f = function(rctx)
        if at_load == nil then
            at_load = tostring(rctx:cfd())
        end
        rctx:handle_set_cb(pool, function(res, req)
            in_callback = tostring(rctx:cfd())
        end)
        return function(r)
            local key = r:key()
            if key == "nested" then
                local res = rctx:enqueue_and_wait(r, nested)
                return "SERVER_ERROR outer=" .. tostring(rctx:cfd()) .. " " .. res:line() .. "\r\n"
            elseif key == "background" then
                -- sent, not waited for: its callback runs after the return
                in_callback = "pending"
                rctx:enqueue(r, pool)
                rctx:wait_cond(0)
                return "SERVER_ERROR sent\r\n"
            elseif key == "callback" then
                return "SERVER_ERROR callback=" .. in_callback .. "\r\n"
            elseif key == "load" then
                return "SERVER_ERROR load=" .. at_load .. "\r\n"
            end
            return "SERVER_ERROR fd=" .. tostring(rctx:cfd()) .. "\r\n"
        end
    end })
    mcp.attach(mcp.CMD_ANY_STORAGE, outer)
end
"""


def test_rctx_cfd_is_the_client_socket(backends, memroute_factory, startfile_dir):
    """rctx:cfd() is the number of the client's socket, as in memcached:
    the same for every request of a connection, different for two
    connections open at once; nested funcgens and callbacks run after the
    slot returned see it too; without a client (at load) it is nil."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "cfd.lua", CFD_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")

    def fd_of(c) -> int:
        m = re.match(rb"^SERVER_ERROR fd=(\d+)\r\n$", c.request(b"get x\r\n"))
        assert m, "rctx:cfd() should be a number"
        return int(m.group(1))

    with mr.client() as c1, mr.client() as c2:
        fd1 = fd_of(c1)
        assert fd1 > 2
        assert [fd_of(c1) for _ in range(3)] == [fd1] * 3
        # pipelined requests too
        c1.send(b"get a\r\nget b\r\nget c\r\n")
        assert c1.read_available() == b"SERVER_ERROR fd=%d\r\n" % fd1 * 3
        fd2 = fd_of(c2)
        assert fd2 > 2 and fd2 != fd1
        assert fd_of(c1) == fd1 and fd_of(c2) == fd2
        assert c2.request(b"get nested\r\n") == \
            b"SERVER_ERROR outer=%d HD inner=%d\r\n" % (fd2, fd2)
        assert c2.request(b"get background\r\n") == b"SERVER_ERROR sent\r\n"
        wait_until(lambda: c2.request(b"get callback\r\n") ==
                   b"SERVER_ERROR callback=%d\r\n" % fd2, 5.0, what="the callback")
        assert c1.request(b"get load\r\n") == b"SERVER_ERROR load=nil\r\n"


# --------------------------------------------------------------------------
# configuration: errors
# --------------------------------------------------------------------------

POOLS = """
function mcp_config_pools()
    return { p = mcp.pool({ mcp.backend("b", "127.0.0.1", 1) }) }
end
"""


def expect_failure(startfile_dir, text, *patterns):
    path = write_startfile(startfile_dir, "bad.lua", text)
    proc = run_memroute_expect_failure(["--config", str(path)])
    assert proc.returncode != 0
    for pattern in patterns:
        assert re.search(pattern, proc.stderr), "%r not in:\n%s" % (pattern, proc.stderr)


@pytest.mark.parametrize("routes,message", [
    ('mcp.router_new({ map = {}, stpo = "/" })', r"unknown option 'stpo'"),
    ('mcp.router_new({ mode = "anchor", start = "_" })', r"must specify start and stop"),
    ('mcp.router_new({ mode = "suffix" })', r"unknown type passed to mcp\.router_new"),
    ('mcp.router_new({ stop = "toolong" })', r"stop is too long"),
    ('mcp.router_new({ map = { x = { [9999] = mcp.funcgen_new() } } })',
     r"Bad command in router command map"),
    ('mcp.router_new({ map = { x = mcp.funcgen_new() } })', r"was not made ready"),
    ('local f = mcp.funcgen_new(); f:ready({ f = function() return 1 end })',
     r"function generator didn't return a function"),
    ('local f = mcp.funcgen_new(); f:ready({})', r"Must specify generator function"),
    ('local f = mcp.funcgen_new(); f:ready({ f = function() return function() end end }); '
     'f:new_handle(p.p)', r"cannot modify function generator after calling ready"),
    ('mcp.funcgen_new():new_handle("p")', r"invalid argument to new_handle"),
    ('local f = mcp.funcgen_new(); f:new_handle(mcp.router_new({}))',
     r"cannot assign a router to a handle"),
    ('mcp.attach(mcp.CMD_GET, mcp.funcgen_new())', r"call fgen:ready\{\} before attaching"),
])
def test_bad_worker_configuration_names_the_problem(startfile_dir, routes, message):
    expect_failure(startfile_dir, POOLS + "function mcp_config_routes(p)\n  %s\nend\n" % routes,
                   message, r"bad\.lua:\d+:")


@pytest.mark.parametrize("call,message", [
    ('mcp.backend_connect_timeout("soon")', r"mcp\.backend_connect_timeout: connecttimeout must"),
    ("mcp.backend_failure_limit(0)", r"mcp\.backend_failure_limit: failurelimit must"),
    ("mcp.backend_read_timeout(-1)", r"mcp\.backend_read_timeout: readtimeout must be between"),
    ("mcp.backend_flap_backoff_ramp(0.5)", r"mcp\.backend_flap_backoff_ramp"),
    ("mcp.tcp_keepalive(1)", r"mcp\.tcp_keepalive: tcpkeepalive must be true or false"),
    ("mcp.luagc_ratio(3)", r"mcp\.luagc_ratio is not supported"),
    ("mcp.stat_limit(5000)", r"mcp\.stat_limit: memroute keeps at most 1024"),
    ("mcp.stat_limit(2); mcp.add_stat(3, 'x')", r"mcp\.add_stat: id must be 1\.\.2"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, log = { sample = 1 } }',
     r"mcp\.backend: log\.sample"),
    ("mcp.funcgen_new()", r"mcp\.funcgen_new is only available in mcp_config_routes"),
])
def test_bad_config_setting_names_it(startfile_dir, call, message):
    expect_failure(startfile_dir, "function mcp_config_pools()\n  %s\n  return {}\nend\n"
                   "function mcp_config_routes(p) end\n" % call, message, r"bad\.lua:2:")


# --------------------------------------------------------------------------
# configuration: the global setters and pool options take effect
# --------------------------------------------------------------------------

SETTINGS_STARTFILE = r"""
function mcp_config_pools()
    local a = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do table.insert(a, hp) end
    local function hp(i) return string.match(a[i], "^(.+):(%d+)$") end
    -- Every global setter; the read timeout is what the hole test measures.
    mcp.backend_connect_timeout(2)
    mcp.backend_retry_timeout(1)
    mcp.backend_retry_waittime(1)
    mcp.backend_read_timeout(0.3)
    mcp.backend_failure_limit(5)
    mcp.backend_depth_limit(100)
    mcp.backend_flap_time(10)
    mcp.backend_flap_backoff_ramp(2)
    mcp.backend_flap_backoff_max(60)
    mcp.backend_use_iothread(true)
    mcp.backend_use_tls(false)
    mcp.tcp_keepalive(true)
    mcp.stat_limit(10)
    mcp.add_stat(1, "kept")
    mcp.add_stat(2, "renamed_away")
    mcp.add_stat(2, "renamed")
    mcp.add_stat(3, "retired")
    mcp.add_stat(3, "")
    local h1, p1 = hp(1)
    local h2, p2 = hp(2)
    local h3, p3 = hp(3)
    local b1 = mcp.backend{ label = "b1", host = h1, port = p1, tls = false, depthlimit = 10,
                            log = { deadline = 100, rate = 5, errors = true } }
    local b2 = mcp.backend("b2", h2, p2)
    local hole = mcp.backend("hole", h3, p3)
    return {
        seeded_a = mcp.pool({ b1, b2 }, { seed = "alpha", iothread = false }),
        seeded_b = mcp.pool({ b1, b2 }, { seed = "beta", beprefix = "set_" }),
        hole = mcp.pool({ hole }),
    }
end

function mcp_config_routes(p)
    local function direct(pool)
        local fg = mcp.funcgen_new()
        local h = fg:new_handle(pool)
        fg:ready({ a = h, f = function(rctx, h)
            return function(r)
                mcp.stat(1)
                -- "a/KEY" and "b/KEY" reach their pools as KEY.
                r:ltrimkey(2)
                return rctx:enqueue_and_wait(r, h)
            end
        end })
        return fg
    end
    mcp.attach(mcp.CMD_ANY_STORAGE, mcp.router_new({
        map = { a = direct(p.seeded_a), b = direct(p.seeded_b), hole = direct(p.hole) } }))
end
"""


def test_config_setters_and_pool_options_take_effect(backends, memroute_factory, startfile_dir):
    b1, b2 = backends(2)
    hole = BlackHole()
    try:
        path = write_startfile(startfile_dir, "settings.lua", SETTINGS_STARTFILE)
        mr = memroute_factory("--config", str(path), "--config-arg",
                              ",".join([b1.addr, b2.addr, hole.addr]))
        # mcp.backend_read_timeout(0.3) is the hole backend's read timeout.
        with mr.client() as c:
            start = time.monotonic()
            assert c.request(b"get hole/x\r\n") == b"SERVER_ERROR backend failure\r\n"
            assert time.monotonic() - start < 2
        # Seeds are strings hashed as memcached does: the same key through
        # the same backends with two seeds lands on either backend, each
        # seed placing it consistently.
        run = uuid.uuid4().hex[:6]
        keys = ["%s-%d" % (run, i) for i in range(40)]
        with mr.client() as c:
            for key in keys:
                for pool in ("a", "b"):
                    assert c.request(b"set %s/%s 0 0 1\r\n%s\r\n" % (
                        pool.encode(), key.encode(), pool.encode())) == b"STORED\r\n"
            # Where the seeds agree one backend holds the key ("b" written
            # last); where they differ each holds its pool's write.
            placements = [(mc_get(b1, k), mc_get(b2, k)) for k in keys]
            assert all(p in ((b"b", None), (None, b"b"), (b"a", b"b"), (b"b", b"a"))
                       for p in placements), placements
            differ = sum(1 for p in placements if None not in p)
            assert 5 <= differ <= 35, differ
            # The same request placed the same way again.
            for key in keys:
                assert c.request(b"get b/%s\r\n" % key.encode(), b"END\r\n") == \
                    b"VALUE %s 0 1\r\nb\r\nEND\r\n" % key.encode()
            proxy = stats_dict(c, b"proxy")
            bes = {k.rsplit(":", 1)[0] for k in stats_dict(c, b"backends")}
        # add_stat: a second name renames an id, an empty one retires it.
        assert proxy["kept"] == "121" and "renamed" in proxy
        assert "renamed_away" not in proxy and "retired" not in proxy
        # beprefix gives the pool's backends labels (and connections) of
        # their own.
        assert {"b1", "b2", "set_b1", "set_b2", "hole"} <= bes, bes
    finally:
        hole.close()


# --------------------------------------------------------------------------
# the example
# --------------------------------------------------------------------------


def test_example_funcgen_zones(backends, memroute_factory):
    near, far1, far2 = backends(3)
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "funcgen-zones.lua"), "--config-arg",
                          ",".join(b.addr for b in (near, far1, far2)))
    run = uuid.uuid4().hex[:6]
    key = "zk:%s" % run
    with mr.client() as c:
        # Writes go to every zone.
        assert c.request(b"set %s 0 0 2\r\nab\r\n" % key.encode()) == b"STORED\r\n"
        assert [mc_get(b, key) for b in (near, far1, far2)] == [b"ab"] * 3
        # A read the near zone misses is served by a far one.
        only_far = "zf:%s" % run
        mc_set(far2, only_far, b"far")
        assert c.request(b"get %s\r\n" % only_far.encode(), b"END\r\n") == \
            b"VALUE %s 0 3\r\nfar\r\nEND\r\n" % only_far.encode()
        assert c.request(b"get zmiss:%s\r\n" % run.encode()) == b"END\r\n"


FLAG_EDIT_STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { main = mcp.pool({ mcp.backend("b1", host, tonumber(port)) }) }
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(pools.main)
    fgen:ready({ n = "flags", f = function(rctx)
        return function(r)
            local key = r:key()
            if key == "edit" then
                -- Each editor, then the line it left.
                local out = {
                    tostring(r:flag_add("T", 30)), tostring(r:flag_add("T", 40)),
                    tostring(r:flag_set("T", "50")), tostring(r:flag_set("O", "abc")),
                    tostring(r:flag_replace("v", "q")), tostring(r:flag_del("k")),
                    tostring(r:flag_del("k")),
                }
                return "SERVER_ERROR " .. table.concat(out, ",") .. " " .. r:raw_line()
            elseif key == "badflag" then
                return tostring(r:flag_add("TT"))
            end
            -- The backend's reply, checked against the request.
            local res <close> = rctx:enqueue_and_wait(r, h)
            local ok, token = r:match_res(res)
            return "SERVER_ERROR match=" .. tostring(ok) .. "," .. tostring(token)
        end
    end })
    mcp.attach(mcp.CMD_MG, fgen)
end
"""


def test_request_flag_editors_and_match_res(backends, memroute_factory, startfile_dir):
    (b1,) = backends(1)
    mc_set(b1, "m", b"v")
    path = write_startfile(startfile_dir, "flags.lua", FLAG_EDIT_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b1.addr, "-t", "1")
    with mr.client() as c:
        # add refuses a flag that is there; set overwrites or appends;
        # replace swaps the letter; del answers whether it removed one.
        assert c.request(b"mg edit v k\r\n") == (
            b"SERVER_ERROR true,false,true,true,true,true,false mg edit q T50 Oabc\r\n")
        assert c.request(b"mg badflag v\r\n") == b"SERVER_ERROR lua failure\r\n"
        # The backend echoes k and O: they match the request's.
        assert c.request(b"mg m v k Oxyz\r\n") == b"SERVER_ERROR match=true,nil\r\n"
        # Nothing echoed: nothing matched.
        assert c.request(b"mg m v\r\n") == b"SERVER_ERROR match=false,nil\r\n"
        c.assert_alive()


WAIT_PATHS_STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b", host, tonumber(port)) }),
             q = mcp.pool({ mcp.backend("c", host, tonumber(port)) }) }
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(pools.p)
    local h2 = fgen:new_handle(pools.q)
    fgen:ready({ n = "paths", f = function(rctx)
        return function(r)
            local what = string.match(r:key(), "^(%w+)/")
            if what == "plain" then
                return rctx:enqueue_and_wait(r, h)
            elseif what == "float" then
                -- a handle given as a float with an integer value
                return rctx:enqueue_and_wait(r, h + 0.0)
            elseif what == "pcall" then
                local ok, res = pcall(rctx.enqueue_and_wait, rctx, r, h)
                return ok and res or "SERVER_ERROR pcall failed"
            elseif what == "badhandle" then
                local ok, err = pcall(rctx.enqueue_and_wait, rctx, r, 7)
                return "SERVER_ERROR " .. tostring(ok) .. " " .. tostring(err)
            elseif what == "sorted" then
                local t = { 1, 2 }
                local ok, err = pcall(table.sort, t, function(a, b)
                    rctx:enqueue_and_wait(r, h); return a < b end)
                return "SERVER_ERROR " .. tostring(ok) .. " " .. tostring(err)
            elseif what == "made" then
                -- a request object the slot did not get: the full path
                local made = mcp.request("mg " .. r:key() .. " v\r\n")
                local res = rctx:enqueue_and_wait(made, h)
                return "SERVER_ERROR made " .. res:line()
            elseif what == "timeout" then
                local res, timed_out = rctx:enqueue_and_wait(r, h, 2)
                return res
            elseif what == "queued" then
                -- another handle already queued: both go, the wait is h's
                rctx:enqueue(r, h2)
                local res = rctx:enqueue_and_wait(r, h)
                rctx:wait_handle(h2)
                return "SERVER_ERROR " .. res:line() .. " " .. rctx:res_any(h2):line()
            elseif what == "second" then
                -- the second handle's object returned, after the first's
                local first = rctx:enqueue_and_wait(r, h)
                local second = rctx:enqueue_and_wait(r, h2)
                return second
            elseif what == "twice" then
                -- one handle waited twice: the second call waits for the
                -- first request's result (a handle takes one per request)
                local a = rctx:enqueue_and_wait(r, h)
                local b = rctx:enqueue_and_wait(r, h)
                return "SERVER_ERROR " .. tostring(a == b) .. " " .. b:line()
            end
            return "SERVER_ERROR unknown"
        end
    end })
    mcp.attach(mcp.CMD_ANY_STORAGE, fgen)
end
"""


def test_enqueue_and_wait_fast_and_full_paths(backends, memroute_factory, startfile_dir):
    """rctx:enqueue_and_wait is a C function with a fast path for the
    common call (the slot's own rctx and request, a handle number; see
    lua/raw.rs) and the full path for every other: both give the same
    results and errors, under pcall too, and an error in one request
    leaves the slot usable for the next."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "paths.lua", WAIT_PATHS_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")
    for key in ("plain/k", "float/k", "pcall/k", "timeout/k", "second/k", "made/k",
                "queued/k", "twice/k"):
        mc_set(b, key, b"v-" + key.encode())
    with mr.client() as c:
        for key in ("plain/k", "float/k", "pcall/k", "timeout/k", "second/k"):
            value = b"v-" + key.encode()
            assert c.request(b"get %s\r\n" % key.encode(), b"END\r\n") == \
                b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key.encode(), len(value), value)
        reply = c.request(b"get badhandle/k\r\n")
        assert reply.startswith(b"SERVER_ERROR false ") and b"invalid handle 7" in reply, reply
        reply = c.request(b"get sorted/k\r\n")
        assert reply.startswith(b"SERVER_ERROR false ") and b"cannot wait here" in reply, reply
        assert c.request(b"get made/k\r\n") == b"SERVER_ERROR made VA 8\r\n"
        assert c.request(b"get queued/k\r\n") == \
            b"SERVER_ERROR VALUE queued/k 0 10 VALUE queued/k 0 10\r\n"
        assert c.request(b"get twice/k\r\n") == b"SERVER_ERROR true VALUE twice/k 0 9\r\n"
        # Nothing left behind by the errors: the common call still works.
        assert c.request(b"get plain/k\r\n", b"END\r\n") == \
            b"VALUE plain/k 0 9\r\nv-plain/k\r\nEND\r\n"
        c.assert_alive()


OTHER_SLOT_STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b", host, tonumber(port)) }) }
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(pools.p)
    local first -- the first slot's rctx, wrongly shared with every slot
    fgen:ready({ n = "other", f = function(rctx)
        first = first or rctx
        return function(r)
            local what = string.match(r:key(), "^([%w_]+)/")
            if what == "hold" then
                rctx:sleep(0.5)
                return rctx:enqueue_and_wait(r, h)
            end
            local waits = {
                enqueue_and_wait = function() return first:enqueue_and_wait(r, h) end,
                wait_cond = function() return first:wait_cond(1) end,
                wait_handle = function() return first:wait_handle(h) end,
                sleep = function() return first:sleep(0) end,
            }
            local ok, err = pcall(waits[what])
            return "SERVER_ERROR " .. tostring(ok) .. " " .. tostring(err)
        end
    end })
    mcp.attach(mcp.CMD_GET, fgen)
end
"""


def test_a_wait_on_another_slots_rctx_is_refused(backends, memroute_factory, startfile_dir):
    """A slot function waiting on an rctx another slot's generator was
    given (kept in a variable the generator shares) is refused with an
    error naming the mistake: that other slot's driver takes its replies,
    so the wait could hang the request. The slot holding that rctx is not
    disturbed."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "other.lua", OTHER_SLOT_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")
    mc_set(b, "hold/k", b"held")
    with mr.client() as holder, mr.client() as c:
        # The first slot (whose rctx is shared) is busy for 0.5 s, so the
        # requests below run in other slots.
        holder.send(b"get hold/k\r\n")
        time.sleep(0.1)
        for wait in ("enqueue_and_wait", "wait_cond", "wait_handle", "sleep"):
            reply = c.request(b"get %s/k\r\n" % wait.encode())
            assert reply.startswith(b"SERVER_ERROR false "), reply
            assert b"rctx:%s: this rctx belongs to another request slot" % wait.encode() \
                in reply, reply
        assert holder.read_line(timeout=5) == b"VALUE hold/k 0 4\r\n"
        assert holder.read_line(timeout=5) == b"held\r\n"
        assert holder.read_line(timeout=5) == b"END\r\n"
        c.assert_alive()


MIXED_OBJECTS_STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b", host, tonumber(port)) }) }
end

function mcp_config_routes(pools)
    local p = pools.p
    -- The older generation: a classic route keeps the last set it saw.
    mcp.attach(mcp.CMD_SET, function(r)
        kept = r
        return p(r)
    end)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(p)
    fgen:ready({ n = "mixed", f = function(rctx)
        return function(r)
            local how = string.match(r:key(), "^(%w+)/")
            if how == "direct" then
                -- The common call's shape, with the kept classic object.
                return rctx:enqueue_and_wait(kept, h)
            elseif how == "queued" then
                rctx:enqueue(kept, h)
                rctx:wait_cond(1)
                return rctx:res_any(h)
            end
            return rctx:enqueue_and_wait(r, h)
        end
    end })
    mcp.attach(mcp.CMD_GET, fgen)
end
"""


def test_a_classic_request_object_can_be_queued_on_an_rctx(backends, memroute_factory,
                                                          startfile_dir):
    """A startfile may use both API generations: a request object of a
    classic route (kept in a global) can be queued on a funcgen's rctx,
    through the fast path and through rctx:enqueue, and is sent as it is."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "mixed.lua", MIXED_OBJECTS_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")
    with mr.client() as c:
        assert c.request(b"set mixed/k 0 0 2\r\nv1\r\n") == b"STORED\r\n"
        mc_set(b, "mixed/k", b"changed")
        # Each replays the kept set: the backend's value is set again.
        assert c.request(b"get direct/x\r\n") == b"STORED\r\n"
        assert mc_get(b, "mixed/k") == b"v1"
        mc_set(b, "mixed/k", b"changed")
        assert c.request(b"get queued/x\r\n") == b"STORED\r\n"
        assert mc_get(b, "mixed/k") == b"v1"
        c.assert_alive()


SLOT_COROUTINE_STARTFILE = r"""
function mcp_config_pools()
    return {}
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    fgen:ready({ n = "counting", f = function(rctx)
        local served = 0 -- this slot's own count
        return function(r)
            served = served + 1
            local what = string.match(r:key(), "^(%w+)/")
            if what == "fail" then
                error("failed on purpose")
            elseif what == "sleep" then
                rctx:sleep(0.3)
            end
            return "SERVER_ERROR served " .. served .. " " .. r:key()
        end
    end })
    mcp.attach(mcp.CMD_GET, fgen)
end
"""


def test_a_slot_outlives_its_coroutine(memroute_factory, startfile_dir):
    """Each slot runs its function in a coroutine of its own, kept from
    request to request. A request that fails, or whose client leaves while
    it waits, costs the slot its coroutine, not the slot: the next request
    runs in the same slot (its count goes on) with its own request."""
    path = write_startfile(startfile_dir, "slotco.lua", SLOT_COROUTINE_STARTFILE)
    mr = memroute_factory("--config", str(path), "-t", "1")
    with mr.client() as c:
        assert c.request(b"get a/1\r\n") == b"SERVER_ERROR served 1 a/1\r\n"
        assert c.request(b"get a/2\r\n") == b"SERVER_ERROR served 2 a/2\r\n"
        assert c.request(b"get fail/3\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"get a/4\r\n") == b"SERVER_ERROR served 4 a/4\r\n"
    with mr.client() as leaving:
        leaving.send(b"get sleep/5\r\n")
        time.sleep(0.1)
    time.sleep(0.4)
    with mr.client() as c:
        assert c.request(b"get a/6\r\n") == b"SERVER_ERROR served 6 a/6\r\n"
        assert c.request(b"get sleep/7\r\n") == b"SERVER_ERROR served 7 sleep/7\r\n"
        assert c.request(b"get a/8\r\n") == b"SERVER_ERROR served 8 a/8\r\n"
        c.assert_alive()


# The pool of one backend ("host:port" in the start argument), and the
# start of a routes function that gives it a funcgen with one handle, h.
ONE_POOL_FUNCGEN = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return mcp.pool({ mcp.backend("b1", host, tonumber(port)) })
end

function mcp_config_routes(pool)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(pool)
"""

# res:elapsed() of a pool's response, read by a funcgen (mg) and by a
# classic route (get).
ELAPSED_STARTFILE = ONE_POOL_FUNCGEN + r"""
    fgen:ready({ n = "elapsed", f = function(rctx)
        return function(r)
            local res = rctx:enqueue_and_wait(r, h)
            return "SERVER_ERROR elapsed " .. res:elapsed() .. " " .. res:line()
        end
    end })
    mcp.attach(mcp.CMD_MG, fgen)
    mcp.attach(mcp.CMD_GET, function(r)
        local res = pool(r)
        return "SERVER_ERROR elapsed " .. res:elapsed() .. " " .. res:line()
    end)
end
"""


@pytest.mark.parametrize("request_line", [b"mg el/k v\r\n", b"get el/k\r\n"],
                         ids=["funcgen", "classic"])
def test_res_elapsed_is_the_backend_round_trip(backends, memroute_factory, startfile_dir,
                                               request_line):
    """``res:elapsed()`` is each request's own round trip to its backend, in
    microseconds (a memcached pool's reader times it): a request held by a
    stopped backend for 0.4 s reports at least that, and the next one,
    answered at once, reports its own short trip, not the last one's."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "elapsed.lua", ELAPSED_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")

    def elapsed(reply: bytes) -> int:
        m = re.match(rb"SERVER_ERROR elapsed (\d+) (EN|END)\r\n$", reply)
        assert m, reply
        return int(m.group(1))

    with mr.client() as c:
        assert elapsed(c.request(request_line)) < 400_000
        os.kill(b.pid, signal.SIGSTOP)
        try:
            c.send(request_line)
            time.sleep(0.4)
        finally:
            os.kill(b.pid, signal.SIGCONT)
        held = elapsed(c.read_line())
        assert 400_000 <= held < 5_000_000, held
        after = elapsed(c.request(request_line))
        assert after < held - 200_000, (held, after)


# Route code an operator could get wrong, each behind a key prefix.
MISUSE_STARTFILE = r"""
local function bad_error_object()
    -- An error value whose __tostring fails (or yields).
    error(setmetatable({}, { __tostring = function() error("x") end }))
end
""" + ONE_POOL_FUNCGEN + r"""
    fgen:ready({ n = "misuse", f = function(rctx)
        return function(r)
            local key = r:key()
            if string.find(key, "^errobj/") then
                bad_error_object()
            elseif string.find(key, "^cocreate/") then
                -- The wait yields to this coroutine's resumer, not to the
                -- slot's driver.
                local co = coroutine.create(function()
                    return rctx:enqueue_and_wait(r, h)
                end)
                coroutine.resume(co)
                coroutine.resume(co)
                return "SERVER_ERROR made its own coroutine"
            end
            return rctx:enqueue_and_wait(r, h)
        end
    end })
    mcp.attach(mcp.CMD_MG, fgen)
    mcp.attach(mcp.CMD_GET, function(r)
        if string.find(r:key(), "^errobj/") then
            bad_error_object()
        end
        return pool(r)
    end)
end
"""


def test_a_route_error_whose_tostring_fails_is_a_lua_failure(backends, memroute_factory,
                                                              startfile_dir):
    """An error value with a `__tostring` that itself fails answers `SERVER_ERROR
    lua failure`, in a funcgen slot and in a classic route; the server goes
    on. Its text was made outside any protected call, and the failing
    metamethod aborted the process (SIGABRT, no message)."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "misuse.lua", MISUSE_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")
    mc_set(b, "plain/k", b"v")
    with mr.client() as c:
        for _ in range(3):
            assert c.request(b"mg errobj/a v\r\n") == b"SERVER_ERROR lua failure\r\n"
            assert c.request(b"get errobj/b\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"mg plain/k v\r\n", b"\r\nv\r\n") == b"VA 1\r\nv\r\n"
    assert mr.is_running()


def test_a_wait_in_a_coroutine_the_slot_made_does_not_keep_the_slot(backends, memroute_factory,
                                                                     startfile_dir):
    """A slot function that waits inside a coroutine it made itself gets its
    reply, and its slot is free again: the request it started no longer
    counts as pending once the slot function returns. Each such request
    kept its slot for ever (20,000 requests: 20,000 slots, 71 MB)."""
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "misuse.lua", MISUSE_STARTFILE)
    mr = memroute_factory("--config", str(path), "--config-arg", b.addr, "-t", "1")
    with mr.client() as c:
        for i in range(300):
            assert c.request(b"mg cocreate/%d v\r\n" % i) == \
                b"SERVER_ERROR made its own coroutine\r\n"
        slots = int(stats_dict(c, b"proxyfuncs")["slots_misuse"])
    assert slots <= 2, slots

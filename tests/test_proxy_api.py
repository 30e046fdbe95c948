"""The Lua API of proxy mode, function by function, end to end: memroute
runs startfiles written by the tests against real memcached backends, and
routes encode what they observed into their reply (``SERVER_ERROR
key=...``), so the tests assert bytes.

One memroute with the big API startfile (below) serves most tests of this
module; tests that need their own startfile (attach variants, bad
configurations) start their own.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid

import pytest

from conftest import (HOST, RawClient, _factory, free_port, mc_get, mc_set,
                      stats_dict, wait_until, write_startfile)

# --------------------------------------------------------------------------
# the shared API startfile
# --------------------------------------------------------------------------

API_STARTFILE = r"""
-- start_arg: "host:port" of b1, b2, b3, a black hole (accepts, never
-- answers), a dead port (nothing listens) and a slow server (answers every
-- get with a miss after a delay), comma-separated.
local function split_arg()
    local out = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(out, { host = host, port = tonumber(port) })
    end
    return out
end

function mcp_config_pools()
    mcp.add_stat(1, "api_calls")
    mcp.add_stat(7, "api_updown")
    local a = split_arg()
    -- positional form
    local b1 = mcp.backend("b1", a[1].host, a[1].port)
    -- table form with every option
    local b2 = mcp.backend{ label = "b2", host = a[2].host, port = a[2].port,
        connecttimeout = 2, readtimeout = 2.5, retrywaittime = 0.5, failurelimit = 2,
        connections = 2, tcpkeepalive = true, down = false, flaptime = 0,
        flapbackofframp = 1.5, flapbackoffmax = 10 }
    -- port as a string, as memcached's proxy accepts
    local b3 = mcp.backend("b3", a[3].host, tostring(a[3].port))
    local hole = mcp.backend{ label = "hole", host = a[4].host, port = a[4].port,
        connecttimeout = 3, readtimeout = 3, retrywaittime = 0.2 }
    local dead = mcp.backend{ label = "dead", host = a[5].host, port = a[5].port,
        connecttimeout = 1, retrytimeout = 0.2 }
    local down = mcp.backend{ label = "down", host = a[1].host, port = a[1].port, down = true }
    local slow = mcp.backend{ label = "slow", host = a[6].host, port = a[6].port }
    return {
        all = mcp.pool({ b1, b2, b3 }),
        p1 = mcp.pool({ b1 }), p2 = mcp.pool({ b2 }), p3 = mcp.pool({ b3 }),
        hole = mcp.pool({ hole }), dead = mcp.pool({ dead }), down = mcp.pool({ down }),
        slow = mcp.pool({ slow }),
        arg_seen_by_config = mcp.start_arg,
        nested = { list = { 1, 2.5, "x", true } },
    }
end

local function code_name(c)
    for k, v in pairs(mcp) do
        if type(k) == "string" and string.sub(k, 1, 10) == "MCMC_CODE_" and v == c then
            return string.sub(k, 11)
        end
    end
    return "?" .. tostring(c)
end

local function describe(res)
    return string.format("ok=%s hit=%s code=%s line=%s vlen=%d",
        tostring(res:ok()), tostring(res:hit()), code_name(res:code()), res:line(), res:vlen())
end

function mcp_config_routes(pools)
    local routes = {}
    local function pool_list(names)
        local list = {}
        for name in string.gmatch(names, "[^,]+") do
            local p = pools[name]
            if p == nil then error("no pool " .. name) end
            table.insert(list, p)
        end
        return list
    end

    routes.echo = function(r)
        return string.format("SERVER_ERROR cmd=%d key=%s ntokens=%d line=%s vlen=%d value=%s",
            r:command(), r:key(), r:ntokens(), r:raw_line(), r:vlen(), r:raw_value())
    end
    routes.tok = function(r)
        local parts = {}
        for i = 1, r:ntokens() + 1 do
            table.insert(parts, tostring(r:token(i)) .. ":" .. tostring(r:token_int(i)))
        end
        return "SERVER_ERROR " .. table.concat(parts, " ")
    end
    routes.tokset = function(r)
        -- rewrite the key token, then send the rewritten request on
        local old = r:token(2, "tokset/renamed")
        local res = pools.p1(r)
        return "SERVER_ERROR old=" .. old .. " new=" .. r:key() .. " " .. describe(res)
    end
    routes.tokdel = function(r)
        local old = r:token(r:ntokens(), "")
        return "SERVER_ERROR removed=" .. old .. " line=" .. r:raw_line()
    end
    routes.ltrim = function(r)
        r:ltrimkey(6)
        local res = pools.p1(r)
        return "SERVER_ERROR key=" .. r:key() .. " line=" .. r:raw_line() .. " " .. describe(res)
    end
    routes.rtrim = function(r)
        r:rtrimkey(4)
        return "SERVER_ERROR key=" .. r:key() .. " line=" .. r:raw_line()
    end
    routes.flag = function(r)
        local t_has, t_tok = r:flag_token("T")
        local v_has, v_tok = r:flag_token("v")
        local o_has, o_tok = r:flag_token("O")
        local out = string.format("has_v=%s has_k=%s has_O=%s T=%s,%s v=%s,%s O=%s,%s",
            tostring(r:has_flag("v")), tostring(r:has_flag("k")), tostring(r:has_flag("O")),
            tostring(t_has), tostring(t_tok), tostring(v_has), tostring(v_tok),
            tostring(o_has), tostring(o_tok))
        local _, old = r:flag_token("T", "T99")
        out = out .. " replaced=" .. tostring(old) .. " line=" .. r:raw_line()
        r:flag_token("k", "")
        return "SERVER_ERROR " .. out .. " line2=" .. r:raw_line()
    end
    routes.req = function(r)
        local made = mcp.request("set req/made 0 0 5\r\n", "hello\r\n")
        local res = pools.p1(made)
        local get = mcp.request("get req/made\r\n")
        local res2 = pools.p1(get)
        -- the value copied from a response, and from a request, as memcached
        local from_res = pools.p1(mcp.request("set req/fromres 0 0 5\r\n", res2))
        local from_req = pools.p1(mcp.request("ms req/fromreq 5 T0\r\n", made))
        return string.format("SERVER_ERROR cmd=%d key=%s vlen=%d set=%s get=%s/%d copies=%s,%s",
            made:command(), made:key(), made:vlen(), res:line(), res2:line(), res2:vlen(),
            from_res:line(), from_req:line())
    end
    routes.badreq = function(r)
        mcp.request("bogus command\r\n")
        return "SERVER_ERROR not reached"
    end
    routes.badval = function(r)
        mcp.request("set req/t 0 0 1\r\n", {})
        return "SERVER_ERROR not reached"
    end
    routes.res = function(r)
        local res = pools.p1(r)
        local el = res:elapsed()
        return "SERVER_ERROR " .. describe(res) ..
            " elapsed_ok=" .. tostring(math.type(el) == "integer" and el >= 0 and el < 5000000)
    end
    routes.resdead = function(r)
        return "SERVER_ERROR " .. describe(pools.dead(r))
    end
    routes.resdown = function(r)
        return "SERVER_ERROR " .. describe(pools.down(r))
    end
    routes.pass = function(r)
        return pools.all(r)
    end
    routes.passdead = function(r)
        return pools.dead(r)
    end
    -- aw/<MODE>/<n>/<pool,pool...>/<anything>
    routes.aw = function(r)
        local mode, n, names = string.match(r:key(), "^aw/(%u+)/(%d+)/([%w,]+)/")
        local results
        if mode == "DEFAULT" then
            results = mcp.await(r, pool_list(names))
        else
            results = mcp.await(r, pool_list(names), tonumber(n), mcp["AWAIT_" .. mode])
        end
        local hits, oks, lines = 0, 0, {}
        for _, res in ipairs(results) do
            if res:hit() then hits = hits + 1 end
            if res:ok() then oks = oks + 1 end
            table.insert(lines, res:line())
        end
        return string.format("SERVER_ERROR n=%d hits=%d oks=%d lines=%s", #results, hits, oks,
            table.concat(lines, "|"))
    end
    routes.int = function(r)
        local res = mcp.internal(r)
        return res
    end
    routes.intinfo = function(r)
        return "SERVER_ERROR " .. describe(mcp.internal(r))
    end
    routes.log = function(r)
        mcp.log("api-log-marker " .. r:key())
        return "SERVER_ERROR logged"
    end
    routes.stat = function(r)
        mcp.stat(1, 1)
        mcp.stat(7, -2)
        mcp.stat(7)
        return "SERVER_ERROR counted"
    end
    routes.time = function(r)
        return string.format("SERVER_ERROR real=%d mono=%d", mcp.time_real_millis(),
            mcp.time_mono_millis())
    end
    routes.arg = function(r)
        local n = pools.nested.list
        return string.format("SERVER_ERROR worker=%s config=%s nested=%s,%s,%s,%s",
            tostring(mcp.start_arg), tostring(pools.arg_seen_by_config),
            tostring(n[1]), tostring(n[2]), n[3], tostring(n[4]))
    end
    routes.err = function(r)
        error("deliberate failure in route")
    end
    routes.errafter = function(r)
        pools.p1(r)
        error("deliberate failure after a backend call")
    end
    routes.badret = function(r)
        return 42
    end
    routes.nilret = function(r)
        return nil
    end
    routes.cfgonly = function(r)
        mcp.backend("x", "127.0.0.1", 1)
        return "SERVER_ERROR not reached"
    end
    routes.lateattach = function(r)
        mcp.attach(mcp.CMD_GET, function(r) return "x" end)
        return "SERVER_ERROR not reached"
    end

    local default = routes.pass
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        local prefix = string.match(r:key(), "^(%w+)/")
        return (routes[prefix] or default)(r)
    end)
end
"""


class BlackHole:
    """A TCP listener that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return "%s:%d" % (HOST, self.port)

    def _run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)  # read nothing, answer nothing

    def close(self):
        self.stopping = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


class SlowServer(BlackHole):
    """Answers `version` at once and every get/mg with a miss after DELAY s."""

    DELAY = 0.4

    def _run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        try:
            while not self.stopping:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if line.startswith(b"version"):
                        conn.sendall(b"VERSION 1.6.18\r\n")
                    elif line.startswith(b"get "):
                        time.sleep(self.DELAY)
                        conn.sendall(b"END\r\n")
                    elif line.startswith(b"mg "):
                        time.sleep(self.DELAY)
                        conn.sendall(b"EN\r\n")
                    else:
                        conn.sendall(b"ERROR\r\n")
        except OSError:
            return


class ApiEnv:
    def __init__(self, backends, hole, memroute, dead_port, slow):
        self.b = backends  # b1, b2, b3
        self.hole = hole
        self.mr = memroute
        self.dead_port = dead_port
        self.slow = slow

    @property
    def start_arg(self) -> str:
        return ",".join([b.addr for b in self.b] + [
            self.hole.addr, "%s:%d" % (HOST, self.dead_port), self.slow.addr])

    def client(self, timeout: float = 5.0) -> RawClient:
        return self.mr.client(timeout)


@pytest.fixture(scope="module")
def api(server_workdir, tmp_path_factory):
    mcf = _factory("memcached", server_workdir)
    mrf = _factory("memroute", server_workdir)
    hole = BlackHole()
    slow = SlowServer()
    try:
        env = ApiEnv([mcf() for _ in range(3)], hole, None, free_port(), slow)
        d = tmp_path_factory.mktemp("api")
        path = write_startfile(d, "api.lua", API_STARTFILE)
        env.mr = mrf("--config", str(path), "--config-arg", env.start_arg, "-v", "-t", "2")
        yield env
    finally:
        mrf.stop_all()
        mcf.stop_all()
        hole.close()
        slow.close()


def ask(env: ApiEnv, data: bytes, terminator: bytes = b"\r\n") -> bytes:
    with env.client() as c:
        return c.request(data, terminator)


# --------------------------------------------------------------------------
# request object
# --------------------------------------------------------------------------


def test_request_command_key_raw_line_vlen(api):
    assert ask(api, b"get echo/a\r\n") == \
        b"SERVER_ERROR cmd=7 key=echo/a ntokens=2 line=get echo/a vlen=0 value=\r\n"
    assert ask(api, b"set echo/b 5 0 3\r\nabc\r\n") == \
        b"SERVER_ERROR cmd=9 key=echo/b ntokens=5 line=set echo/b 5 0 3 vlen=3 value=abc\r\n"
    assert ask(api, b"mg echo/c v t\r\n") == \
        b"SERVER_ERROR cmd=1 key=echo/c ntokens=4 line=mg echo/c v t vlen=0 value=\r\n"
    assert ask(api, b"ms echo/d 2 T0\r\nhi\r\n") == \
        b"SERVER_ERROR cmd=2 key=echo/d ntokens=4 line=ms echo/d 2 T0 vlen=2 value=hi\r\n"
    assert ask(api, b"gat 10 echo/e\r\n") == \
        b"SERVER_ERROR cmd=8 key=echo/e ntokens=3 line=gat 10 echo/e vlen=0 value=\r\n"


@pytest.mark.parametrize("line,cmd_const", [
    (b"get echo/k", "CMD_GET"), (b"gets echo/k", "CMD_GETS"), (b"gat 1 echo/k", "CMD_GAT"),
    (b"gats 1 echo/k", "CMD_GATS"), (b"delete echo/k", "CMD_DELETE"),
    (b"incr echo/k 1", "CMD_INCR"), (b"decr echo/k 1", "CMD_DECR"),
    (b"touch echo/k 1", "CMD_TOUCH"), (b"mg echo/k", "CMD_MG"), (b"md echo/k", "CMD_MD"),
    (b"ma echo/k", "CMD_MA"), (b"me echo/k", "CMD_ME"),
    (b"set echo/k 0 0 1\r\nx", "CMD_SET"), (b"add echo/k 0 0 1\r\nx", "CMD_ADD"),
    (b"replace echo/k 0 0 1\r\nx", "CMD_REPLACE"), (b"append echo/k 0 0 1\r\nx", "CMD_APPEND"),
    (b"prepend echo/k 0 0 1\r\nx", "CMD_PREPEND"), (b"cas echo/k 0 0 1 5\r\nx", "CMD_CAS"),
    (b"ms echo/k 1\r\nx", "CMD_MS"),
])
def test_request_command_ids(api, line, cmd_const):
    ids = {"CMD_MG": 1, "CMD_MS": 2, "CMD_MD": 3, "CMD_MA": 5, "CMD_ME": 6, "CMD_GET": 7,
           "CMD_GAT": 8, "CMD_SET": 9, "CMD_ADD": 10, "CMD_CAS": 11, "CMD_GETS": 12,
           "CMD_GATS": 13, "CMD_INCR": 14, "CMD_DECR": 15, "CMD_TOUCH": 16, "CMD_APPEND": 17,
           "CMD_DELETE": 18, "CMD_REPLACE": 19, "CMD_PREPEND": 20}
    reply = ask(api, line + b"\r\n")
    assert reply.startswith(b"SERVER_ERROR cmd=%d key=echo/k " % ids[cmd_const]), reply


def test_cmd_constants_match_ids(api, startfile_dir, memroute_factory):
    """mcp.CMD_* have the values r:command() returns (checked in Lua)."""
    path = write_startfile(startfile_dir, "consts.lua", """
        function mcp_config_pools() return {} end
        function mcp_config_routes()
            mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
                local names = {}
                for k, v in pairs(mcp) do
                    if type(k) == "string" and string.sub(k, 1, 4) == "CMD_" and v == r:command() then
                        table.insert(names, k)
                    end
                end
                table.sort(names)
                return "SERVER_ERROR " .. table.concat(names, ",")
            end)
        end
    """)
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR CMD_GET\r\n"
        assert c.request(b"mg k v\r\n") == b"SERVER_ERROR CMD_MG\r\n"
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"SERVER_ERROR CMD_SET\r\n"
        assert c.request(b"ma k\r\n") == b"SERVER_ERROR CMD_MA\r\n"


def test_request_token_and_token_int(api):
    # tokens past the end are nil
    assert ask(api, b"incr tok/n 42\r\n") == \
        b"SERVER_ERROR incr:nil tok/n:nil 42:42 nil:nil\r\n"
    assert ask(api, b"set tok/s 7 -1 3\r\nabc\r\n") == \
        b"SERVER_ERROR set:nil tok/s:nil 7:7 -1:-1 3:3 nil:nil\r\n"


def test_request_token_rewrite_reaches_backend(api):
    b1 = api.b[0]
    assert ask(api, b"set tokset/orig 0 0 3\r\nnew\r\n") == \
        b"SERVER_ERROR old=tokset/orig new=tokset/renamed ok=true hit=false code=STORED " \
        b"line=STORED vlen=0\r\n"
    assert mc_get(b1, "tokset/renamed") == b"new"
    assert mc_get(b1, "tokset/orig") is None


def test_request_token_empty_string_deletes(api):
    assert ask(api, b"mg tokdel/x v t\r\n") == b"SERVER_ERROR removed=t line=mg tokdel/x v\r\n"
    assert ask(api, b"get tokdel/x tokdel/y\r\n") == \
        b"END\r\n"  # multi-get: each key's route failed (a miss), one END


def test_request_token_delete_of_mandatory_token_is_lua_failure(api):
    # touch needs its ttl: the rewrite makes an invalid request, a Lua error
    with api.client() as c:
        assert c.request(b"touch tokdel/x 100\r\n") == b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()


def test_request_ltrimkey_reaches_backend(api):
    b1 = api.b[0]
    assert ask(api, b"set ltrim/abc 0 0 2\r\nlt\r\n") == \
        b"SERVER_ERROR key=abc line=set abc 0 0 2 ok=true hit=false code=STORED " \
        b"line=STORED vlen=0\r\n"
    assert mc_get(b1, "abc") == b"lt"
    assert mc_get(b1, "ltrim/abc") is None
    # trimming the whole key away is an error
    with api.client() as c:
        assert c.request(b"get ltrim/\r\n") == b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()


def test_request_rtrimkey(api):
    assert ask(api, b"get rtrim/abcd\r\n") == b"SERVER_ERROR key=rtrim/ line=get rtrim/\r\n"
    assert ask(api, b"mg rtrim/xy12 v\r\n") == b"SERVER_ERROR key=rtrim/ line=mg rtrim/ v\r\n"


def test_request_has_flag_and_flag_token(api):
    assert ask(api, b"mg flag/x v T30 k\r\n") == (
        b"SERVER_ERROR has_v=true has_k=true has_O=false T=true,30 v=true,nil O=false,nil "
        b"replaced=30 line=mg flag/x v T99 k line2=mg flag/x v T99\r\n")
    # not a meta command: no flags
    assert ask(api, b"get flag/x\r\n") == (
        b"SERVER_ERROR has_v=false has_k=false has_O=false T=false,nil v=false,nil "
        b"O=false,nil replaced=nil line=get flag/x line2=get flag/x\r\n")


def test_mcp_request(api):
    b1 = api.b[0]
    assert ask(api, b"get req/x\r\n") == \
        b"SERVER_ERROR cmd=9 key=req/made vlen=5 set=STORED get=VALUE req/made 0 5/5 " \
        b"copies=STORED,HD\r\n"
    assert mc_get(b1, "req/made") == b"hello"
    assert mc_get(b1, "req/fromres") == b"hello"
    assert mc_get(b1, "req/fromreq") == b"hello"
    with api.client() as c:
        assert c.request(b"get badreq/x\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"get badval/x\r\n") == b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()


# --------------------------------------------------------------------------
# response object
# --------------------------------------------------------------------------


def test_response_methods_and_codes(api):
    b1 = api.b[0]
    mc_set(b1, "res/hit", b"12345")
    cases = [
        (b"get res/hit\r\n", b"ok=true hit=true code=OK line=VALUE res/hit 0 5 vlen=5"),
        (b"get res/miss\r\n", b"ok=true hit=false code=END line=END vlen=0"),
        (b"set res/s 0 0 1\r\nx\r\n", b"ok=true hit=false code=STORED line=STORED vlen=0"),
        (b"add res/s 0 0 1\r\nx\r\n",
         b"ok=true hit=false code=NOT_STORED line=NOT_STORED vlen=0"),
        (b"cas res/s 0 0 1 999999\r\nx\r\n", b"ok=true hit=false code=EXISTS line=EXISTS vlen=0"),
        (b"touch res/s 100\r\n", b"ok=true hit=false code=TOUCHED line=TOUCHED vlen=0"),
        (b"delete res/s\r\n", b"ok=true hit=false code=DELETED line=DELETED vlen=0"),
        (b"delete res/s\r\n", b"ok=true hit=false code=NOT_FOUND line=NOT_FOUND vlen=0"),
        (b"mg res/hit v\r\n", b"ok=true hit=true code=OK line=VA 5 vlen=5"),
        (b"mg res/miss v\r\n", b"ok=true hit=false code=END line=EN vlen=0"),
        (b"md res/miss\r\n", b"ok=true hit=false code=NOT_FOUND line=NF vlen=0"),
        (b"incr res/hit 1\r\n", b"ok=true hit=false code=OK line=12346 vlen=0"),
        (b"ms res/m 2\r\nhi\r\n", b"ok=true hit=false code=OK line=HD vlen=0"),
        (b"incr res/m 1\r\n",
         b"ok=false hit=false code=CLIENT_ERROR "
         b"line=CLIENT_ERROR cannot increment or decrement non-numeric value vlen=0"),
    ]
    with api.client() as c:
        for req, want in cases:
            assert c.request(req) == b"SERVER_ERROR " + want + b" elapsed_ok=true\r\n", req


def test_response_backend_failure_and_down(api):
    with api.client() as c:
        t0 = time.monotonic()
        assert c.request(b"get resdead/x\r\n") == (
            b"SERVER_ERROR ok=false hit=false code=SERVER_ERROR "
            b"line=SERVER_ERROR backend failure vlen=0\r\n")
        assert c.request(b"get resdown/x\r\n") == (
            b"SERVER_ERROR ok=false hit=false code=SERVER_ERROR "
            b"line=SERVER_ERROR backend failure vlen=0\r\n")
        assert c.request(b"get passdead/x\r\n") == b"SERVER_ERROR backend failure\r\n"
        assert time.monotonic() - t0 < 3.0
        c.assert_alive()


# --------------------------------------------------------------------------
# mcp.await
# --------------------------------------------------------------------------


def timed(env, req: bytes):
    with env.client(timeout=8) as c:
        t0 = time.monotonic()
        reply = c.request(req)
        return reply, time.monotonic() - t0


def test_await_default_waits_for_all(api):
    key = "aw/DEFAULT/0/p1,p2,p3/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[0], key, b"1")
    mc_set(api.b[2], key, b"3")
    reply, _ = timed(api, b"get %s\r\n" % key.encode())
    m = re.match(rb"SERVER_ERROR n=3 hits=2 oks=3 lines=(.*)\r\n", reply)
    assert m, reply
    assert sorted(m.group(1).split(b"|")) == sorted(
        [b"VALUE %s 0 1" % key.encode()] * 2 + [b"END"])


def test_await_set_reaches_every_pool(api):
    key = "aw/GOOD/0/p1,p2,p3/%s" % uuid.uuid4().hex[:6]
    reply, _ = timed(api, b"set %s 0 0 3\r\nall\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=3 hits=0 oks=3 lines=STORED|STORED|STORED\r\n", reply
    assert [mc_get(b, key) for b in api.b] == [b"all"] * 3


def test_await_good_n1_returns_at_first_hit(api):
    key = "aw/GOOD/1/hole,p1/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[0], key, b"v")
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=1 hits=1 oks=1 lines=VALUE %s 0 1\r\n" % key.encode()
    assert took < 1.5, "AWAIT_GOOD n=1 waited for the black hole (%.2fs)" % took


def test_await_good_counts_only_hits(api):
    # a miss is not GOOD: with n=1 and only misses it returns once every
    # pool has answered, with every result
    key = "aw/GOOD/1/p1,p2/%s" % uuid.uuid4().hex[:6]
    reply, _ = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=2 hits=0 oks=2 lines=END|END\r\n"


def test_await_any_n(api):
    key = "aw/ANY/2/p1,hole,p2/%s" % uuid.uuid4().hex[:6]
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=2 hits=0 oks=2 lines=END|END\r\n"
    assert took < 1.5


def test_await_ok_counts_misses(api):
    key = "aw/OK/2/hole,p1,p3/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[2], key, b"v")
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    m = re.match(rb"SERVER_ERROR n=2 hits=1 oks=2 lines=(.*)\r\n", reply)
    assert m, reply
    assert sorted(m.group(1).split(b"|")) == [b"END", b"VALUE %s 0 1" % key.encode()]
    assert took < 1.5


def test_await_first_returns_the_first_pools_result(api):
    key = "aw/FIRST/0/p1,p2/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[1], key, b"second")  # only the second pool has it
    for _ in range(5):
        reply, _ = timed(api, b"get %s\r\n" % key.encode())
        assert reply == b"SERVER_ERROR n=1 hits=0 oks=1 lines=END\r\n"
    # not waiting on the others
    key = "aw/FIRST/0/p1,hole/%s" % uuid.uuid4().hex[:6]
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=1 hits=0 oks=1 lines=END\r\n"
    assert took < 1.5
    # the first pool is the slowest: still only its result, after waiting for it
    key = "aw/FIRST/2/slow,p2/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[1], key, b"second")
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=1 hits=0 oks=1 lines=END\r\n"
    assert took >= SlowServer.DELAY * 0.8


def test_await_fastgood(api):
    key = "aw/FASTGOOD/2/hole,p2/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[1], key, b"fast")
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=1 hits=1 oks=1 lines=VALUE %s 0 4\r\n" % key.encode()
    assert took < 1.5
    # no hit anywhere: misses count towards n (as AWAIT_OK)
    key = "aw/FASTGOOD/2/p1,hole,p2/%s" % uuid.uuid4().hex[:6]
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=2 hits=0 oks=2 lines=END|END\r\n"
    assert took < 1.5
    # a hit arriving after a miss still ends the wait at once
    key = "aw/FASTGOOD/3/slow,p3,hole/%s" % uuid.uuid4().hex[:6]
    mc_set(api.b[2], key, b"hit")
    reply, took = timed(api, b"get %s\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=1 hits=1 oks=1 lines=VALUE %s 0 3\r\n" % key.encode()
    assert took < SlowServer.DELAY


def test_await_background(api):
    key = "aw/BACKGROUND/0/p1,p3,hole/%s" % uuid.uuid4().hex[:6]
    reply, took = timed(api, b"set %s 0 0 2\r\nbg\r\n" % key.encode())
    assert reply == b"SERVER_ERROR n=0 hits=0 oks=0 lines=\r\n"
    assert took < 1.5
    # the requests still run
    wait_until(lambda: mc_get(api.b[0], key) == b"bg" and mc_get(api.b[2], key) == b"bg",
               5, what="background sets to land")
    assert mc_get(api.b[1], key) is None


# mcp_config_pools() of the tests below that need one pool: `p`, one
# backend, the `--config-arg` host:port.
ONE_POOL_CONFIG = """
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b", host, tonumber(port)) }) }
end
"""


def test_await_bad_arguments_are_lua_failures(api, startfile_dir, memroute_factory):
    path = write_startfile(startfile_dir, "awbad.lua", ONE_POOL_CONFIG + """
        function mcp_config_routes(p)
            mcp.attach(mcp.CMD_GET, function(r) return mcp.await(r, { "not a pool" }) end)
            mcp.attach(mcp.CMD_SET, function(r) return mcp.await("not a request", {}) end)
            -- an empty pool list, an unknown mode
            mcp.attach(mcp.CMD_MG, function(r) return mcp.await(r, {}) end)
            mcp.attach(mcp.CMD_MD, function(r) return mcp.await(r, { p.p }, 1, 42) end)
        end
    """)
    mr = memroute_factory("--config", str(path), "--config-arg", api.b[0].addr)
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"mg k v\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"md k\r\n") == b"SERVER_ERROR lua failure\r\n"
        c.assert_alive()


# --------------------------------------------------------------------------
# mcp.internal, log, stats, time, start_arg
# --------------------------------------------------------------------------


def test_internal_uses_the_embedded_cache(api):
    with api.client() as c:
        assert c.request(b"set int/a 3 0 2\r\nhi\r\n") == b"STORED\r\n"
        assert c.request(b"get int/a\r\n", b"END\r\n") == b"VALUE int/a 3 2\r\nhi\r\nEND\r\n"
        assert c.request(b"mg int/a v f\r\n") == b"VA 2 f3\r\n"
        assert c.read_line() == b"hi\r\n"
        assert c.request(b"get intinfo/a\r\n") == \
            b"SERVER_ERROR ok=true hit=false code=END line=END vlen=0\r\n"
        assert c.request(b"delete int/a\r\n") == b"DELETED\r\n"
        assert c.request(b"get int/a\r\n") == b"END\r\n"
    # not on any backend
    assert all(mc_get(b, "int/a") is None for b in api.b)


def test_log_goes_to_stderr(api):
    marker = "log/%s" % uuid.uuid4().hex[:8]
    assert ask(api, b"get %s\r\n" % marker.encode()) == b"SERVER_ERROR logged\r\n"
    wait_until(lambda: ("api-log-marker " + marker) in api.mr.stderr_tail(100000), 5,
               what="mcp.log line in stderr")


def test_add_stat_and_stat_in_stats_proxy(api):
    with api.client() as c:
        before = stats_dict(c, b"proxy")
        assert "api_calls" in before and "api_updown" in before, before
        for _ in range(5):
            assert c.request(b"get stat/x\r\n") == b"SERVER_ERROR counted\r\n"
        after = stats_dict(c, b"proxy")
    assert int(after["api_calls"]) - int(before["api_calls"]) == 5
    assert int(after["api_updown"]) - int(before["api_updown"]) == -5
    assert int(after["routed_requests"]) - int(before["routed_requests"]) == 5


def test_stats_proxy_counts_requests_pipelined_before_it(api):
    """`stats proxy` behind routed requests in one write sees them counted."""
    with api.client() as c:
        before = int(stats_dict(c, b"proxy")["api_calls"])
        c.send(b"get stat/a\r\nget stat/b\r\nget stat/c\r\nstats proxy\r\n")
        reply = c.read_until(b"END\r\n")
    m = re.search(rb"STAT api_calls (-?\d+)", reply)
    assert m, reply
    assert int(m.group(1)) == before + 3


def test_time_functions(api):
    reply = ask(api, b"get time/1\r\n")
    m = re.match(rb"SERVER_ERROR real=(\d+) mono=(\d+)\r\n", reply)
    assert m, reply
    assert abs(int(m.group(1)) - time.time() * 1000) < 5000
    mono1 = int(m.group(2))
    time.sleep(0.3)
    mono2 = int(re.match(rb"SERVER_ERROR real=\d+ mono=(\d+)", ask(api, b"get time/2\r\n"))
                .group(1))
    assert 250 <= mono2 - mono1 < 5000, (mono1, mono2)


def test_start_arg_and_config_values_reach_workers(api):
    reply = ask(api, b"get arg/x\r\n")
    arg = api.start_arg
    assert reply == b"SERVER_ERROR worker=%s config=%s nested=1,2.5,x,true\r\n" % (
        arg.encode(), arg.encode())


def test_start_arg_absent_is_false(startfile_dir, memroute_factory):
    # memcached's value without proxy_arg (see test_proxy_api_extras.py for
    # the other forms).
    path = write_startfile(startfile_dir, "noarg.lua", """
        function mcp_config_pools() return { seen = tostring(mcp.start_arg) } end
        function mcp_config_routes(p)
            mcp.attach(mcp.CMD_GET, function(r)
                return "SERVER_ERROR " .. p.seen .. " " .. tostring(mcp.start_arg)
            end)
        end
    """)
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR false false\r\n"


def test_memcached_style_proxy_options(startfile_dir, memroute_factory):
    path = write_startfile(startfile_dir, "oarg.lua", """
        function mcp_config_pools() return {} end
        function mcp_config_routes(p)
            mcp.attach(mcp.CMD_GET, function(r) return "SERVER_ERROR arg=" .. mcp.start_arg end)
        end
    """)
    mr = memroute_factory("-o", "proxy_config=%s,proxy_arg=hello" % path)
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR arg=hello\r\n"


# --------------------------------------------------------------------------
# errors in routes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"err/x", b"errafter/x", b"badret/x", b"nilret/x",
                                 b"cfgonly/x", b"lateattach/x"])
def test_lua_error_in_route_is_lua_failure_and_connection_survives(api, key):
    with api.client() as c:
        before = int(stats_dict(c, b"proxy")["lua_errors"])
        assert c.request(b"get %s\r\n" % key) == b"SERVER_ERROR lua failure\r\n"
        c.send(b"mg %s v\r\nset pass/ok 0 0 1\r\n1\r\nget pass/ok\r\n" % key)
        assert c.read_line() == b"SERVER_ERROR lua failure\r\n"
        assert c.read_line() == b"STORED\r\n"
        assert c.read_until(b"END\r\n") == b"VALUE pass/ok 0 1\r\n1\r\nEND\r\n"
        c.assert_alive()
        after = int(stats_dict(c, b"proxy")["lua_errors"])
    assert after - before == 2


def test_lua_error_logged_with_location(api):
    ask(api, b"get err/logged\r\n")
    wait_until(lambda: "deliberate failure in route" in api.mr.stderr_tail(100000), 5,
               what="the route error in stderr")
    assert re.search(r"api\.lua:\d+: deliberate failure in route", api.mr.stderr_tail(100000))


# --------------------------------------------------------------------------
# multi-key get, noreply, meta quiet mode through a route
# --------------------------------------------------------------------------


def test_multiget_in_key_order_over_several_backends(api):
    run = uuid.uuid4().hex[:6]
    keys = ["pass/mg:%s:%d" % (run, i) for i in range(60)]
    with api.client() as c:
        for i, k in enumerate(keys):
            if i % 3 != 2:  # every third key stays a miss
                assert c.request(b"set %s %d 0 %d\r\n%s\r\n" % (
                    k.encode(), i, len(k), k.encode())) == b"STORED\r\n"
        used = {i for i, b in enumerate(api.b) for k in keys if mc_get(b, k) is not None}
        assert used == {0, 1, 2}, "keys should spread over all three backends"
        order = keys + keys[:5][::-1]  # repeated keys are answered again
        for cmd in (b"get", b"gets"):
            c.send(cmd + b" " + " ".join(order).encode() + b"\r\n")
            reply = c.read_until(b"END\r\n")
            assert reply.count(b"END\r\n") == 1 and reply.endswith(b"END\r\n")
            got = re.findall(rb"VALUE (\S+) (\d+) (\d+)(?: \d+)?\r\n", reply)
            want = [k for k in order if keys.index(k) % 3 != 2]
            assert [g[0].decode() for g in got] == want
            assert all(int(g[1]) == keys.index(g[0].decode()) for g in got)
        c.send(b"gat 100 " + " ".join(keys[:6]).encode() + b"\r\n")
        reply = c.read_until(b"END\r\n")
        assert [g.decode() for g in re.findall(rb"VALUE (\S+) ", reply)] == \
            [k for k in keys[:6] if keys.index(k) % 3 != 2]


def test_multiget_with_a_failing_key_still_one_reply(api):
    with api.client() as c:
        c.send(b"set pass/mf 0 0 1\r\nv\r\n")
        assert c.read_line() == b"STORED\r\n"
        c.send(b"get pass/mf err/x passdead/x pass/mf\r\n")
        assert c.read_until(b"END\r\n") == \
            b"VALUE pass/mf 0 1\r\nv\r\nVALUE pass/mf 0 1\r\nv\r\nEND\r\n"
        c.assert_alive()


def test_noreply_through_a_route(api):
    run = uuid.uuid4().hex[:6].encode()
    with api.client() as c:
        c.send(b"set pass/nr%s 0 0 1 noreply\r\n5\r\n" % run
               + b"incr pass/nr%s 10 noreply\r\n" % run
               + b"add pass/nr%s 0 0 1 noreply\r\nx\r\n" % run  # NOT_STORED, hidden
               + b"delete pass/nx%s noreply\r\n" % run  # NOT_FOUND, hidden
               + b"set passdead/x 0 0 1 noreply\r\nx\r\n"  # backend failure, hidden
               + b"get pass/nr%s\r\n" % run)
        assert c.read_until(b"END\r\n") == b"VALUE pass/nr%s 0 2\r\n15\r\nEND\r\n" % run
        assert c.read_available(quiet=0.3) == b""
        c.assert_alive()


def test_meta_quiet_mode_through_a_route(api):
    run = uuid.uuid4().hex[:6].encode()
    with api.client() as c:
        c.send(b"ms pass/q%s 2 q\r\nhi\r\n" % run      # HD hidden
               + b"mg pass/q%s v q\r\n" % run          # hit shown
               + b"mg pass/qmiss%s v q\r\n" % run      # EN hidden
               + b"md pass/qmiss%s q\r\n" % run        # NF shown (as memcached does)
               + b"ms pass/q%s 2 q I\r\nab\r\n" % run  # HD hidden
               + b"mg passdead/x v q\r\n"              # errors always shown
               + b"mn\r\n")
        assert c.read_until(b"MN\r\n") == (
            b"VA 2\r\nhi\r\nNF\r\nSERVER_ERROR backend failure\r\nMN\r\n")
        assert mc_get(api.b[0], "pass/q%s" % run.decode()) in (None, b"ab")
        assert any(mc_get(b, "pass/q%s" % run.decode()) == b"ab" for b in api.b)


def test_pool_calls_suspend_only_their_own_route(api, startfile_dir, memroute_factory):
    """pool(r) parks its backend call and yields (not an mlua async call
    since run 14 in docs/benchmarks.md): two pool calls and an mcp.await in
    one route, a pool call under pcall, one where Lua cannot yield (a
    table.sort comparator) and one with a bad argument; a failed call
    leaves nothing behind for the next request."""
    path = write_startfile(startfile_dir, "suspend.lua", ONE_POOL_CONFIG + """
        function mcp_config_routes(p)
            local pool = p.p
            mcp.attach(mcp.CMD_GET, function(r)
                local first = pool(r)
                local all = mcp.await(r, { pool, pool })
                local again = pool(r)
                return string.format("SERVER_ERROR %s %d %s", first:line(), #all, again:line())
            end)
            mcp.attach(mcp.CMD_MG, function(r)
                local ok, res = pcall(pool, r)
                return ok and res or "SERVER_ERROR pcall failed"
            end)
            mcp.attach(mcp.CMD_MD, function(r)
                local t = { 1, 2 }
                table.sort(t, function(a, b) pool(r); return a < b end)
                return "SERVER_ERROR sorted"
            end)
            mcp.attach(mcp.CMD_MS, function(r) return pool("not a request") end)
        end
    """)
    mc_set(api.b[0], "sus/a", b"xy")
    mr = memroute_factory("--config", str(path), "--config-arg", api.b[0].addr)
    with mr.client() as c:
        assert c.request(b"get sus/a\r\n") == \
            b"SERVER_ERROR VALUE sus/a 0 2 2 VALUE sus/a 0 2\r\n"
        assert c.request(b"mg sus/a v\r\n") == b"VA 2\r\n"
        assert c.read_line() == b"xy\r\n"
        assert c.request(b"md sus/a\r\n") == b"SERVER_ERROR lua failure\r\n"
        assert c.request(b"ms sus/a 1\r\nz\r\n") == b"SERVER_ERROR lua failure\r\n"
        # nothing parked by the failures answers the next requests
        assert c.request(b"mg sus/a v\r\n") == b"VA 2\r\n"
        assert c.read_line() == b"xy\r\n"
        assert c.request(b"get sus/a\r\n") == \
            b"SERVER_ERROR VALUE sus/a 0 2 2 VALUE sus/a 0 2\r\n"
        c.assert_alive()


def test_a_wait_inside_a_routes_own_coroutine_answers_no_other_request(
        api, startfile_dir, memroute_factory):
    """A pool call made inside a coroutine the route created yields to that
    coroutine's resumer, not to memroute: its backend call is dropped when
    the route ends, so a later route that yields by itself (an error) can
    never be resumed with another request's reply."""
    path = write_startfile(startfile_dir, "nested.lua", ONE_POOL_CONFIG + """
        function mcp_config_routes(p)
            local pool = p.p
            mcp.attach(mcp.CMD_GET, function(r)
                local key = r:key()
                if string.find(key, "^nested/") then
                    local co = coroutine.wrap(function() return pool(r) end)
                    local res = co()
                    return "SERVER_ERROR nested " .. tostring(res)
                elseif string.find(key, "^raw/") then
                    coroutine.yield()
                    return "SERVER_ERROR resumed"
                end
                return pool(r)
            end)
        end
    """)
    mc_set(api.b[0], "nested/a", b"secret")
    mr = memroute_factory("--config", str(path), "--config-arg", api.b[0].addr, "-t", "1")
    with mr.client() as c:
        for _ in range(3):
            assert c.request(b"get nested/a\r\n") == b"SERVER_ERROR nested nil\r\n"
            assert c.request(b"get raw/b\r\n") == b"SERVER_ERROR lua failure\r\n"
        mc_set(api.b[0], "plain/c", b"ok")
        assert c.request(b"get plain/c\r\n", b"END\r\n") == b"VALUE plain/c 0 2\r\nok\r\nEND\r\n"
        c.assert_alive()


# --------------------------------------------------------------------------
# the classic API's per-request objects, kept past their request
# --------------------------------------------------------------------------


def test_kept_request_and_response_objects_survive_reuse(api, startfile_dir, memroute_factory):
    # A classic route's r and pool(r)'s response are made without a
    # finalizer, their values in slots reused once Lua collects them; objects
    # a route keeps must still hold what they held after many requests and
    # full collections, a large value included.
    path = write_startfile(startfile_dir, "kept.lua", ONE_POOL_CONFIG + """
        function mcp_config_routes(p)
            local kept = {}
            mcp.attach(mcp.CMD_SET, function(r)
                local res = p.p(r)
                if string.find(r:key(), "^keep/") then
                    kept[r:key()] = { r = r, res = res }
                end
                return res
            end)
            mcp.attach(mcp.CMD_GET, function(r)
                local key = r:key()
                if string.find(key, "^gc/") then
                    local res = p.p(r)
                    collectgarbage("collect")
                    return res
                end
                if string.find(key, "^kept/") then
                    local k = kept[string.sub(key, 6)]
                    local value = k.r:raw_value()
                    local summary = value
                    if #value > 100 then
                        summary = tostring(value == string.rep("v", #value))
                    end
                    return "SERVER_ERROR " .. table.concat({ k.r:key(), k.r:token(1),
                        tostring(k.r:vlen()), k.res:line(), tostring(k.res:ok()),
                        tostring(k.r:match_res(k.res)), summary }, " ")
                end
                return p.p(r)
            end)
        end
    """)
    mr = memroute_factory("--config", str(path), "--config-arg", api.b[0].addr, "-t", "1")
    big = b"v" * 100000
    with mr.client() as c:
        assert c.request(b"set keep/a 0 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert c.request(b"set keep/big 0 0 %d\r\n%s\r\n" % (len(big), big)) == b"STORED\r\n"
        for i in range(300):
            assert c.request(b"get gc/%d\r\n" % i, b"END\r\n") == b"END\r\n"
        assert c.request(b"get kept/keep/a\r\n") == \
            b"SERVER_ERROR keep/a set 5 STORED true false hello\r\n"
        assert c.request(b"get kept/keep/big\r\n") == \
            b"SERVER_ERROR keep/big set 100000 STORED true false true\r\n"
        # The big value went to the backend whole, and a get still works.
        assert c.request(b"get keep/big\r\n", b"END\r\n") == \
            b"VALUE keep/big 0 100000\r\n" + big + b"\r\nEND\r\n"
        c.assert_alive()

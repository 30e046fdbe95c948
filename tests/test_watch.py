"""memcached's `watch` command: a connection that sends `watch <streams>`
gets `OK` and then log lines in memcached 1.6.45's formats, fed by
`mcp.log` (proxyuser), `mcp.log_req` / `mcp.log_reqsample` and the
backend `log` option (proxyreqs), backend failures, Lua errors and
reloads (proxyevents), and the embedded cache's deletes (deletions).
Also `stats proxyfuncs`. Routes send requests to real memcached servers;
every watcher read has a timeout.
"""

from __future__ import annotations

import re
import signal
import uuid

import pytest

from conftest import (HOST, RawClient, _factory, free_port, mc_set,
                      run_memroute_expect_failure, stats_dict, wait_until, write_startfile)

TS = rb"ts=\d+\.\d{1,6} gid=(\d+) "

STARTFILE = r"""
-- start_arg: "host:port" of the plain backend, the logged backend and a
-- port nothing listens on, comma-separated.
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
    local plain = mcp.backend("plain", a[1].host, a[1].port)
    local logged = mcp.backend{ label = "logged", host = a[2].host, port = a[2].port,
                                log = { tag = "everything" } }
    local errs = mcp.backend{ label = "errs", host = a[2].host, port = a[2].port,
                              log = { errors = true, tag = "errs_only" } }
    local dead = mcp.backend{ label = "dead", host = a[3].host, port = a[3].port,
                              failurelimit = 1, retrywaittime = 2 }
    return { plain = mcp.pool({ plain }), logged = mcp.pool({ logged }),
             errs = mcp.pool({ errs }), dead = mcp.pool({ dead }) }
end

local function fgen(name, target, body)
    local fg = mcp.funcgen_new()
    local h = target and fg:new_handle(target)
    fg:ready({ n = name, a = h, f = function(rctx, h)
        return function(r) return body(rctx, h, r) end
    end })
    return fg
end

function mcp_config_routes(p)
    local long = string.rep("x", 400)
    local router = mcp.router_new({ map = {
        user = fgen("user", nil, function(rctx, h, r)
            mcp.log("user says " .. r:key())
            return "END\r\n"
        end),
        flood = fgen("flood", nil, function(rctx, h, r)
            mcp.log(r:key() .. " " .. long)
            return "END\r\n"
        end),
        req = fgen("req", p.plain, function(rctx, h, r)
            local res = rctx:enqueue_and_wait(r, h)
            mcp.log_req(r, res, "mydetail")
            return res
        end),
        cfd = fgen("cfd", p.plain, function(rctx, h, r)
            local res = rctx:enqueue_and_wait(r, h)
            mcp.log_req(r, res, "withcfd", rctx:cfd())
            return res
        end),
        nores = fgen("nores", nil, function(rctx, h, r)
            mcp.log_req(r, nil, "nothing", 17)
            return "END\r\n"
        end),
        sample = fgen("sample", p.plain, function(rctx, h, r)
            local res = rctx:enqueue_and_wait(r, h)
            mcp.log_reqsample(0, 0, true, r, res, "sampled")
            return res
        end),
        badarg = fgen("badarg", nil, function(rctx, h, r)
            mcp.log_req("not a request", nil)
            return "END\r\n"
        end),
        fail = fgen("fail", nil, function(rctx, h, r)
            error("route boom")
        end),
        dead = fgen("dead", p.dead, function(rctx, h, r)
            return rctx:enqueue_and_wait(r, h)
        end),
        logged = fgen("logged", p.logged, function(rctx, h, r)
            return rctx:enqueue_and_wait(r, h)
        end),
        errs = fgen("errs", p.errs, function(rctx, h, r)
            return rctx:enqueue_and_wait(r, h)
        end),
    } })
    -- set, delete and md stay on the embedded cache.
    mcp.attach(mcp.CMD_GET, router)
    mcp.attach(mcp.CMD_INCR, router)
    -- The classic API: a route function calling a pool.
    mcp.attach(mcp.CMD_GETS, function(r)
        local res = p.plain(r)
        mcp.log_req(r, res, "classic")
        return res
    end)
end
"""


class Env:
    pass


@pytest.fixture(scope="module")
def env(server_workdir, tmp_path_factory):
    mcf = _factory("memcached", server_workdir)
    mrf = _factory("memroute", server_workdir)
    try:
        e = Env()
        e.plain, e.logged = mcf(), mcf()
        e.dead_port = free_port()
        arg = ",".join([e.plain.addr, e.logged.addr, "%s:%d" % (HOST, e.dead_port)])
        path = write_startfile(tmp_path_factory.mktemp("watch"), "watch.lua", STARTFILE)
        e.startfile = path
        # One worker: one backend connection, one funcgen per name.
        e.mr = mrf("--config", str(path), "--config-arg", arg, "-t", "1")
        yield e
    finally:
        mrf.stop_all()
        mcf.stop_all()


def watcher(env, streams: bytes) -> RawClient:
    """A connection watching ``streams`` (after its `OK`)."""
    c = env.mr.client()
    c.send(b"watch " + streams + b"\r\n")
    assert c.read_line() == b"OK\r\n"
    return c


def watcher_count(env) -> str:
    with env.mr.client() as c:
        return stats_dict(c)["log_watchers"]


def ask(env, data: bytes, terminator: bytes = b"\r\n") -> bytes:
    with env.mr.client() as c:
        return c.request(data, terminator)


def next_line(w: RawClient, timeout: float = 3.0) -> bytes:
    return w.read_until(b"\n", timeout)


def expect_line(w: RawClient, body: bytes, timeout: float = 3.0) -> re.Match:
    """The watcher's next line is `ts=... gid=... <body>` (a regex)."""
    line = next_line(w, timeout)
    m = re.fullmatch(TS + body + rb"\n", line)
    assert m, "unexpected log line %r, wanted %r" % (line, body)
    return m


def expect_conn_new(w: RawClient, port: bytes = rb"\d+") -> re.Match:
    """The next `conn_new` line; the close of a connection made before the
    watcher (the test harness's readiness probe) may come first."""
    while True:
        line = next_line(w)
        if re.fullmatch(TS + rb"type=conn_close .*\n", line):
            continue
        m = re.fullmatch(TS + rb"type=conn_new rip=127\.0\.0\.1 rport=" + port
                         + rb" transport=tcp cfd=(\d+)\n", line)
        assert m, "unexpected log line %r" % line
        return m


def nothing_more(w: RawClient) -> None:
    assert w.read_available(quiet=0.3) == b""


def key(prefix: str) -> str:
    return "%s/%s" % (prefix, uuid.uuid4().hex[:8])


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    (b"watch errors\r\n", b"ERROR\r\n"),
    (b"watch evictions\r\n", b"ERROR\r\n"),
    (b"watch rawcmds\r\n", b"ERROR\r\n"),
    (b"watch sysevents\r\n", b"ERROR\r\n"),
    (b"watch proxyreqs bogus\r\n", b"ERROR\r\n"),
    (b"watch proxyreqsx\r\n", b"ERROR\r\n"),
])
def test_unknown_or_unfed_streams_are_refused(env, line, reply):
    with env.mr.client() as c:
        assert c.request(line) == reply
        c.assert_alive()


def test_watch_behind_pipelined_replies_is_refused(env):
    with env.mr.client() as c:
        c.send(b"mn\r\nwatch proxyuser\r\n")
        assert c.read_until(b"before watch\r\n") == (
            b"MN\r\nERROR cannot pipeline other commands before watch\r\n")
        c.assert_alive()


def test_a_prefix_names_the_first_stream_it_begins(env):
    # As memcached's strncmp: "proxy" is proxyreqs.
    w = watcher(env, b"proxy")
    with w:
        k = key("req")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_req .* req=get " + k.encode())


def test_watcher_limit(env):
    # Earlier tests' watchers are gone once the server has seen them close.
    wait_until(lambda: watcher_count(env) == "0", 5,
               what="earlier watchers to go")
    watchers = [watcher(env, b"proxyuser") for _ in range(20)]
    try:
        with env.mr.client() as c:
            assert c.request(b"watch proxyuser\r\n") == (
                b"WATCHER_TOO_MANY log watcher limit reached\r\n")
        assert watcher_count(env) == "20"
    finally:
        for w in watchers:
            w.close()
    # Closed watchers are noticed and removed.
    wait_until(lambda: watcher_count(env) == "0", 5,
               what="watchers to go")
    with watcher(env, b"proxyuser"):
        pass


# --------------------------------------------------------------------------
# proxyuser, proxyreqs
# --------------------------------------------------------------------------

def test_mcp_log_goes_to_proxyuser(env):
    with watcher(env, b"proxyuser") as w:
        k = key("user")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_user msg=user says " + k.encode())
        # Only the streams asked for.
        assert ask(env, b"get %s\r\n" % key("req").encode()) == b"END\r\n"
        nothing_more(w)


def test_log_req_miss_and_hit(env):
    port = str(env.plain.port).encode()
    with watcher(env, b"proxyreqs") as w:
        k = key("req")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
        m1 = expect_line(w, rb"type=proxy_req elapsed=\d+ type=105 code=17 status=0 res=16 "
                         rb"cfd=0 be=127\.0\.0\.1:" + port + rb" detail=mydetail req=get "
                         + k.encode())
        mc_set(env.plain, k, b"hello")
        assert ask(env, b"get %s\r\n" % k.encode(), b"END\r\n") == (
            b"VALUE %s 0 5\r\nhello\r\nEND\r\n" % k.encode())
        m2 = expect_line(w, rb"type=proxy_req elapsed=\d+ type=100 code=15 status=0 res=8 "
                         rb"cfd=0 be=127\.0\.0\.1:" + port + rb" detail=mydetail req=get "
                         + k.encode())
        assert int(m2.group(1)) > int(m1.group(1))


def test_log_req_in_a_classic_route(env):
    port = str(env.plain.port).encode()
    with watcher(env, b"proxyreqs") as w:
        k = key("classic")
        assert ask(env, b"gets %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_req elapsed=\d+ type=105 code=17 status=0 res=16 "
                    rb"cfd=0 be=127\.0\.0\.1:" + port + rb" detail=classic req=gets " + k.encode())


def test_log_req_with_the_client_socket(env):
    with watcher(env, b"connevents proxyreqs") as w, env.mr.client() as c:
        port = str(c.sock.getsockname()[1]).encode()
        cfd = expect_conn_new(w, port).group(2)
        k = key("cfd")
        assert c.request(b"get %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_req elapsed=\d+ type=105 code=17 status=0 res=16 cfd=" + cfd
                    + rb" be=127\.0\.0\.1:\d+ detail=withcfd req=get " + k.encode())


def test_log_req_without_response(env):
    with watcher(env, b"proxyreqs") as w:
        k = key("nores")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_req elapsed=0 type=0 code=0 status=0 res=0 cfd=17 be=: "
                    rb"detail=nothing req=get " + k.encode())


def test_log_reqsample_logs_only_errors_when_asked(env):
    with watcher(env, b"proxyreqs") as w:
        miss = key("sample")
        assert ask(env, b"get %s\r\n" % miss.encode()) == b"END\r\n"
        # A non-numeric value: incr is a CLIENT_ERROR from memcached.
        k = key("sample")
        mc_set(env.plain, k, b"abc")
        assert ask(env, b"incr %s 1\r\n" % k.encode()).startswith(b"CLIENT_ERROR")
        # The miss was not logged: the error is the first line.
        expect_line(w, rb"type=proxy_req elapsed=\d+ type=108 code=22 status=-1 res=32 "
                    rb"cfd=0 be=127\.0\.0\.1:\d+ detail=sampled req=incr " + k.encode() + rb" 1")
        nothing_more(w)


def test_log_req_arguments_are_checked_only_while_watched(env):
    k = key("badarg")
    # Nobody watches proxyreqs: the call returns before reading them.
    assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
    with watcher(env, b"proxyreqs"):
        assert ask(env, b"get %s\r\n" % k.encode()) == b"SERVER_ERROR lua failure\r\n"


def test_backend_log_option(env):
    port = str(env.logged.port).encode()
    with watcher(env, b"proxyreqs") as w:
        k = key("logged")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"END\r\n"
        expect_line(w, rb"type=proxy_req elapsed=\d+ type=105 code=17 status=0 res=16 cfd=0 "
                    rb"be=127\.0\.0\.1:" + port + rb" detail=everything req=get " + k.encode())
        # errors = true: a miss is not logged, an error is.
        assert ask(env, b"get %s\r\n" % key("errs").encode()) == b"END\r\n"
        k = key("errs")
        mc_set(env.logged, k, b"abc")
        assert ask(env, b"incr %s 1\r\n" % k.encode()).startswith(b"CLIENT_ERROR")
        expect_line(w, rb"type=proxy_req elapsed=\d+ type=108 code=22 status=-1 res=32 cfd=0 "
                    rb"be=127\.0\.0\.1:" + port + rb" detail=errs_only req=incr "
                    + k.encode() + rb" 1")
        nothing_more(w)


# --------------------------------------------------------------------------
# proxyevents
# --------------------------------------------------------------------------

def test_lua_route_error_goes_to_proxyevents(env):
    with watcher(env, b"proxyevents") as w:
        k = key("fail")
        assert ask(env, b"get %s\r\n" % k.encode()) == b"SERVER_ERROR lua failure\r\n"
        expect_line(w, rb"type=proxy_error msg=\S*watch\.lua:\d+: route boom")


def test_backend_failure_and_mark_bad(env):
    port = str(env.dead_port).encode()
    with watcher(env, b"proxyevents") as w:
        assert ask(env, b"get %s\r\n" % key("dead").encode()) == (
            b"SERVER_ERROR backend failure\r\n")
        expect_line(w, rb"type=proxy_backend error=connecting name=127\.0\.0\.1 port=" + port
                    + rb" label=dead depth=1 rbuf=")
        expect_line(w, rb"type=proxy_backend error=markedbad name=127\.0\.0\.1 port=" + port
                    + rb" label=dead retry=2")
        # While bad: requests fail fast, and nothing more is logged.
        assert ask(env, b"get %s\r\n" % key("dead").encode()) == (
            b"SERVER_ERROR backend failure\r\n")
        nothing_more(w)


def test_reload_goes_to_proxyevents(env):
    with watcher(env, b"proxyevents") as w:
        env.mr.proc.send_signal(signal.SIGHUP)
        expect_line(w, rb"type=proxy_conf status=start", timeout=10)
        expect_line(w, rb"type=proxy_conf status=done", timeout=10)
        # A startfile that does not load: the old configuration stays.
        good = env.startfile.read_text()
        env.startfile.write_text("this is not lua\n")
        try:
            env.mr.proc.send_signal(signal.SIGHUP)
            expect_line(w, rb"type=proxy_conf status=start", timeout=10)
            expect_line(w, rb"type=proxy_conf status=failed", timeout=10)
        finally:
            env.startfile.write_text(good)
        assert ask(env, b"get %s\r\n" % key("req").encode()) == b"END\r\n"


# --------------------------------------------------------------------------
# connevents
# --------------------------------------------------------------------------

def test_connections_opened_and_closed(env):
    with watcher(env, b"connevents") as w:
        c = env.mr.client()
        port = str(c.sock.getsockname()[1]).encode()
        m = expect_conn_new(w, port)
        cfd = m.group(2)
        c.send(b"quit\r\n")
        assert c.wait_closed() == b""
        c.close()
        expect_line(w, rb"type=conn_close rip=127\.0\.0\.1 rport=" + port
                    + rb" transport=tcp reason=normal cfd=" + cfd)


def test_an_idle_connection_closed_by_the_server(memroute_factory):
    mr = memroute_factory("-o", "idle_timeout=1")
    with mr.client() as w:
        w.send(b"watch connevents\r\n")
        assert w.read_line() == b"OK\r\n"
        with mr.client() as c:
            expect_conn_new(w)
            # (The watcher itself is not idle: it is never timed out.)
            assert c.wait_closed(timeout=5) == b""
        expect_line(w, rb"type=conn_close rip=127\.0\.0\.1 rport=\d+ transport=tcp "
                    rb"reason=idle_timeout cfd=\d+", timeout=5)


# --------------------------------------------------------------------------
# deletions
# --------------------------------------------------------------------------

def test_deletions_of_the_embedded_cache(env):
    with watcher(env, b"deletions") as w, env.mr.client() as c:
        k = "del%s" % uuid.uuid4().hex[:8]
        assert c.request(b"set %s 0 0 5\r\nhello\r\n" % k.encode()) == b"STORED\r\n"
        assert c.request(b"delete %s\r\n" % k.encode()) == b"DELETED\r\n"
        expect_line(w, rb"type=deleted key=" + k.encode() + rb" cmd=delete clsid=1 size=5")
        assert c.request(b"delete %s\r\n" % k.encode()) == b"NOT_FOUND\r\n"
        assert c.request(b"set %s 0 0 3\r\nabc\r\n" % k.encode()) == b"STORED\r\n"
        # An invalidation keeps the item: not a deletion.
        assert c.request(b"md %s I\r\n" % k.encode()) == b"HD\r\n"
        assert c.request(b"md %s\r\n" % k.encode()) == b"HD\r\n"
        expect_line(w, rb"type=deleted key=" + k.encode() + rb" cmd=md clsid=1 size=3")
        nothing_more(w)


def test_deleted_keys_are_uri_encoded(env):
    with watcher(env, b"deletions") as w, env.mr.client() as c:
        k = b"a%b/c"
        assert c.request(b"set %s 0 0 1\r\nx\r\n" % k) == b"STORED\r\n"
        assert c.request(b"delete %s\r\n" % k) == b"DELETED\r\n"
        expect_line(w, rb"type=deleted key=a%25b%2Fc cmd=delete clsid=1 size=1")


# --------------------------------------------------------------------------
# a slow watcher
# --------------------------------------------------------------------------

def test_a_slow_watcher_skips_lines_and_says_so(env):
    """A watcher that does not read loses lines (workers never wait for
    it) and is told how many, as memcached tells it: `skipped=N`."""
    w = watcher(env, b"proxyuser")
    with w, env.mr.client() as c:
        # Far more than the watcher's buffer (256 KiB) and the kernel's
        # socket buffers (some MB) hold.
        n = 20000
        batch = 1000
        for start in range(0, n, batch):
            c.send(b"".join(b"get flood/%d\r\n" % i for i in range(start, start + batch)))
            for _ in range(batch):
                assert c.read_line() == b"END\r\n"
        skipped_stat = int(stats_dict(c)["log_watcher_skipped"])
        assert skipped_stat > 0
        data = w.read_available(quiet=0.5, timeout=20)
        # One more line, once there is room: the count comes before it.
        assert c.request(b"get flood/last\r\n") == b"END\r\n"
        data += w.read_until(b"flood/last " + b"x" * 400 + b"\n", timeout=5)
    lines = data.split(b"\n")[:-1]
    skips = 0
    last_gid = None
    pending_skip = 0
    for line in lines:
        m = re.fullmatch(rb"skipped=(\d+)", line)
        if m:
            pending_skip = int(m.group(1))
            skips += pending_skip
            continue
        m = re.fullmatch(TS + rb"type=proxy_user msg=flood/\S+ x{400}", line)
        assert m, line[:120]
        gid = int(m.group(1))
        if last_gid is not None:
            # Lines are numbered process-wide: the gap is the lines skipped.
            assert gid == last_gid + 1 + pending_skip, (last_gid, gid, pending_skip)
        last_gid = gid
        pending_skip = 0
    assert skips > 0
    assert len(lines) - skips < n


# --------------------------------------------------------------------------
# stats proxyfuncs
# --------------------------------------------------------------------------

def test_stats_proxyfuncs(env):
    with env.mr.client() as c:
        stats = stats_dict(c, b"proxyfuncs")
    names = ["user", "flood", "req", "cfd", "nores", "sample", "badarg", "fail", "dead", "logged",
             "errs"]
    for name in names:
        # One worker: one funcgen of each name, each with its slot.
        assert stats["funcs_%s" % name] == "1", stats
        assert int(stats["slots_%s" % name]) >= 1, stats
    assert set(stats) == {"%s_%s" % (kind, n) for n in names for kind in ("funcs", "slots")}


# --------------------------------------------------------------------------
# -o watcher_logbuf_size, -o no_watch
# --------------------------------------------------------------------------

def test_no_watch_refuses_the_command(memroute_factory):
    mr = memroute_factory("-o", "no_watch")
    with mr.client() as c:
        assert c.request(b"watch proxyuser\r\n") == b"CLIENT_ERROR watch commands not allowed\r\n"
        c.assert_alive()


def test_watcher_logbuf_size_is_read(memroute_factory):
    # (How a full buffer drops lines is checked above and in watch.rs's
    # unit tests; here: the option is taken, and lines that fit arrive.)
    mr = memroute_factory("-o", "watcher_logbuf_size=1")
    with mr.client() as w, mr.client() as c:
        w.send(b"watch deletions\r\n")
        assert w.read_line() == b"OK\r\n"
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"delete k\r\n") == b"DELETED\r\n"
        expect_line(w, rb"type=deleted key=k cmd=delete clsid=1 size=1")


@pytest.mark.parametrize("value", ["0", "lots"])
def test_watcher_logbuf_size_must_be_kilobytes(value):
    result = run_memroute_expect_failure(["-o", "watcher_logbuf_size=" + value])
    assert result.returncode != 0
    assert "watcher_logbuf_size=%s: the watcher buffer is a positive number of kilobytes" % value \
        in result.stderr


def test_a_failing_cron_goes_to_proxyevents(memroute_factory, tmp_path):
    path = write_startfile(tmp_path, "cron.lua", """
        function mcp_config_pools()
            mcp.register_cron("broken", { every = 1, func = function()
                error("cron boom")
            end })
            return {}
        end
        function mcp_config_routes(p) end
    """)
    mr = memroute_factory("--config", str(path))
    with mr.client() as w:
        w.send(b"watch proxyevents\r\n")
        assert w.read_line() == b"OK\r\n"
        expect_line(w, rb"type=proxy_error msg=\S*cron\.lua:3: cron boom", timeout=5)


# --------------------------------------------------------------------------
# fetchers, mutations (the embedded cache)
# --------------------------------------------------------------------------

def test_reads_and_stores_of_the_embedded_cache(memroute_factory):
    mr = memroute_factory()
    with mr.client() as w:
        # A bare watch is memcached's `watch fetchers`.
        w.send(b"watch connevents mutations fetchers\r\n")
        assert w.read_line() == b"OK\r\n"
        with mr.client() as c:
            cfd = expect_conn_new(w).group(2)
            assert c.request(b"get wk\r\n") == b"END\r\n"
            expect_line(w, rb"type=item_get key=wk status=not_found clsid=0 cfd=" + cfd
                        + rb" size=0")
            assert c.request(b"set wk 0 100 5\r\nhello\r\n") == b"STORED\r\n"
            expect_line(w, rb"type=item_store key=wk status=stored cmd=set ttl=100 clsid=1 "
                        rb"cfd=" + cfd + rb" size=5")
            assert c.request(b"get wk\r\n", b"END\r\n") == b"VALUE wk 0 5\r\nhello\r\nEND\r\n"
            expect_line(w, rb"type=item_get key=wk status=found clsid=1 cfd=" + cfd + rb" size=5")
            assert c.request(b"add wk 0 0 2\r\nhi\r\n") == b"NOT_STORED\r\n"
            expect_line(w, rb"type=item_store key=wk status=not_stored cmd=add ttl=0 clsid=1 "
                        rb"cfd=" + cfd + rb" size=2")
            assert c.request(b"ms wk 2 T50 C999999\r\nhi\r\n") == b"EX\r\n"
            expect_line(w, rb"type=item_store key=wk status=exists cmd=cas ttl=50 clsid=1 "
                        rb"cfd=" + cfd + rb" size=2")
            assert c.request(b"mg wk s v\r\n", b"hello\r\n") == b"VA 5 s5\r\nhello\r\n"
            expect_line(w, rb"type=item_get key=wk status=found clsid=1 cfd=" + cfd + rb" size=5")
        nothing_more_but_close(w)


def nothing_more_but_close(w: RawClient) -> None:
    """Only the connection's close is left to read."""
    expect_line(w, rb"type=conn_close rip=127\.0\.0\.1 rport=\d+ transport=tcp "
                rb"reason=normal cfd=\d+")
    nothing_more(w)


def test_a_bare_watch_is_fetchers(memroute_factory):
    mr = memroute_factory()
    with mr.client() as w, mr.client() as c:
        w.send(b"watch\r\n")
        assert w.read_line() == b"OK\r\n"
        assert c.request(b"set bk 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"get bk\r\n", b"END\r\n") == b"VALUE bk 0 1\r\nx\r\nEND\r\n"
        expect_line(w, rb"type=item_get key=bk status=found clsid=1 cfd=\d+ size=1")
        nothing_more(w)

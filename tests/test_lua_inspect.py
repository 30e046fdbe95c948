"""memcached's inspectors and mutators (``mcp.req_inspector_new``,
``mcp.res_inspector_new``, ``mcp.req_mutator_new``, ``mcp.res_mutator_new``)
and the per-slot objects they write into (``rctx:request_new()``,
``rctx:response_new()``, ``fgen:ready{ u = N }``), end to end against a real
memcached backend.

One memroute with the startfile below serves most tests. Its routes pick
what to run by the key's first part (a router) and, for mutators, by its
second part (itself read with a ``sepkey`` inspector); inspector results come
back as ``SERVER_ERROR`` lines of ``%q``-quoted values, so the tests assert
bytes. Bad step lists are checked at load, each in its own memroute.
"""

from __future__ import annotations

import re
import uuid

import pytest

from conftest import _factory, mc_get, mc_set, run_memroute_expect_failure, write_startfile

STARTFILE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b1", host, tonumber(port)) }) }
end

-- "SERVER_ERROR v1 v2 ..." with every value %q-quoted (an error object
-- as its message, on one line).
local function fmt(...)
    local out = {}
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        if type(v) == "userdata" or type(v) == "table" then
            v = string.gsub(tostring(v), "%s+", " ")
        end
        out[i] = string.format("%q", v)
    end
    return "SERVER_ERROR " .. table.concat(out, " ") .. "\r\n"
end

-- A funcgen with two handles on `pool` (a handle takes one request per
-- request) whose slots run body(rctx, h, r, h2, ...) with the slot's
-- `extra(rctx)` values.
local function fgen_of(name, pool, body, u, extra)
    local fg = mcp.funcgen_new()
    local h = pool and fg:new_handle(pool)
    local h2 = pool and fg:new_handle(pool)
    fg:ready({ n = name, u = u, f = function(rctx)
        local objs = extra and { extra(rctx) } or {}
        return function(r) return body(rctx, h, r, h2, table.unpack(objs)) end
    end })
    return fg
end

function mcp_config_routes(p)
    ---------------------------------------------------------------- inspectors
    local ins_sepkey = mcp.req_inspector_new(
        { t = "sepkey", sep = "/", pos = 2, map = { foo = 1, bar = 2 } },
        { t = "keybegin", str = "sepkey/b" },
        { t = "sepkey", pos = 3 },              -- default separator, no map
        { t = "sepkey", sep = ":" })            -- default position 1
    local ins_keyis = mcp.req_inspector_new(
        { t = "keyis", str = "keyis/one" },
        { t = "keyis", str = "keyis/two" })
    local ins_reqflags = mcp.req_inspector_new(
        { t = "hasflag", flag = "s" },
        { t = "hasflag", flag = "k" },
        { t = "flagtoken", flag = "O" },
        { t = "flagint", flag = "T" },
        { t = "flagis", flag = "O", str = "bar" },
        { t = "flagtoken", flag = "v" },        -- a flag without a token
        { t = "flagint", flag = "O" },          -- a token that is no number
        { t = "flagis", flag = "N", str = "1" }) -- absent
    local ins_resflags = mcp.res_inspector_new(
        { t = "hasflag", flag = "s" },
        { t = "hasflag", flag = "c" },
        { t = "flagtoken", flag = "O" },
        { t = "flagint", flag = "f" },
        { t = "flagint", flag = "t" },
        { t = "flagis", flag = "O", str = "moo" },
        { t = "flagis", flag = "s", str = "99" },
        { t = "flagtoken", flag = "k" })
    local ins_hasf = mcp.res_inspector_new({ t = "hasflag", flag = "f" })
    local ins_tokenint = mcp.res_inspector_new(
        { t = "flagtoken", flag = "O" }, { t = "flagint", flag = "t" })
    local ins_which = mcp.req_inspector_new({ t = "sepkey", pos = 2 })
    local ins_part3 = mcp.req_inspector_new({ t = "sepkey", pos = 3 })

    local sepkey = fgen_of("sepkey", nil, function(rctx, h, r) return fmt(ins_sepkey(r)) end)
    local keyis = fgen_of("keyis", nil, function(rctx, h, r) return fmt(ins_keyis(r)) end)
    local reqflags = fgen_of("reqflags", nil, function(rctx, h, r)
        return fmt(ins_reqflags(r))
    end)
    local resflags = fgen_of("resflags", p.p, function(rctx, h, r)
        local res = rctx:enqueue_and_wait(r, h)
        if ins_which(r) == "nonmeta" then
            return fmt(pcall(ins_hasf, res))
        elseif ins_which(r) == "wrongarg" then
            return fmt(pcall(ins_reqflags, res))
        end
        return fmt(ins_resflags(res))
    end)
    local intres = fgen_of("intres", nil, function(rctx, h, r)
        local res = mcp.internal(r)
        if r:command() == mcp.CMD_MS then return res end
        return fmt(ins_tokenint(res))
    end)

    ------------------------------------------------------------------ mutators
    local mut_mgreq = mcp.req_mutator_new(
        { t = "cmdset", cmd = "mg" },
        { t = "keyset", val = "mutated/target" },
        { t = "flagset", flag = "s" },
        { t = "flagset", flag = "v" },
        { t = "flagset", flag = "O", val = "opaque" },
        { t = "flagset", flag = "T", val = 33 })
    local mut_copy = mcp.req_mutator_new(
        { t = "cmdcopy", idx = 1 },
        { t = "keycopy", idx = 2 },
        { t = "flagcopyall", idx = 3 })
    local mut_ms = mcp.req_mutator_new(
        { t = "cmdset", cmd = "ms" },
        { t = "keyset", val = "mutated/ms" },
        { t = "valcopy", idx = 1 },
        { t = "flagcopy", flag = "F", idx = 1 },
        { t = "flagset", flag = "T", val = "0" })
    local mut_relay = mcp.req_mutator_new(
        { t = "cmdset", cmd = "set" },
        { t = "keycopy", idx = 2 },
        { t = "cmdcopy", idx = 3 },             -- a string: the client flags
        { t = "cmdcopy", idx = 4 },             -- and the exptime, as tokens
        { t = "valcopy", idx = 1 })
    local mut_hd = mcp.res_mutator_new({ t = "rescodeset", val = "HD" })
    local mut_resval = mcp.res_mutator_new(
        { t = "rescodecopy", idx = 1 },
        { t = "valcopy", idx = 2 })
    local mut_resflag = mcp.res_mutator_new(
        { t = "rescodeset", val = "HD" },
        { t = "flagset", flag = "t", val = "37" },
        { t = "flagcopy", flag = "O", idx = 1 })
    local mut_copyres = mcp.res_mutator_new(
        { t = "rescodecopy", idx = 1 },
        { t = "valcopy", idx = 1 },
        { t = "flagcopyall", idx = 1 })
    local mut_null = mcp.res_mutator_new({ t = "resnull", idx = 1 })
    local mut_err = {
        server = mcp.res_mutator_new({ t = "reserr", code = "server", msg = "teapot" }),
        client = mcp.res_mutator_new({ t = "reserr", code = "client", msg = "bad" }),
        error = mcp.res_mutator_new({ t = "reserr", code = "error" }),
    }

    local sources = { ["nil"] = nil, ["true"] = true, ["false"] = false, str = "toast" }

    local mut = fgen_of("mut", p.p, function(rctx, h, r, h2, nreq, nres)
        -- Every request starts with blank objects, whatever the slot's last
        -- request wrote into them.
        if nreq:key() ~= nil or nres:line() ~= "SERVER_ERROR empty response object" then
            return "SERVER_ERROR objects were not blanked\r\n"
        end
        local which = ins_which(r)
        local part3 = ins_part3(r)
        if which == "mgreq" then
            mut_mgreq(nreq)
            return rctx:enqueue_and_wait(nreq, h)
        elseif which == "self" then
            -- Any request object can be written, the client's own too.
            mut_mgreq(r)
            return rctx:enqueue_and_wait(r, h)
        elseif which == "copy" then
            -- The client's command, key and flags, copied from its request.
            mut_copy(nreq, r, r, r)
            return rctx:enqueue_and_wait(nreq, h)
        elseif which == "strcopy" then
            mut_copy(nreq, "md", "mutated/del", "O55")
            return rctx:enqueue_and_wait(nreq, h)
        elseif which == "msval" then
            mut_ms(nreq, r)
            return rctx:enqueue_and_wait(nreq, h)
        elseif which == "relay" then
            -- A value read from the backend written back under another key.
            local res = rctx:enqueue_and_wait(r, h)
            local ok = mut_relay(nreq, res, "mutated/relay", "7", "0")
            local stored = rctx:enqueue_and_wait(nreq, h2)
            return fmt(ok, nreq:raw_line(), stored:line())
        elseif which == "mgres" then
            mut_hd(nres)
            return nres
        elseif which == "resval" then
            mut_resval(nres, "VA", "example value\r\n")
            return nres
        elseif which == "classic" then
            mut_resval(nres, "VALUE mut/classic 7", "hello\r\n")
            return nres
        elseif which == "resflag" then
            local res = rctx:enqueue_and_wait(r, h)
            local src = res
            if part3 ~= "res" then src = sources[part3] end
            mut_resflag(nres, src)
            return nres
        elseif which == "copyres" then
            local res = rctx:enqueue_and_wait(r, h)
            local ok = mut_copyres(nres, res)
            if not ok then return "SERVER_ERROR copy refused\r\n" end
            return nres
        elseif which == "null" then
            mut_null(nres, r)
            return nres
        elseif which == "err" then
            mut_err[part3](nres)
            if nres:ok() or nres:hit() then
                return "SERVER_ERROR NOT an error\r\n"
            end
            return nres
        elseif which == "unusable" then
            -- A source the step cannot copy from: false, and nreq untouched.
            local ok = mut_copy(nreq, 5, r, r)
            return fmt(ok, nreq:key(), mut_null(nres, "a string"), nres:line())
        elseif which == "badparse" then
            return fmt(pcall(mut_copy, nreq, "mg", "", ""))
        elseif which == "blank" then
            return fmt(pcall(rctx.enqueue, rctx, nreq, h))
        elseif which == "blankres" then
            return nres
        elseif which == "limit" then
            return fmt(pcall(rctx.request_new, rctx))
        elseif which == "wrongdst" then
            return fmt(pcall(mut_mgreq, nres))
        end
        return "SERVER_ERROR unknown mutator test\r\n"
    end, 2, function(rctx) return rctx:request_new(), rctx:response_new() end)

    -- No 'u': a slot may not make objects.
    local nou = fgen_of("nou", nil, function(rctx, h, r)
        return fmt(pcall(rctx.response_new, rctx))
    end)

    -- A nested funcgen returning its own response object: its parent gets
    -- what was written, not the blank the slot goes back to.
    local inner = fgen_of("inner", nil, function(rctx, h, r, h2, nreq, nres)
        mut_resflag(nres, "inner")
        return nres
    end, 2, function(rctx) return rctx:request_new(), rctx:response_new() end)
    local outer = mcp.funcgen_new()
    local oh = outer:new_handle(inner)
    outer:ready({ n = "outer", f = function(rctx)
        return function(r)
            local res = rctx:enqueue_and_wait(r, oh)
            return fmt(res:line(), res:ok())
        end
    end })

    local router = mcp.router_new({ map = {
        sepkey = sepkey, keyis = keyis, reqflags = reqflags, resflags = resflags,
        intres = intres, mut = mut, nou = nou, nested = outer,
    } })
    mcp.attach(mcp.CMD_ANY_STORAGE, router)
end
"""


@pytest.fixture(scope="module")
def env(server_workdir, tmp_path_factory):
    mcf = _factory("memcached", server_workdir)
    mrf = _factory("memroute", server_workdir)
    try:
        backend = mcf()
        path = write_startfile(tmp_path_factory.mktemp("inspect"), "inspect.lua", STARTFILE)
        mr = mrf("--config", str(path), "--config-arg", backend.addr, "-v", "-t", "2")
        yield backend, mr
    finally:
        mrf.stop_all()
        mcf.stop_all()


def ask(handle, data: bytes, terminator: bytes = b"\r\n") -> bytes:
    with handle.client() as c:
        return c.request(data, terminator)


def fresh(prefix: str) -> str:
    return "%s%s" % (prefix, uuid.uuid4().hex[:10])


# --------------------------------------------------------------------------
# request inspectors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("key,want", [
    # pos 2 through the map, keybegin, pos 3 with '/', pos 1 with ':'.
    ("sepkey/bar/rest", '2 true "rest" "sepkey/bar/rest"'),
    ("sepkey/foo/x:y", '1 false "x:y" "sepkey/foo/x"'),
    # A part the map lacks, a key too short for pos 3; keybegin needs a
    # key longer than its string.
    ("sepkey/baz", 'nil true nil "sepkey/baz"'),
    ("sepkey/b", 'nil false nil "sepkey/b"'),
    # Empty parts are not parts; leading separators are skipped.
    ("sepkey//bar", 'nil false "bar" "sepkey//bar"'),
])
def test_sepkey_and_keybegin(env, key, want):
    _, mr = env
    assert ask(mr, b"mg %s s v\r\n" % key.encode()) == ("SERVER_ERROR %s\r\n" % want).encode()


@pytest.mark.parametrize("key,want", [
    ("keyis/one", "true false"),
    ("keyis/two", "false true"),
    ("keyis/twoo", "false false"),
    ("keyis/on", "false false"),
])
def test_keyis(env, key, want):
    _, mr = env
    assert ask(mr, b"get %s\r\n" % key.encode()) == ("SERVER_ERROR %s\r\n" % want).encode()


def test_request_flag_steps(env):
    _, mr = env
    # hasflag s, hasflag k, flagtoken O, flagint T, flagis O=bar,
    # flagtoken v (no token), flagint O (not a number), flagis N (absent).
    assert ask(mr, b"mg reqflags/x s Obar T333 v\r\n") == \
        b'SERVER_ERROR true false true "bar" true 333 true true true "" true nil false nil\r\n'
    assert ask(mr, b"mg reqflags/x k Obaz T-5\r\n") == \
        b'SERVER_ERROR false true true "baz" true -5 true false false nil true nil false nil\r\n'
    # A text command has no flags.
    assert ask(mr, b"get reqflags/x\r\n") == \
        b"SERVER_ERROR false false false nil false nil false nil false nil false nil " \
        b"false nil\r\n"


# --------------------------------------------------------------------------
# response inspectors
# --------------------------------------------------------------------------


def test_response_flag_steps_on_a_real_backend(env):
    backend, mr = env
    key = fresh("resflags/")
    mc_set(backend, key, b"hi", flags=42)
    # memcached answers "VA 2 s2 Omoo f42 t-1 k<key>" (flags in request order).
    got = ask(mr, b"mg %s v s Omoo f t k\r\n" % key.encode())
    assert got == ('SERVER_ERROR true false true "moo" true 42 true -1 true true true false '
                   'true "%s"\r\n' % key).encode()
    # HD (no value): the same flags are read after the code.
    got = ask(mr, b"mg %s s Oxyz\r\n" % key.encode())
    assert got == b'SERVER_ERROR true false true "xyz" false nil false nil true false true false ' \
        b'false nil\r\n'
    # A miss: "EN Oq", only the opaque comes back.
    got = ask(mr, b"mg %s s Oq\r\n" % fresh("resflags/").encode())
    assert got == b'SERVER_ERROR false false true "q" false nil false nil true false false nil ' \
        b'false nil\r\n'


def test_response_inspector_errors(env):
    backend, mr = env
    key = fresh("resflags/nonmeta/")
    mc_set(backend, key, b"v")
    # hasflag on a text reply is an error, as in memcached.
    got = ask(mr, b"get %s\r\n" % key.encode())
    assert re.match(rb'^SERVER_ERROR false ".*inspector error: response is not meta protocol.*"\r\n$',
                    got), got
    # A request inspector given a response.
    got = ask(mr, b"mg %s v\r\n" % fresh("resflags/wrongarg/").encode())
    assert re.match(rb'^SERVER_ERROR false ".*invalid argument to inspector object: expected a '
                    rb'request.*"\r\n$', got), got


def test_inspecting_an_internal_response(env):
    _, mr = env
    key = fresh("intres/")
    assert ask(mr, b"ms %s 2 T0\r\nhi\r\n" % key.encode()) == b"HD\r\n"
    # As memcached's proxyins.t: the embedded cache's reply, t-1 for no TTL.
    assert ask(mr, b"mg %s f t s Omoo\r\n" % key.encode()) == \
        b'SERVER_ERROR true "moo" true -1\r\n'
    assert ask(mr, b"mg %s v f t s Omoo\r\n" % key.encode()) == \
        b'SERVER_ERROR true "moo" true -1\r\n'


# --------------------------------------------------------------------------
# request mutators
# --------------------------------------------------------------------------


def test_mutator_sets_command_key_and_flags(env):
    backend, mr = env
    mc_set(backend, "mutated/target", b"tv")
    # The backend gets "mg mutated/target s v Oopaque T33".
    assert ask(mr, b"mg mut/mgreq\r\n", b"tv\r\n") == b"VA 2 s2 Oopaque\r\ntv\r\n"
    # The client's own request object can be the destination.
    assert ask(mr, b"mg mut/self\r\n", b"tv\r\n") == b"VA 2 s2 Oopaque\r\ntv\r\n"


def test_mutator_copies_command_key_and_flags(env):
    backend, mr = env
    key = fresh("mut/copy/")
    mc_set(backend, key, b"cv", flags=3)
    direct = ask(backend, b"mg %s v f Oab\r\n" % key.encode(), b"cv\r\n")
    assert ask(mr, b"mg %s v f Oab\r\n" % key.encode(), b"cv\r\n") == direct
    # Strings as sources: command "md", key and a prefab flag list.
    mc_set(backend, "mutated/del", b"x")
    assert ask(mr, b"mg mut/strcopy\r\n") == b"HD O55\r\n"
    assert mc_get(backend, "mutated/del") is None


def test_mutator_copies_a_value_into_a_new_request(env):
    backend, mr = env
    # ms mut/msval 5 F9 -> ms mutated/ms 5 F9 T0, with the client's data.
    assert ask(mr, b"ms mut/msval 5 F9\r\nhello\r\n") == b"HD\r\n"
    with backend.client() as c:
        assert c.request(b"mg mutated/ms v f\r\n", b"hello\r\n") == b"VA 5 f9\r\nhello\r\n"
    # A response's value written back under another key, with text commands.
    src = fresh("mut/relay/")
    mc_set(backend, src, b"relayed!")
    assert ask(mr, b"mg %s v\r\n" % src.encode()) == \
        b'SERVER_ERROR true "set mutated/relay 7 0 8" "STORED"\r\n'
    with backend.client() as c:
        assert c.request(b"get mutated/relay\r\n", b"END\r\n") == \
            b"VALUE mutated/relay 7 8\r\nrelayed!\r\nEND\r\n"


def test_mutator_failures(env):
    _, mr = env
    # A source its step cannot use: false, and the destination untouched.
    assert ask(mr, b"mg mut/unusable\r\n") == \
        b'SERVER_ERROR false nil false "SERVER_ERROR empty response object"\r\n'
    # A line that is not a request.
    got = ask(mr, b"mg mut/badparse\r\n")
    assert re.match(rb'^SERVER_ERROR false ".*mutator: failed to parse new request \(.*\): mg\b',
                    got), got
    # A blank object cannot be queued.
    got = ask(mr, b"mg mut/blank\r\n")
    assert re.match(rb'^SERVER_ERROR false ".*cannot queue requests without a key.*"\r\n$', got), got
    # A request mutator given a response to write.
    got = ask(mr, b"mg mut/wrongdst\r\n")
    assert re.match(rb'^SERVER_ERROR false ".*invalid argument to mutator object: expected a '
                    rb'request to write into.*"\r\n$', got), got


# --------------------------------------------------------------------------
# response mutators
# --------------------------------------------------------------------------


def test_response_mutator_sets_a_code(env):
    _, mr = env
    with mr.client() as c:
        # Twice: the object is blanked between requests, nothing is left over.
        assert c.request(b"mg mut/mgres\r\n") == b"HD\r\n"
        assert c.request(b"mg mut/mgres\r\n") == b"HD\r\n"
        # An unwritten response object says so.
        assert c.request(b"mg mut/blankres\r\n") == b"SERVER_ERROR empty response object\r\n"
        c.assert_alive()


def test_response_mutator_copies_code_and_value(env):
    backend, mr = env
    assert ask(mr, b"mg mut/resval\r\n", b"value\r\n") == b"VA 13\r\nexample value\r\n"
    # A classic hit gets its END.
    assert ask(mr, b"get mut/classic\r\n", b"END\r\n") == \
        b"VALUE mut/classic 7 5\r\nhello\r\nEND\r\n"
    # Code, value and every flag of a real reply: the same reply.
    key = fresh("mut/copyres/")
    mc_set(backend, key, b"same", flags=5)
    direct = ask(backend, b"mg %s v f s t Oxy\r\n" % key.encode(), b"same\r\n")
    assert ask(mr, b"mg %s v f s t Oxy\r\n" % key.encode(), b"same\r\n") == direct
    # A reply without a value cannot give one.
    assert ask(mr, b"mg %s s\r\n" % key.encode()) == b"SERVER_ERROR copy refused\r\n"


@pytest.mark.parametrize("source,want", [
    ("res", b"HD t37 O123"),
    ("str", b"HD t37 Otoast"),
    ("true", b"HD t37 O"),
    ("false", b"HD t37"),
    ("nil", b"HD t37"),
])
def test_response_mutator_flag_steps(env, source, want):
    backend, mr = env
    key = "mut/resflag/%s" % source
    mc_set(backend, key, b"x")
    assert ask(mr, b"mg %s s O123\r\n" % key.encode()) == want + b"\r\n"


@pytest.mark.parametrize("command,want", [
    (b"get mut/null/a\r\n", b"END"),
    (b"gets mut/null/a\r\n", b"END"),
    (b"mg mut/null/a v\r\n", b"EN"),
    (b"ms mut/null/a 1\r\nx\r\n", b"NS"),
    (b"md mut/null/a\r\n", b"NF"),
    (b"ma mut/null/a\r\n", b"NF"),
    (b"set mut/null/a 0 0 1\r\nx\r\n", b"NOT_STORED"),
    (b"delete mut/null/a\r\n", b"NOT_FOUND"),
    (b"incr mut/null/a 1\r\n", b"NOT_FOUND"),
    (b"touch mut/null/a 10\r\n", b"NOT_FOUND"),
])
def test_resnull(env, command, want):
    _, mr = env
    assert ask(mr, command) == want + b"\r\n"


@pytest.mark.parametrize("code,want", [
    ("server", b"SERVER_ERROR teapot"),
    ("client", b"CLIENT_ERROR bad"),
    ("error", b"ERROR"),
])
def test_reserr(env, code, want):
    _, mr = env
    assert ask(mr, b"mg mut/err/%s\r\n" % code.encode()) == want + b"\r\n"


# --------------------------------------------------------------------------
# rctx:request_new / response_new
# --------------------------------------------------------------------------


def test_user_object_limit(env):
    _, mr = env
    # u = 2, both made by the generator: a third is refused.
    got = ask(mr, b"mg mut/limit\r\n")
    assert re.match(rb'^SERVER_ERROR false ".*rctx request new: object count limit reached.*"\r\n$',
                    got), got
    # Without u, none.
    got = ask(mr, b"mg nou/x\r\n")
    assert re.match(rb'^SERVER_ERROR false ".*rctx response new: object count limit reached.*'
                    rb'has 0.*"\r\n$', got), got


def test_a_nested_funcgen_returns_its_written_object(env):
    _, mr = env
    assert ask(mr, b"mg nested/x\r\n") == b'SERVER_ERROR "HD t37 Oinner" true\r\n'


def test_objects_are_blank_for_every_request_of_a_slot(env):
    backend, mr = env
    mc_set(backend, "mutated/target", b"tv")
    # Pipelined: some slots serve several of these; each checks its objects
    # are blank before it writes them.
    with mr.client() as c:
        c.send(b"mg mut/mgreq\r\nmg mut/mgres\r\nmg mut/resval\r\n" * 20)
        for _ in range(20):
            assert c.read_until(b"tv\r\n") == b"VA 2 s2 Oopaque\r\ntv\r\n"
            assert c.read_until(b"\r\n") == b"HD\r\n"
            assert c.read_until(b"value\r\n") == b"VA 13\r\nexample value\r\n"


# --------------------------------------------------------------------------
# bad step lists fail at load
# --------------------------------------------------------------------------

POOLS = """
function mcp_config_pools()
    return { p = mcp.pool({ mcp.backend("b", "127.0.0.1", 1) }) }
end
"""


@pytest.mark.parametrize("call,message", [
    ('mcp.req_inspector_new({ t = "nope" })', r"inspector step 1: unknown step type 'nope'"),
    ('mcp.res_inspector_new({ t = "hasflag", flag = "f" }, { t = "sepkey" })',
     r"inspector step 2: step incompatible with inspector type"),
    ('mcp.req_inspector_new("sepkey")', r"inspector step 1: expected a table, got string"),
    ('mcp.req_inspector_new({ str = "x" })', r"inspector step 1: must provide 't' argument"),
    ('mcp.req_inspector_new({ t = "keyis" })', r"inspector step 1: must provide 'str' argument"),
    ('mcp.req_inspector_new({ t = "keybegin", str = "" })', r"'str' must have nonzero length"),
    ('mcp.req_inspector_new({ t = "flagis", flag = "O" })', r"must provide 'str' argument"),
    ('mcp.req_inspector_new({ t = "hasflag" })', r"must provide 'flag' argument"),
    ('mcp.req_inspector_new({ t = "flagtoken", flag = "Ov" })',
     r"'flag' must be a single character"),
    ('mcp.res_inspector_new({ t = "flagint", flag = "1" })', r"'flag' must be a letter"),
    ('mcp.req_inspector_new({ t = "sepkey", sep = "::" })', r"separator must be one character"),
    ('mcp.req_inspector_new({ t = "sepkey", pos = 0 })', r"'pos' must be a positive integer"),
    ('mcp.req_inspector_new({ t = "sepkey", map = "m" })', r"'map' must be a table"),
    ('mcp.req_inspector_new({ t = "sepkey", pso = 2 })', r"unknown option 'pso'"),
    ('mcp.req_mutator_new()', r"mutator: needs at least one step"),
    ('mcp.req_mutator_new({ t = "rescodeset", val = "HD" })',
     r"mutator step 1: step incompatible with mutator type"),
    ('mcp.res_mutator_new({ t = "keyset", val = "k" })', r"step incompatible with mutator type"),
    ('mcp.req_mutator_new({ t = "bogus" })', r"mutator step 1: unknown step type 'bogus'"),
    ('mcp.req_mutator_new({ t = "cmdset" })', r"must provide 'cmd' argument"),
    ('mcp.req_mutator_new({ t = "cmdset", cmd = string.rep("x", 21) })', r"'cmd' too long"),
    ('mcp.req_mutator_new({ t = "cmdset", cmd = "frob" })', r"not a memcached command: 'frob'"),
    ('mcp.req_mutator_new({ t = "keyset", val = "" })', r"'val' must have nonzero length"),
    ('mcp.req_mutator_new({ t = "keyset", val = "a b" })', r"must not contain spaces"),
    ('mcp.req_mutator_new({ t = "keycopy" })', r"must provide 'idx' argument"),
    ('mcp.req_mutator_new({ t = "cmdcopy", idx = 0 })', r"'idx' argument must be an integer greater"),
    ('mcp.req_mutator_new({ t = "valcopy", idx = "one" })', r"'idx' argument as an integer"),
    ('mcp.res_mutator_new({ t = "resnull" })', r"must provide 'idx' argument"),
    ('mcp.res_mutator_new({ t = "rescodeset" })', r"must provide 'val' argument"),
    ('mcp.res_mutator_new({ t = "reserr" })', r"must provide 'code' argument"),
    ('mcp.res_mutator_new({ t = "reserr", code = "teapot" })',
     r"code must be 'error', 'server', or 'client'"),
    ('mcp.res_mutator_new({ t = "reserr", code = "server", msg = "" })',
     r"'msg' must be a nonzero length string"),
    ('mcp.req_mutator_new({ t = "flagset", flag = "O", val = {} })',
     r"unsupported type for 'val'"),
    ('mcp.res_mutator_new({ t = "flagcopy", idx = 1 })', r"must provide 'flag' argument"),
    ('mcp.res_mutator_new({ t = "flagcopy", flag = "O" })', r"must provide 'idx' argument"),
    ('mcp.res_mutator_new({ t = "flagcopyall", idx = 1, flag = "O" })', r"unknown option 'flag'"),
    ('local f = mcp.funcgen_new(); f:ready({ u = 0, f = function() return function() end end })',
     r"user obj \('u'\) in fgen:ready must be a positive integer"),
    ('local f = mcp.funcgen_new(); f:ready({ f = function(rctx) rctx:request_new() '
     'return function() end end })', r"rctx request new: object count limit reached"),
])
def test_bad_step_lists_fail_at_load(startfile_dir, call, message):
    text = POOLS + "function mcp_config_routes(p)\n  %s\nend\n" % call
    path = write_startfile(startfile_dir, "bad.lua", text)
    proc = run_memroute_expect_failure(["--config", str(path)])
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), "%r not in:\n%s" % (message, proc.stderr)
    assert re.search(r"bad\.lua:\d+:", proc.stderr), proc.stderr


@pytest.mark.parametrize("name", ["req_inspector_new", "res_inspector_new", "req_mutator_new",
                                  "res_mutator_new"])
def test_constructors_belong_to_worker_vms(startfile_dir, name):
    text = "function mcp_config_pools()\n  mcp.%s({ t = \"keyis\", str = \"x\" })\n" \
        "  return {}\nend\nfunction mcp_config_routes(p) end\n" % name
    path = write_startfile(startfile_dir, "bad.lua", text)
    proc = run_memroute_expect_failure(["--config", str(path)])
    assert proc.returncode != 0
    assert re.search(r"mcp\.%s is only available in mcp_config_routes" % name, proc.stderr), \
        proc.stderr


DOC_EXAMPLE = r"""
function mcp_config_pools()
    local host, port = string.match(mcp.start_arg, "^(.+):(%d+)$")
    return { p = mcp.pool({ mcp.backend("b1", host, tonumber(port)) }) }
end

function mcp_config_routes(p)
    local fgen = mcp.funcgen_new()
    local h = fgen:new_handle(p.p)
    -- docs/lua-api.md's example, as it is there.
    local ins = mcp.req_inspector_new(
        { t = "sepkey", sep = "/", pos = 2, map = { foo = 1, bar = 2 } },
        { t = "hasflag", flag = "v" })
    local to_mg = mcp.req_mutator_new(
        { t = "cmdset", cmd = "mg" }, { t = "keycopy", idx = 1 },
        { t = "flagset", flag = "v" }, { t = "flagcopy", flag = "O", idx = 1 })
    fgen:ready({ u = 1, a = h, f = function(rctx, h)
        local nreq = rctx:request_new()
        return function(r)
            local zone, wants_value = ins(r)
            to_mg(nreq, r)
            local res = rctx:enqueue_and_wait(nreq, h)
            return string.format("SERVER_ERROR %s %s %s\r\n", zone, wants_value, res:line())
        end
    end })
    mcp.attach(mcp.CMD_MG, fgen)
end
"""


def test_the_documented_example(memcached_factory, memroute_factory, startfile_dir):
    backend = memcached_factory()
    mc_set(backend, "x/bar/y", b"val")
    path = write_startfile(startfile_dir, "example.lua", DOC_EXAMPLE)
    mr = memroute_factory("--config", str(path), "--config-arg", backend.addr)
    # The client's mg (no v) becomes "mg x/bar/y v O7" on the backend.
    assert ask(mr, b"mg x/bar/y O7\r\n") == b"SERVER_ERROR 2 false VA 3 O7\r\n"
    assert ask(mr, b"mg x/foo v\r\n") == b"SERVER_ERROR 1 true EN\r\n"

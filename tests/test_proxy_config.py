"""Configuration-time Lua API: mcp.backend, mcp.pool, mcp.attach, and what
happens when a startfile is broken (memroute names the file and line and
exits non-zero before it listens)."""

from __future__ import annotations

import hashlib
import re

import pytest

from conftest import free_port, mc_get, run_memroute_expect_failure, write_startfile

# --------------------------------------------------------------------------
# broken startfiles
# --------------------------------------------------------------------------

POOLS_OK = "function mcp_config_pools() return {} end\n"
ROUTES_OK = "function mcp_config_routes(p) end\n"


def expect_start_failure(startfile_dir, name, text, *patterns, at=None, extra_args=()):
    """Start memroute on a broken startfile: it must exit non-zero, its
    stderr must match ``patterns`` and, with ``at``, name ``file:line`` of
    the first line of the file containing ``at``."""
    path = write_startfile(startfile_dir, name, text)
    proc = run_memroute_expect_failure(["--config", str(path)] + list(extra_args))
    assert proc.returncode != 0, proc
    if at is not None:
        lines = path.read_text().splitlines()
        lineno = next(i + 1 for i, line in enumerate(lines) if at in line)
        patterns += (r"%s:%d:" % (re.escape(name), lineno),)
    for pattern in patterns:
        assert re.search(pattern, proc.stderr), "%r not in stderr:\n%s" % (pattern, proc.stderr)
    return proc


@pytest.mark.parametrize("name,text,patterns", [
    ("syntax.lua", "function mcp_config_pools()\n  return {\nend\n" + ROUTES_OK,
     [r"syntax.lua:3:"]),
    ("toplevel.lua", "local x = 1\nerror('top level boom')\n" + POOLS_OK + ROUTES_OK,
     [r"toplevel.lua:2: top level boom"]),
    ("inpools.lua", "function mcp_config_pools()\n  local t = nil\n  return t.x\nend\n"
     + ROUTES_OK, [r"inpools.lua:3:", r"attempt to index a nil value"]),
    ("inroutes.lua", POOLS_OK + "function mcp_config_routes(p)\n  error('routes boom')\nend\n",
     [r"inroutes.lua:3: routes boom"]),
    ("noroutes.lua", POOLS_OK, [r"noroutes.lua", r"mcp_config_routes"]),
    ("badreturn.lua", "function mcp_config_pools()\n  return { f = function() end }\nend\n"
     + ROUTES_OK, [r"badreturn.lua|mcp_config_pools", r"function"]),
    ("backendreturn.lua",
     "function mcp_config_pools()\n  return { b = mcp.backend('b', '127.0.0.1', 1) }\nend\n"
     + ROUTES_OK, [r"backend"]),
])
def test_broken_startfile_exits_nonzero_naming_file_and_line(startfile_dir, name, text, patterns):
    expect_start_failure(startfile_dir, name, text, *patterns)


def test_missing_startfile(startfile_dir):
    proc = run_memroute_expect_failure(["--config", str(startfile_dir / "nope.lua")])
    assert proc.returncode != 0
    assert "nope.lua" in proc.stderr


def test_start_arg_without_startfile_is_refused():
    proc = run_memroute_expect_failure(["--config-arg", "x"])
    assert proc.returncode != 0
    assert "startfile" in proc.stderr


# --------------------------------------------------------------------------
# mcp.backend
# --------------------------------------------------------------------------


def backend_file(call: str) -> str:
    return """
        function mcp_config_pools()
            local b = %s
            return { p = mcp.pool({ b }) }
        end
        function mcp_config_routes(pools)
            mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return pools.p(r) end)
        end
    """ % call


@pytest.mark.parametrize("call", [
    'mcp.backend("b1", "127.0.0.1", PORT)',
    'mcp.backend("b1", "127.0.0.1", "PORT")',
    'mcp.backend{ label = "b1", host = "127.0.0.1", port = PORT }',
    'mcp.backend{ label = "b1", host = "127.0.0.1", port = PORT, connecttimeout = 1.5, '
    'readtimeout = 2, retrywaittime = 0.5, failurelimit = 5, connections = 8, '
    'tcpkeepalive = true, down = false, flaptime = 30, flapbackofframp = 2, '
    'flapbackoffmax = 60 }',
    'mcp.backend{ label = "b1", host = "127.0.0.1", port = PORT, batchgets = false }',
    'mcp.backend{ label = "b1", host = "127.0.0.1", port = PORT, retrytimeout = 1 }',
])
def test_backend_forms_and_options(call, backends, memroute_factory, startfile_dir):
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "be.lua", backend_file(call.replace("PORT", str(b.port))))
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert c.request(b"set be:k 0 0 2\r\nok\r\n") == b"STORED\r\n"
    assert mc_get(b, "be:k") == b"ok"


def test_backend_down_option_fails_fast(backends, memroute_factory, startfile_dir):
    (b,) = backends(1)
    path = write_startfile(startfile_dir, "down.lua", backend_file(
        'mcp.backend{ label = "b1", host = "127.0.0.1", port = %d, down = true }' % b.port))
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert c.request(b"set be:k 0 0 2\r\nok\r\n") == b"SERVER_ERROR backend failure\r\n"
    assert mc_get(b, "be:k") is None


@pytest.mark.parametrize("call,message", [
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, bogus = 1 }',
     r"unknown option 'bogus'"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, connections = 9 }',
     r"connections must be 1\.\.8"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, failurelimit = 0 }',
     r"failurelimit"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, connecttimeout = "soon" }',
     r"connecttimeout must be a number"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, readtimeout = -1 }',
     r"readtimeout must be between"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, flapbackofframp = 0.5 }',
     r"flapbackofframp"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 1, batchgets = 1 }',
     r"batchgets must be true or false"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 0 }', r"port must be 1\.\.65535"),
    ('mcp.backend{ label = "b", host = "127.0.0.1", port = 70000 }', r"port must be"),
    ('mcp.backend{ label = "b", port = 1 }', r"label and host are required"),
    ('mcp.backend("b", "127.0.0.1", "http")', r"port must be"),
    ('mcp.backend("b")', r"host must be a string"),
    ('mcp.backend(42)', r"expected \(label, host, port\) or a table"),
])
def test_backend_bad_options_fail_at_start(call, message, startfile_dir):
    expect_start_failure(startfile_dir, "badbe.lua", backend_file(call), message,
                         at="local b = ")


def test_backend_not_available_in_routes(startfile_dir):
    expect_start_failure(startfile_dir, "berts.lua", POOLS_OK + """
function mcp_config_routes(p)
    mcp.backend("b", "127.0.0.1", 1)
end
""", r"mcp\.backend is only available in mcp_config_pools", at='mcp.backend("b"')


def test_routes_functions_not_available_in_config_vm(startfile_dir):
    expect_start_failure(startfile_dir, "attcfg.lua", """
function mcp_config_pools()
    mcp.attach(mcp.CMD_GET, function(r) end)
    return {}
end
""" + ROUTES_OK, r"mcp\.attach is only available in mcp_config_routes", at="mcp.attach(")


# --------------------------------------------------------------------------
# mcp.pool
# --------------------------------------------------------------------------

POOL_OPTIONS = {
    "default": "{}",
    "jump": "{ dist = mcp.dist_jump_hash }",
    "jump_name": '{ dist = "jump" }',
    "ring_default": "{ dist = mcp.dist_ring_hash }",
    "ring_ketama": '{ dist = mcp.dist_ring_hash, omode = "ketama", hash = mcp.dist_ring_hash.hash }',
    "ring_twemproxy": '{ dist = mcp.dist_ring_hash, omode = "twemproxy", obuckets = 100 }',
    "ring_evcache": '{ dist = mcp.dist_ring_hash, omode = "evcache" }',
    "ketama": "{ dist = mcp.dist_ketama }",
    "twemproxy": "{ dist = mcp.dist_twemproxy, hash = mcp.hash_fnv1a_64 }",
    "maglev": "{ dist = mcp.dist_maglev }",
    "maglev_size": '{ dist = "maglev", table_size = 251 }',
    "modula": "{ dist = mcp.dist_modula, hash = mcp.hash_crc32 }",
    "rendezvous": "{ dist = mcp.dist_rendezvous }",
    "xxhash_seed": "{ hash = mcp.hash_xxhash, seed = 42 }",
    "seed_only": "{ seed = 7 }",
    "md5": "{ hash = mcp.hash_md5 }",
    "hash_names": '{ hash = "fnv1a_32", name = "named", iothread = true }',
    "murmur": "{ hash = mcp.hash_murmur }",
    "jenkins": "{ hash = mcp.hash_jenkins }",
    "hsieh": "{ hash = mcp.hash_hsieh }",
    "one_at_a_time": "{ hash = mcp.hash_one_at_a_time }",
    "crc16": "{ hash = mcp.hash_crc16 }",
    "crc32a": "{ hash = mcp.hash_crc32a }",
    "fnv1_32": "{ hash = mcp.hash_fnv1_32 }",
    "fnv1_64": "{ hash = mcp.hash_fnv1_64 }",
    "stop": '{ filter = "stop", filter_conf = "|#|" }',
    "stop_default": '{ filter = "stop" }',
    "tags": '{ filter = "tags", filter_conf = "{}" }',
}

POOLS_FILE = """
local OPTIONS = {
%s
}
function mcp_config_pools()
    local bs = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%%d+)$")
        table.insert(bs, mcp.backend("b" .. (#bs + 1), host, tonumber(port)))
    end
    local pools = {}
    for name, opts in pairs(OPTIONS) do
        pools[name] = mcp.pool(bs, opts)
    end
    return pools
end
function mcp_config_routes(pools)
    -- key "<pool name>/<rest>"
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        local name = string.match(r:key(), "^([%%w_]+)/")
        local pool = pools[name]
        if pool == nil then return "SERVER_ERROR no pool " .. tostring(name) end
        return pool(r)
    end)
end
"""


@pytest.fixture
def pools_proxy(backends, memroute_factory, startfile_dir):
    bs = backends(3)
    body = ",\n".join("    %s = %s" % (k, v) for k, v in POOL_OPTIONS.items())
    path = write_startfile(startfile_dir, "pools.lua", POOLS_FILE % body)
    mr = memroute_factory("--config", str(path), "--config-arg", ",".join(b.addr for b in bs))
    return bs, mr


def test_pool_options_every_distribution_and_hash(pools_proxy):
    bs, mr = pools_proxy
    with mr.client() as c:
        for name in POOL_OPTIONS:
            # varied keys: twemproxy's fnv1a_64 (32-bit, multiplier 0x1b3)
            # sends keys differing only in their last byte to one spot
            keys = ["%s/%s" % (name, hashlib.md5(b"%d" % i).hexdigest()[:12])
                    for i in range(24)]
            for k in keys:
                assert c.request(b"set %s 0 0 1\r\nv\r\n" % k.encode()) == b"STORED\r\n", k
            placement = [[i for i, b in enumerate(bs) if mc_get(b, k) is not None]
                         for k in keys]
            assert all(len(p) == 1 for p in placement), (name, placement)
            if name not in ("stop", "stop_default", "tags"):
                assert len({p[0] for p in placement}) >= 2, \
                    "pool %s put 24 keys on one backend" % name
            c.send(b"get " + " ".join(keys).encode() + b"\r\n")
            assert c.read_until(b"END\r\n").count(b"VALUE ") == len(keys), name


@pytest.mark.parametrize("pool,keys", [
    ("stop", ["stop/grp|#|%d" % i for i in range(20)]),
    ("stop_default", ["stop_default/grp|#|x%d" % i for i in range(20)]),
    ("tags", ["tags/a%d{grp}b" % i for i in range(20)]),
])
def test_pool_filters_keep_a_group_on_one_backend(pools_proxy, pool, keys):
    bs, mr = pools_proxy
    with mr.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 1\r\nv\r\n" % k.encode()) == b"STORED\r\n"
    owners = {i for k in keys for i, b in enumerate(bs) if mc_get(b, k) is not None}
    assert len(owners) == 1, owners
    # different groups still spread
    with mr.client() as c:
        for g in range(20):
            k = keys[0].replace("grp", "g%d" % g)
            assert c.request(b"set %s 0 0 1\r\nv\r\n" % k.encode()) == b"STORED\r\n"
    owners = {i for g in range(20) for i, b in enumerate(bs)
              if mc_get(b, keys[0].replace("grp", "g%d" % g)) is not None}
    assert len(owners) >= 2


@pytest.mark.parametrize("opts,message", [
    ('{ bogus = 1 }', r"mcp\.dynamo_pool: unknown option 'bogus'"),
    ('{ table = 5 }', r"table must be a string"),
    ('{ table = "" }', r"table is required"),
    ('{ write = "sideways" }', r'write must be "through" or "behind", not "sideways"'),
    ('{ consistent_read = "yes" }', r"consistent_read must be true or false"),
    ('{ create_table = 1 }', r"create_table must be true or false"),
    ('{ batch_writes = "true", write = "behind" }', r"batch_writes must be true or false"),
    ('{ batch_writes = true }', r'batch_writes needs write = \\?"behind\\?"'),
    ('{ write = "behind", queue_max_keys = 0 }', r"queue_max_keys must be a positive integer"),
    ('{ timeout = -1 }', r"timeout must be a number of seconds"),
    ('{ name = "two words" }', r"name must be one word"),
    ('{ write = "behind", batch_linger = 0.01 }', r"batch_linger needs batch_writes = true"),
    ('{ write = "behind", writer = "aws" }', r'writer must be "direct" or "sdk", not "aws"'),
    ('{ writer = "sdk" }', r'writer needs write = \\?"behind\\?"'),
    ('{ write = "behind", batch_writes = true, batch_linger = 2 }',
     r"batch_linger must be at most 1 second"),
    ('{ format = "json" }', r'format must be "memcached" or "php_session", not "json"'),
    ('{ session_name = "S" }', r'session_name needs format = "php_session"'),
    ('{ format = "php_session", data_type = "blob" }',
     r'data_type must be "string" or "binary", not "blob"'),
    ('{ format = "php_session", session_name = "my sess" }',
     r"session_name must be letters and digits"),
    ('{ format = "php_session", write = "behind" }',
     r'php_session format needs write = \\?"through\\?"'),
])
def test_dynamo_pool_bad_options_fail_at_start(opts, message, startfile_dir):
    """Option errors stop the startfile before any DynamoDB call (the
    endpoint is never contacted)."""
    text = """
        function mcp_config_pools()
            return { t = mcp.dynamo_pool(%s) }
        end
        function mcp_config_routes(p) end
    """ % opts
    expect_start_failure(startfile_dir, "baddynamo.lua", text, message, at="mcp.dynamo_pool(")


def pool_file(opts: str, backends_expr: str = "{ mcp.backend('b', '127.0.0.1', 11999) }") -> str:
    return """
        function mcp_config_pools()
            return { p = mcp.pool(%s, %s) }
        end
        function mcp_config_routes(p) end
    """ % (backends_expr, opts)


@pytest.mark.parametrize("opts,backends_expr,message", [
    ('{ dist = "nope" }', None, r"mcp\.pool: .*nope"),
    ('{ hash = "nope" }', None, r"mcp\.pool: .*nope"),
    ('{ filter = "nope" }', None, r"unknown filter 'nope'"),
    ('{ filter = "tags", filter_conf = "{" }', None, r"filter_conf for tags"),
    ('{ bogus = 1 }', None, r"unknown option 'bogus'"),
    ('{ dist = 5 }', None, r"dist must be a name"),
    ('{ hash = { } }', None, r"hash must be a name"),
    ('{ dist = mcp.dist_ring_hash, omode = "nope" }', None, r"nope"),
    ('{ obuckets = 0 }', None, r"obuckets must be a positive integer"),
    ('{ seed = true }', None, r"seed must be a string"),
    ('{}', "{}", r"at least one backend"),
    ('{}', "{ 'not a backend' }", r"list of mcp\.backend objects"),
])
def test_pool_bad_options_fail_at_start(opts, backends_expr, message, startfile_dir):
    text = pool_file(opts, backends_expr) if backends_expr else pool_file(opts)
    expect_start_failure(startfile_dir, "badpool.lua", text, message, at="mcp.pool(")


# --------------------------------------------------------------------------
# mcp.attach
# --------------------------------------------------------------------------


def attach_file(body: str) -> str:
    return POOLS_OK + "function mcp_config_routes(p)\n" + body + "\nend\n"


def test_attach_cmd_any(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "any.lua", attach_file("""
        mcp.attach(mcp.CMD_ANY, function(r)
            if r:command() == mcp.CMD_VERSION then return "VERSION routed" end
            return "SERVER_ERROR any cmd=" .. r:command()
        end)
    """))
    mr = memroute_factory("--config", str(path))
    assert mr.extra["version"] == "VERSION routed"
    with mr.client() as c:
        for req, cmd in [(b"get k", 7), (b"set k 0 0 1\r\nx", 9), (b"mg k v", 1), (b"stats", 22),
                         (b"flush_all", 24), (b"verbosity 1", 25), (b"delete k", 18),
                         (b"ms k 1\r\nx", 2)]:
            assert c.request(req + b"\r\n") == b"SERVER_ERROR any cmd=%d\r\n" % cmd, req
        # mn cannot be routed: it still flushes the pipeline
        c.assert_alive()
        c.send(b"quit\r\n")
        assert c.wait_closed() == b""


def test_attach_cmd_any_storage(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "anystorage.lua", attach_file("""
        mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
            return "SERVER_ERROR storage cmd=" .. r:command()
        end)
    """))
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        for req, cmd in [(b"get k", 7), (b"gets k", 12), (b"gat 1 k", 8), (b"gats 1 k", 13),
                         (b"set k 0 0 1\r\nx", 9), (b"add k 0 0 1\r\nx", 10),
                         (b"replace k 0 0 1\r\nx", 19), (b"append k 0 0 1\r\nx", 17),
                         (b"prepend k 0 0 1\r\nx", 20), (b"cas k 0 0 1 1\r\nx", 11),
                         (b"incr k 1", 14), (b"decr k 1", 15), (b"touch k 1", 16),
                         (b"delete k", 18), (b"mg k", 1), (b"ms k 1\r\nx", 2), (b"md k", 3),
                         (b"ma k", 5), (b"me k", 6)]:
            assert c.request(req + b"\r\n") == b"SERVER_ERROR storage cmd=%d\r\n" % cmd, req
        # everything else is served locally
        assert c.request(b"version\r\n").startswith(b"VERSION 1.6.18")
        assert c.request(b"flush_all\r\n") == b"OK\r\n"
        assert c.request(b"verbosity 1\r\n") == b"OK\r\n"
        assert c.request(b"stats proxy\r\n", b"END\r\n").startswith(b"STAT ")


def test_attach_specific_commands(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "specific.lua", attach_file("""
        mcp.attach(mcp.CMD_GET, function(r) return "SERVER_ERROR get route" end)
        mcp.attach(mcp.CMD_MG, function(r) return "SERVER_ERROR mg route" end)
        -- a later attach replaces an earlier one
        mcp.attach(mcp.CMD_MG, function(r) return "SERVER_ERROR mg route 2" end)
        mcp.attach(mcp.CMD_DELETE, function(r) return mcp.internal(r) end)
    """))
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR get route\r\n"
        assert c.request(b"mg k v\r\n") == b"SERVER_ERROR mg route 2\r\n"
        # not attached: the embedded cache answers
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"gets k\r\n", b"END\r\n").startswith(b"VALUE k 0 1 ")
        assert c.request(b"delete k\r\n") == b"DELETED\r\n"  # via mcp.internal
        assert c.request(b"delete k\r\n") == b"NOT_FOUND\r\n"


def test_attach_route_then_local_in_one_pipeline_keeps_order(memroute_factory, startfile_dir):
    """A local command pipelined behind a routed one sees its effect."""
    path = write_startfile(startfile_dir, "order.lua", attach_file("""
        mcp.attach(mcp.CMD_SET, function(r) return mcp.internal(r) end)
    """))
    mr = memroute_factory("--config", str(path))
    with mr.client() as c:
        c.send(b"set k1 0 0 1\r\na\r\nget k1\r\nset k2 0 0 1\r\nb\r\nget k1 k2\r\nquit\r\n")
        assert c.wait_closed() == (b"STORED\r\nVALUE k1 0 1\r\na\r\nEND\r\nSTORED\r\n"
                                   b"VALUE k1 0 1\r\na\r\nVALUE k2 0 1\r\nb\r\nEND\r\n")


# One pipelined conversation over every kind of keyed command; its replies
# must be the same byte for byte from memcached itself, through a Lua route
# that calls the pool, and through the pool attached directly.
POOL_CONVERSATION = (
    b"set k1 5 0 2\r\nv1\r\n"
    b"get k1\r\nget nokey\r\n"
    b"get k1 nokey k1\r\n"
    b"gets k1\r\n"
    b"cas k1 0 0 2 999999\r\nzz\r\n"
    b"add k1 0 0 1\r\nx\r\n"
    b"append k1 0 0 3\r\n+ap\r\n"
    b"prepend k1 0 0 3\r\npp+\r\n"
    b"get k1\r\n"
    b"set n 0 0 2 noreply\r\n10\r\n"
    b"incr n 5\r\ndecr n 100\r\nincr nokey 1\r\n"
    b"touch k1 100\r\ngat 0 k1 nokey\r\n"
    b"delete nokey noreply\r\n"
    b"ms m1 3 T0 F7 q\r\nabc\r\n"
    b"mg m1 v f q\r\nmg nokey v q\r\nmg m1 s v\r\n"
    b"ma n D3\r\nmd m1 q\r\nmg m1 v\r\n"
    b"set big 0 0 70000\r\n" + b"b" * 70000 + b"\r\n"
    b"get big k1\r\n"
    b"delete k1\r\ndelete k1\r\n"
    b"mn\r\n"
)


def converse(server) -> bytes:
    with server.client() as c:
        c.send(POOL_CONVERSATION)
        return c.read_until(b"MN\r\n")


def test_attach_pool_directly_answers_as_a_lua_route(memroute_factory, backends, startfile_dir):
    """`mcp.attach(cmd, pool)` needs no Lua per request and answers exactly
    as `function(r) return pool(r) end` and as memcached itself."""
    direct, via_lua, via_pool = backends(3)
    pools = """function mcp_config_pools()
        return { main = mcp.pool({ mcp.backend("b", "127.0.0.1", tonumber(mcp.start_arg)) }) }
    end
    """
    lua_route = write_startfile(startfile_dir, "lua-route.lua", pools + """
    function mcp_config_routes(p)
        mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return p.main(r) end)
    end
    """)
    pool_route = write_startfile(startfile_dir, "pool-route.lua", pools + """
    function mcp_config_routes(p)
        mcp.attach(mcp.CMD_ANY_STORAGE, p.main)
    end
    """)
    through_lua = memroute_factory("--config", str(lua_route), "--config-arg", str(via_lua.port))
    through_pool = memroute_factory("--config", str(pool_route), "--config-arg", str(via_pool.port))
    expected = converse(direct)
    assert b"VALUE k1 5 2\r\nv1\r\nEND\r\n" in expected and b"EXISTS\r\n" in expected
    assert converse(through_lua) == expected
    assert converse(through_pool) == expected
    # what the pool route stored is in its backend: 10 +5 -100 (floor 0) +3
    assert mc_get(via_pool, "n") == b"3 "  # memcached keeps the length decr left


def test_attach_pool_directly_multiget_over_several_backends(memroute_factory, backends,
                                                            startfile_dir):
    """A multi-key get on a directly attached pool goes out as one line per
    backend and comes back in the client's key order, with repeats and
    misses, exactly as the per-key Lua route answers; a dead backend's keys
    read as misses."""
    servers = backends(3)
    path = write_startfile(startfile_dir, "multi.lua", """
    function mcp_config_pools()
        local bs = {}
        for port in string.gmatch(mcp.start_arg, "%d+") do
            table.insert(bs, mcp.backend{ label = "b" .. #bs, host = "127.0.0.1", port = port,
                connecttimeout = 1, retrywaittime = 30 })
        end
        return { main = mcp.pool(bs, { dist = mcp.dist_ring_hash }) }
    end
    function mcp_config_routes(p)
        if mcp.start_arg:find("lua") then
            mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return p.main(r) end)
        else
            mcp.attach(mcp.CMD_ANY_STORAGE, p.main)
        end
    end
    """)
    ports = ",".join(str(s.port) for s in servers)
    direct = memroute_factory("--config", str(path), "--config-arg", ports)
    via_lua = memroute_factory("--config", str(path), "--config-arg", ports + ",lua")
    keys = [b"mk%d" % i for i in range(60)]
    with direct.client() as c:
        for i, key in enumerate(keys[:40]):
            assert c.request(b"set %s %d 0 %d\r\n%s\r\n" % (key, i, len(key), key)) == b"STORED\r\n"
    # every backend holds some of the keys, so the reply is a merge
    assert all(any(mc_get(s, k.decode()) for k in keys[:40]) for s in servers)
    asked = keys[35:45] + keys[::-3] + [keys[0], keys[0], b"nokey"] + keys[:5]
    expected = b"".join(b"VALUE %s %d %d\r\n%s\r\n" % (k, keys.index(k), len(k), k)
                        for k in asked if k in keys[:40]) + b"END\r\n"
    for op in (b"get", b"gat 0"):
        line = op + b" " + b" ".join(asked) + b"\r\n"
        for server in (direct, via_lua):
            with server.client() as c:
                assert c.request(line, b"END\r\n") == expected
    with direct.client() as c:
        gets = c.request(b"gets " + b" ".join(asked) + b"\r\n", b"END\r\n")
    assert [line.split()[1] for line in gets.split(b"\r\n") if line.startswith(b"VALUE")] == \
        [k for k in asked if k in keys[:40]]
    # one backend gone: its keys miss, the others still answer in order
    servers[1].stop()
    survivors = [k for k in asked if k in keys[:40] if mc_get(servers[0], k.decode())
                 or mc_get(servers[2], k.decode())]
    assert 0 < len(survivors) < len([k for k in asked if k in keys[:40]])
    expected = b"".join(b"VALUE %s %d %d\r\n%s\r\n" % (k, keys.index(k), len(k), k)
                        for k in survivors) + b"END\r\n"
    with direct.client() as c:
        assert c.request(b"get " + b" ".join(asked) + b"\r\n", b"END\r\n") == expected


def test_attach_pool_directly_fails_like_a_lua_route(memroute_factory, startfile_dir):
    """A pool attached directly answers a dead backend with the same
    SERVER_ERROR, and the connection stays usable."""
    path = write_startfile(startfile_dir, "deadpool.lua", """
    function mcp_config_pools()
        return { dead = mcp.pool({ mcp.backend{ label = "dead", host = "127.0.0.1",
            port = tonumber(mcp.start_arg), connecttimeout = 1 } }) }
    end
    function mcp_config_routes(p)
        mcp.attach(mcp.CMD_GET, p.dead)
    end
    """)
    mr = memroute_factory("--config", str(path), "--config-arg", str(free_port()))
    with mr.client() as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR backend failure\r\n"
        assert c.request(b"get a b\r\n") == b"END\r\n"
        # commands without a route still reach the embedded cache
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"


@pytest.mark.parametrize("body,message", [
    ("mcp.attach(9999, function(r) end)", r"mcp\.attach: unknown command"),
    ("mcp.attach(mcp.CMD_MN, function(r) end)", r"cannot have a route"),
    ("mcp.attach(mcp.CMD_QUIT, function(r) end)", r"cannot have a route"),
    ("mcp.attach(mcp.CMD_GET, 'not a function')", r"route function, a pool, a funcgen or a router"),
    ("mcp.attach(mcp.CMD_GET, mcp.request('get x'))", r"route function, a pool, a funcgen or a router"),
])
def test_attach_errors_fail_at_start(body, message, startfile_dir):
    expect_start_failure(startfile_dir, "badattach.lua", attach_file(body), message,
                         at="mcp.attach(")

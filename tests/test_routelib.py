"""routelib configurations, run by memroute's native route library, against
real memcached backends.

A route file in memcached's routelib format (`pools{}`, `routes{}`,
`route_*{}`) is loaded with `--routes FILE` or `-o
proxy_config=routelib,proxy_arg=FILE`; each handler's effect is checked on
the backends themselves (which got the write, which were asked), and
mistakes in the file stop the start with the file, line and field.
"""

from __future__ import annotations

import pytest

from conftest import (mc_get, mc_set, run_memroute_expect_failure, stats_dict, wait_until,
                      write_startfile)


def routes_file(startfile_dir, text: str, name: str = "routes.lua"):
    return write_startfile(startfile_dir, name, text)


def pools_text(**pools) -> str:
    """`pools{ name = { backends = { "addr" ... } } ... }`."""
    lines = ["pools{"]
    for name, servers in pools.items():
        addrs = ", ".join('"%s"' % s.addr for s in servers)
        lines.append("    %s = { backends = { %s } }," % (name, addrs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def test_prefix_map_and_default_route_to_their_pools(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) + """
routes{
    map = {
        foo = route_direct{ child = "pa" },
    },
    default = route_direct{ child = "pb" },
}
""")
    mr = memroute_factory("--routes", str(path))
    with mr.client() as c:
        assert c.request(b"set foo/1 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"set bar/1 0 0 1\r\ny\r\n") == b"STORED\r\n"
        assert c.request(b"set plain 0 0 1\r\nz\r\n") == b"STORED\r\n"
    assert mc_get(a, "foo/1") == b"x" and mc_get(b, "foo/1") is None
    assert mc_get(b, "bar/1") == b"y" and mc_get(b, "plain") == b"z"


def test_memcached_style_option_and_anchor_mode(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) + """
routes{
    conf = { mode = "anchor", start = "/", stop = "/" },
    map = { foo = route_direct{ child = "pa" } },
    default = route_direct{ child = "pb" },
}
""")
    mr = memroute_factory("-o", "proxy_config=routelib,proxy_arg=%s" % path)
    with mr.client() as c:
        assert c.request(b"set /foo/k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        # No leading "/": not anchored, so the default.
        assert c.request(b"set foo/k 0 0 1\r\ny\r\n") == b"STORED\r\n"
    assert mc_get(a, "/foo/k") == b"x" and mc_get(b, "foo/k") == b"y"


def test_allsync_writes_everywhere_and_cmdmap_splits_commands(backends, memroute_factory,
                                                              startfile_dir):
    a, b, c3 = backends(3)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b], pc=[c3]) + """
routes{
    map = {
        w = cmdmap{
            set = route_allsync{ children = { "pa", "pb" } },
            get = route_direct{ child = "pc" },
        },
    },
}
""")
    mr = memroute_factory("--routes", str(path))
    mc_set(c3, "w/k", b"from-c")
    with mr.client() as c:
        assert c.request(b"set w/k 0 0 2\r\nhi\r\n") == b"STORED\r\n"
        assert c.request(b"get w/k\r\n", b"END\r\n") == b"VALUE w/k 0 6\r\nfrom-c\r\nEND\r\n"
        # A command the map has no route for, and no default.
        assert c.request(b"delete w/k\r\n") == b"SERVER_ERROR no route\r\n"
    assert mc_get(a, "w/k") == b"hi" and mc_get(b, "w/k") == b"hi"


def test_failover_skips_a_dead_pool_and_counts_retries(backends, memroute_factory,
                                                       startfile_dir):
    live, = backends(1)
    path = routes_file(startfile_dir, """
pools{
    dead = { backends = { "127.0.0.1:1" } },
    live = { backends = { "%s" } },
}
routes{
    default = route_failover{ children = { "dead", "live" }, stats = true },
}
""" % live.addr)
    mr = memroute_factory("--routes", str(path))
    mc_set(live, "k", b"v")
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
        assert c.request(b"set k2 0 0 1\r\nw\r\n") == b"STORED\r\n"
        proxy = stats_dict(c, b"proxy")
    assert mc_get(live, "k2") == b"w"
    assert int(proxy["default_retries"]) == 2


def test_failover_on_miss_reads_the_second_pool(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) + """
routes{
    default = route_failover{ children = { "pa", "pb" }, miss = true },
}
""")
    mr = memroute_factory("--routes", str(path))
    mc_set(b, "only-b", b"bee")
    with mr.client() as c:
        assert c.request(b"get only-b\r\n", b"END\r\n") == b"VALUE only-b 0 3\r\nbee\r\nEND\r\n"
        assert c.request(b"get nowhere\r\n", b"END\r\n") == b"END\r\n"


def test_zfailover_prefers_the_local_zone(backends, memroute_factory, startfile_dir):
    east, west = backends(2)
    path = routes_file(startfile_dir, """
local_zone("east")
pools{
    set_main = {
        east = { backends = { "%s" } },
        west = { backends = { "%s" } },
    },
}
routes{
    default = route_zfailover{ children = "set_main", miss = true },
}
""" % (east.addr, west.addr))
    mr = memroute_factory("--routes", str(path))
    mc_set(east, "k", b"near")
    mc_set(west, "k", b"far")
    mc_set(west, "west-only", b"w")
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 4\r\nnear\r\nEND\r\n"
        assert c.request(b"get west-only\r\n", b"END\r\n") == b"VALUE west-only 0 1\r\nw\r\nEND\r\n"


def test_ttl_split_and_null(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) + """
routes{
    map = {
        t = route_ttl{ child = "pa", ttl = 1000 },
        s = route_split{ child_a = "pa", child_b = "pb" },
        n = route_null{},
    },
}
""")
    mr = memroute_factory("--routes", str(path))
    with mr.client() as c:
        assert c.request(b"set t/k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"set s/k 0 0 1\r\ny\r\n") == b"STORED\r\n"
        assert c.request(b"set n/k 0 0 1\r\nz\r\n") == b"NOT_STORED\r\n"
        assert c.request(b"get n/k\r\n", b"END\r\n") == b"END\r\n"
    with a.client() as c:
        meta = c.request(b"mg t/k t\r\n")
    assert meta.startswith(b"HD t") and 990 <= int(meta.split(b"t")[-1]) <= 1000
    assert mc_get(a, "s/k") == b"y"
    # child_b's copy is sent beside child_a's, its reply not waited for.
    wait_until(lambda: mc_get(b, "s/k") == b"y", 5, what="route_split's copy on child_b")
    assert mc_get(a, "n/k") is None and mc_get(b, "n/k") is None


@pytest.mark.parametrize("text, message", [
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{\n  default = route_failover{ children = { "p" }, failover_cnt = 2 },\n}\n',
     "routes.lua:3: route_failover: unknown option 'failover_cnt'"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{\n  default = route_direct{ child = "q" },\n}\n',
     "routes.lua:3: no pool named 'q'"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{ default = route_ttl{ child = "p", ttl = "soon" } }\n',
     "routes.lua:2: route_ttl: ttl must be a number"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{ tag = "too_long_tag", default = route_direct{ child = "p" } }\n',
     "routes.lua:2: routes: tag \"too_long_tag\" must be 1 to 8 bytes long"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{ default = route_direct{ child = "p" } }\n'
     'routes{ default = route_direct{ child = "p" } }\n',
     "routes.lua:3: routes: a second untagged routes{} section (the first is at"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'settings{ no_such = 1 }\nroutes{ default = route_direct{ child = "p" } }\n',
     "routes.lua:2: settings: unknown setting 'no_such'"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n'
     'routes{ default = route_zfailover{ children = { a = "p" } } }\n',
     "route_zfailover: needs local_zone"),
    ('pools{ p = { backends = { "127.0.0.1:1" } } }\n',
     "no routes{} section"),
])
def test_mistakes_name_the_file_line_and_field(startfile_dir, text, message):
    path = routes_file(startfile_dir, text)
    result = run_memroute_expect_failure(["--routes", str(path)])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_reload_swaps_the_route_tree(backends, memroute_factory, startfile_dir):
    import signal

    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) +
                       'routes{ default = route_direct{ child = "pa" } }\n')
    mr = memroute_factory("--routes", str(path))
    with mr.client() as c:
        assert c.request(b"set k1 0 0 1\r\n1\r\n") == b"STORED\r\n"
    routes_file(startfile_dir, pools_text(pa=[a], pb=[b]) +
                'routes{ default = route_direct{ child = "pb" } }\n')
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as c:
        wait_until(lambda: stats_dict(c, b"proxy").get("config_reloads") == "1", 10,
                   what="the reload")
        assert c.request(b"set k2 0 0 1\r\n2\r\n") == b"STORED\r\n"
    assert mc_get(a, "k1") == b"1" and mc_get(b, "k2") == b"2" and mc_get(a, "k2") is None


FLUSH_STARTFILE = """
function mcp_config_pools()
    local function pool(addrs)
        local bs = {}
        for i, a in ipairs(addrs) do
            local host, port = a:match("^(.+):(%%d+)$")
            table.insert(bs, mcp.backend("b" .. a, host, tonumber(port)))
        end
        return mcp.pool(bs)
    end
    return { a = pool({ "%s", "%s" }), b = pool({ "%s" }) }
end
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return p.a(r) end)
end
"""


@pytest.mark.parametrize("mode", ["routelib", "startfile"])
def test_flush_all_reaches_every_backend_of_every_pool(backends, memroute_factory,
                                                       startfile_dir, mode):
    a1, a2, b1 = backends(3)
    if mode == "routelib":
        path = routes_file(startfile_dir, pools_text(pa=[a1, a2], pb=[b1]) +
                           'routes{ default = route_direct{ child = "pa" } }\n')
        mr = memroute_factory("--routes", str(path))
    else:
        path = write_startfile(startfile_dir, "flush.lua",
                               FLUSH_STARTFILE % (a1.addr, a2.addr, b1.addr))
        mr = memroute_factory("--config", str(path))
    for server in (a1, a2, b1):
        mc_set(server, "k", b"v")
    with mr.client() as c:
        assert c.request(b"flush_all\r\n") == b"OK\r\n"
        assert c.request(b"flush_all noreply\r\nmn\r\n") == b"MN\r\n"
    for server in (a1, a2, b1):
        assert mc_get(server, "k") is None, server.addr
        with server.client() as c:
            assert int(stats_dict(c)["cmd_flush"]) == 2


def test_warmup_fills_the_cold_pool_from_the_warm_one(backends, memroute_factory,
                                                      startfile_dir):
    cold, warm = backends(2)
    path = routes_file(startfile_dir, pools_text(cold=[cold], warm=[warm]) + """
routes{ default = route_warmup{ child_cold = "cold", child_warm = "warm" } }
""")
    mr = memroute_factory("--routes", str(path))
    with warm.client() as c:
        assert c.request(b"ms k 5 F7 T500\r\nhello\r\n") == b"HD\r\n"
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 7 5\r\nhello\r\nEND\r\n"
        assert c.request(b"get absent\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(b"set w 0 0 1\r\nx\r\n") == b"STORED\r\n"
    # The copy lands in the background, with the warm item's flags and TTL.
    wait_until(lambda: mc_get(cold, "k") == b"hello", 5, what="the warmed copy")
    with cold.client() as c:
        meta = c.request(b"mg k f t\r\n")
    assert meta.startswith(b"HD f7 t") and 480 <= int(meta.split(b"t")[-1]) <= 500, meta
    assert mc_get(cold, "w") == b"x" and mc_get(warm, "w") is None


def test_l1l2_reads_through_the_embedded_cache_and_writes_invalidate_it(
        backends, memroute_factory, startfile_dir):
    far, = backends(1)
    path = routes_file(startfile_dir, pools_text(far=[far]) + """
routes{ default = route_l1l2{ child_l1 = "internal", child_l2 = "far", ttl = 60 } }
""")
    mr = memroute_factory("--routes", str(path), "-t", "1")
    mc_set(far, "k", b"v1")
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 2\r\nv1\r\nEND\r\n"
        # Changed behind memroute's back: the near copy still answers.
        mc_set(far, "k", b"v2")
        wait_until(lambda: c.request(b"get k\r\n", b"END\r\n") ==
                   b"VALUE k 0 2\r\nv1\r\nEND\r\n", 5, what="the L1 copy")
        # A write through memroute drops the near copy first.
        assert c.request(b"set k 0 0 2\r\nv3\r\n") == b"STORED\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 2\r\nv3\r\nEND\r\n"
    assert mc_get(far, "k") == b"v3"


def test_migrate_window_writes_new_reads_fall_back_deletes_both(backends, memroute_factory,
                                                               startfile_dir):
    import time
    old, new = backends(2)
    now = int(time.time())
    path = routes_file(startfile_dir, pools_text(old=[old], new=[new]) + """
routes{
    map = {
        during = route_migrate{ child_from = "old", child_to = "new",
                                start = %d, stop = %d, stats = true },
        after = route_migrate{ child_from = "old", child_to = "new", start = 1, stop = 2 },
    },
}
""" % (now - 10, now + 3600))
    mr = memroute_factory("--routes", str(path))
    mc_set(old, "during/a", b"old-a")
    mc_set(old, "during/d", b"x")
    mc_set(new, "during/d", b"y")
    mc_set(old, "after/a", b"old")
    with mr.client() as c:
        assert c.request(b"get during/a\r\n", b"END\r\n") == b"VALUE during/a 0 5\r\nold-a\r\nEND\r\n"
        assert c.request(b"set during/b 0 0 1\r\nn\r\n") == b"STORED\r\n"
        assert c.request(b"delete during/d\r\n") == b"DELETED\r\n"
        assert c.request(b"get after/a\r\n", b"END\r\n") == b"END\r\n"
        proxy = stats_dict(c, b"proxy")
    assert mc_get(new, "during/b") == b"n" and mc_get(old, "during/b") is None
    assert mc_get(old, "during/d") is None and mc_get(new, "during/d") is None
    assert int(proxy["during_fallbacks"]) == 1


def test_allmajority_shadow_and_error(backends, memroute_factory, startfile_dir):
    a, b, c3, s = backends(4)
    path = routes_file(startfile_dir, pools_text(pa=[a], pb=[b], pc=[c3], ps=[s]) + """
routes{
    map = {
        m = route_allmajority{ children = { "pa", "pb", "pc" } },
        sh = route_shadow{ child = "pa", child_shadow = "ps", rate = 1 },
        off = route_error{ message = "this prefix is retired" },
    },
}
""")
    mr = memroute_factory("--routes", str(path))
    mc_set(a, "m/k", b"1")
    mc_set(b, "m/k", b"1")
    with mr.client() as c:
        # Two of three hold the key: the majority answer is the hit.
        assert c.request(b"get m/k\r\n", b"END\r\n") == b"VALUE m/k 0 1\r\n1\r\nEND\r\n"
        assert c.request(b"set sh/k 0 0 1\r\nz\r\n") == b"STORED\r\n"
        assert c.request(b"get off/k\r\n") == b"SERVER_ERROR this prefix is retired\r\n"
    assert mc_get(a, "sh/k") == b"z"
    wait_until(lambda: mc_get(s, "sh/k") == b"z", 5, what="the shadow copy")


def test_mcrouter_admin_keys_say_where_a_key_goes(backends, memroute_factory, startfile_dir):
    a1, a2, b = backends(3)
    path = routes_file(startfile_dir, pools_text(pa=[a1, a2], pb=[b]) + """
routes{
    map = { foo = route_failover{ children = { "pa", "pb" } } },
    default = route_direct{ child = "pa" },
}
""")
    mr = memroute_factory("--routes", str(path))
    addrs = {a1.addr, a2.addr}
    with mr.client() as c:
        reply = c.request(b"get __mcrouter__.route(get,foo/k)\r\n", b"END\r\n")
        head, body, end = reply.split(b"\r\n", 1)[0], reply.split(b"\r\n", 1)[1][:-7], reply[-5:]
        lines = body.decode().split("\r\n")
        assert head.startswith(b"VALUE __mcrouter__.route(get,foo/k) 0 ") and end == b"END\r\n"
        # The failover's first pool maps the key to one of its two servers,
        # then the second pool's only server.
        assert len(lines) == 2 and lines[0] in addrs and lines[1] == b.addr, lines
        # The pool's pick is the server that really gets the key.
        assert c.request(b"set foo/k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        owner = a1 if lines[0] == a1.addr else a2
        assert mc_get(owner, "foo/k") == b"x"
        tree = c.request(b"get __mcrouter__.route_handles(set,other)\r\n", b"END\r\n")
        assert b"router\r\n  direct\r\n    pool pa -> " in tree, tree
        assert c.request(b"get __mcrouter__.route(frob,k)\r\n", b"END\r\n").split(b"\r\n")[1] == \
            b"unknown operation"


def big_index(servers, key: str):
    """(server, flags, index value) of a route_bigvalue index item, read
    straight from whichever server holds it."""
    for server in servers:
        with server.client() as c:
            line = c.request(b"mg %s f v\r\n" % key.encode())
            if line.startswith(b"VA "):
                size = int(line.split()[1])
                flags = int([t for t in line.split() if t.startswith(b"f")][0][1:])
                value = c.read_exact(size + 2)[:-2]
                return server, flags, value
    return None


def chunk_keys(key: str, index: bytes) -> list:
    _, count, generation = index.decode().split("-")
    return ["%s:%d:%s" % (key, i, generation) for i in range(int(count))]


def holder(servers, key: str):
    return next((s for s in servers if mc_get(s, key) is not None), None)


def test_bigvalue_splits_big_values_into_chunks_and_reads_them_back_whole(
        backends, memroute_factory, startfile_dir):
    import pymemcache.client.base

    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(main=[a, b]) + """
routes{ default = route_bigvalue{ child = "main", threshold = 100000, chunk = 65536 } }
""")
    mr = memroute_factory("--routes", str(path), "-I", "8m")
    big = bytes(range(256)) * 12000 + b"tail"      # 3,072,004 bytes: 47 chunks
    with mr.client() as c:
        c.send(b"set big 42 0 %d\r\n%s\r\n" % (len(big), big))
        assert c.read_line() == b"STORED\r\n"
        assert c.request(b"set small 7 0 5\r\nhello\r\n") == b"STORED\r\n"
        reply = c.request(b"get big\r\n", b"END\r\n")
        assert reply == b"VALUE big 42 %d\r\n%s\r\nEND\r\n" % (len(big), big)
        # A multi-get mixes chunked, plain and missing keys in key order.
        reply = c.request(b"get small nothing big small\r\n", b"END\r\n")
        assert reply == (b"VALUE small 7 5\r\nhello\r\nVALUE big 42 %d\r\n%s\r\n"
                         b"VALUE small 7 5\r\nhello\r\nEND\r\n" % (len(big), big))
        meta = c.request(b"mg big s f t v\r\n", b"\r\n")
        assert meta == b"VA %d s%d f42 t-1\r\n" % (len(big), len(big))
        assert c.read_exact(len(big) + 2) == big + b"\r\n"
        # Small values are the backends' own, byte for byte (no flag added).
        assert c.request(b"mg small s v\r\n", b"hello\r\n") == b"VA 5 s5\r\nhello\r\n"
        assert c.request(b"mg big\r\n") == b"HD\r\n"
        # The flag bit the index uses is not for clients.
        assert c.request(b"set bad 32768 0 1\r\nx\r\n").startswith(b"CLIENT_ERROR")
        assert c.request(b"append big 0 0 1\r\nx\r\n").startswith(b"SERVER_ERROR")
    # On the servers: an index with mcrouter's flag and layout, and chunks
    # no bigger than `chunk` spread over both.
    server, flags, index = big_index([a, b], "big")
    assert flags == 42 | 0x8000 and index.startswith(b"1-47-"), (flags, index)
    chunks = chunk_keys("big", index)
    held = [holder([a, b], k) for k in chunks]
    assert all(held) and {h.addr for h in held} == {a.addr, b.addr}
    assert b"".join(mc_get(h, k) for h, k in zip(held, chunks)) == big

    # pymemcache, and CAS on a chunked value.
    host, port = mr.addr.rsplit(":", 1)
    client = pymemcache.client.base.Client((host, int(port)), timeout=10)
    value, cas = client.gets("big")
    assert value == big
    other = b"z" * 250000
    assert client.cas("big", other, cas) is True
    assert client.cas("big", b"y" * 250000, cas) is False
    assert client.get("big") == other
    assert client.get_many(["big", "small"]) == {"big": other, "small": b"hello"}
    client.close()
    # The failed cas wrote its chunks, then cleaned them up: only the
    # stored write's index remains and it reads whole.
    _, _, index2 = big_index([a, b], "big")
    assert index2 != index and index2.startswith(b"1-4-")
    with mr.client() as c:
        assert c.request(b"delete big\r\n") == b"DELETED\r\n"
        assert c.request(b"get big\r\n", b"END\r\n") == b"END\r\n"


def test_bigvalue_never_mixes_writes_and_a_missing_chunk_is_a_miss(
        backends, memroute_factory, startfile_dir):
    a, = backends(1)
    path = routes_file(startfile_dir, pools_text(main=[a]) + """
routes{ default = route_bigvalue{ child = "main", threshold = 1000 } }
""")
    mr = memroute_factory("--routes", str(path))
    first, second = b"A" * 5000, b"B" * 5000
    with mr.client() as c:
        assert c.request(b"set k 0 0 5000\r\n%s\r\n" % first) == b"STORED\r\n"
        _, flags, index_a = big_index([a], "k")
        assert c.request(b"set k 0 0 5000\r\n%s\r\n" % second) == b"STORED\r\n"
        _, _, index_b = big_index([a], "k")
        assert index_a != index_b
        # Both writes' chunks are on the server; an index reads only its own.
        mc_set(a, "k", index_a, flags)
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 5000\r\n%s\r\nEND\r\n" % first
        mc_set(a, "k", index_b, flags)
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 5000\r\n%s\r\nEND\r\n" % second
        # One chunk gone (evicted, say): the whole value is a miss.
        with a.client() as direct:
            assert direct.request(b"delete %s\r\n" % chunk_keys("k", index_b)[2].encode()) == \
                b"DELETED\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(b"mg k v\r\n") == b"EN\r\n"
        # A damaged index is a miss too.
        mc_set(a, "k", b"1-banana", flags)
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        # touch and gat reach the chunks as well as the index.
        assert c.request(b"set t 0 0 3000\r\n%s\r\n" % (b"t" * 3000)) == b"STORED\r\n"
        assert c.request(b"touch t 500\r\n") == b"TOUCHED\r\n"
        _, _, index_t = big_index([a], "t")
        with a.client() as direct:
            for key in chunk_keys("t", index_t):
                ttl = int(direct.request(b"mg %s t\r\n" % key.encode()).split(b"t")[-1])
                assert 490 <= ttl <= 500, (key, ttl)
        reply = c.request(b"gat 900 t\r\n", b"END\r\n")
        assert reply == b"VALUE t 0 3000\r\n%s\r\nEND\r\n" % (b"t" * 3000)
        with a.client() as direct:
            key = chunk_keys("t", index_t)[-1]
            assert int(direct.request(b"mg %s t\r\n" % key.encode()).split(b"t")[-1]) > 800
        # add on an existing key: the index refuses, the chunks go away.
        assert c.request(b"add t 0 0 3000\r\n%s\r\n" % (b"u" * 3000)) == b"NOT_STORED\r\n"
        assert c.request(b"ms t 3000 MS T0 F5\r\n%s\r\n" % (b"v" * 3000)) == b"HD\r\n"
        assert c.request(b"mg t f v\r\n", b"\r\n") == b"VA 3000 f5\r\n"
        assert c.read_exact(3002) == b"v" * 3000 + b"\r\n"


def test_bigvalue_with_a_dead_backend_fails_writes_and_misses_reads(
        backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = routes_file(startfile_dir, pools_text(main=[a, b]) + """
routes{ default = route_bigvalue{ child = "main", threshold = 1000 } }
""")
    mr = memroute_factory("--routes", str(path))
    value = b"x" * 40000
    with mr.client() as c:
        assert c.request(b"set k 0 0 40000\r\n%s\r\n" % value) == b"STORED\r\n"
        b.stop()
        # 40 chunks over two servers: some were on the dead one, and the
        # read answers its error (the index's own server may be either).
        assert c.request(b"get k\r\n").startswith(b"SERVER_ERROR")
        # In a multi-get a failed key reads as a miss.
        assert c.request(b"get k k\r\n") == b"END\r\n"
        reply = c.request(b"set k2 0 0 40000\r\n%s\r\n" % value)
        assert reply.startswith(b"SERVER_ERROR"), reply
        assert not c.request(b"get k2\r\n").startswith(b"VALUE")
        # Small values on the live server still work.
        live_key = next(k for k in ("s%d" % i for i in range(100))
                        if c.request(b"set %s 0 0 1\r\n1\r\n" % k.encode()) == b"STORED\r\n")
        assert c.request(b"get %s\r\n" % live_key.encode(), b"END\r\n").startswith(b"VALUE")


def test_keysplit_writes_every_copy_and_spreads_reads(backends, memroute_factory,
                                                      startfile_dir):
    servers = backends(3)
    path = routes_file(startfile_dir, pools_text(main=servers) + """
routes{ default = route_keysplit{ child = "main", copies = 3 } }
""")
    mr = memroute_factory("--routes", str(path))
    copies = ["hot", "hot::ks1", "hot::ks2"]

    def gets_per_server():
        out = []
        for s in servers:
            with s.client() as c:
                out.append(int(stats_dict(c)["get_hits"]))
        return out

    with mr.client() as c:
        assert c.request(b"set hot 3 0 2\r\nhi\r\n") == b"STORED\r\n"
        for key in copies:
            assert holder(servers, key) is not None, key
        before = gets_per_server()
        for _ in range(60):
            assert c.request(b"get hot\r\n", b"END\r\n") == b"VALUE hot 3 2\r\nhi\r\nEND\r\n"
            assert c.request(b"mg hot k v\r\n", b"hi\r\n") == b"VA 2 khot\r\nhi\r\n"
        after = gets_per_server()
        # 120 reads, spread over the copies' servers (more than one).
        assert sum(after) - sum(before) == 120
        assert sum(1 for x, y in zip(before, after) if y > x) >= 2, (before, after)
        # A user key cannot be a copy of another key.
        assert c.request(b"set hot::ks1 0 0 1\r\nx\r\n").startswith(b"CLIENT_ERROR")
        assert c.request(b"set user::42 0 0 1\r\nx\r\n") == b"STORED\r\n"
        # CAS lives on copy 0; a cas drops the other copies.
        head = c.request(b"gets hot\r\n", b"END\r\n").split(b"\r\n")[0]
        cas = int(head.split()[-1])
        assert c.request(b"cas hot 0 0 3 %d\r\nnew\r\n" % cas) == b"STORED\r\n"
        assert mc_get(holder(servers, "hot"), "hot") == b"new"
        assert holder(servers, "hot::ks1") is None and holder(servers, "hot::ks2") is None
        assert c.request(b"set hot 0 0 2\r\nv2\r\n") == b"STORED\r\n"
        assert c.request(b"incr cnt 1\r\n") == b"NOT_FOUND\r\n"
        assert c.request(b"delete hot\r\n") == b"DELETED\r\n"
        for key in copies:
            assert holder(servers, key) is None, key
        # A key too long for the suffix is not split.
        long_key = "L" * 248
        assert c.request(b"set %s 0 0 1\r\nx\r\n" % long_key.encode()) == b"STORED\r\n"
        assert c.request(b"get %s\r\n" % long_key.encode(), b"END\r\n").startswith(b"VALUE")
        assert holder(servers, long_key) is not None


def test_keysplit_reads_survive_a_dead_copy(backends, memroute_factory, startfile_dir):
    servers = backends(3)
    path = routes_file(startfile_dir, pools_text(main=servers) + """
routes{ default = route_keysplit{ child = "main", copies = 3 } }
""")
    mr = memroute_factory("--routes", str(path))
    # A key whose copies are not all on one server.
    with mr.client() as c:
        for i in range(50):
            key = "k%d" % i
            assert c.request(b"set %s 0 0 1\r\nv\r\n" % key.encode()) == b"STORED\r\n"
            owners = {holder(servers, k).addr for k in
                      (key, key + "::ks1", key + "::ks2")}
            if len(owners) > 1:
                break
        victim = holder(servers, key + "::ks1")
        victim.stop()
        for _ in range(30):
            assert c.request(b"get %s\r\n" % key.encode(), b"END\r\n") == \
                b"VALUE %s 0 1\r\nv\r\nEND\r\n" % key.encode()
        # A write cannot reach every copy: the client hears of it.
        assert c.request(b"set %s 0 0 1\r\nw\r\n" % key.encode()).startswith(b"SERVER_ERROR")


def test_l1l2_negative_caching_remembers_misses_until_a_write(backends, memroute_factory,
                                                              startfile_dir):
    import time
    far, = backends(1)
    path = routes_file(startfile_dir, pools_text(far=[far]) + """
routes{ default = route_l1l2{ child_l1 = "internal", child_l2 = "far", ttl = 60,
                              negative_ttl = 2 } }
""")
    mr = memroute_factory("--routes", str(path), "-t", "1")

    def far_gets():
        with far.client() as c:
            return int(stats_dict(c)["cmd_get"])

    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        wait_until(lambda: c.request(b"mg k v\r\n") == b"EN\r\n", 5, what="the negative entry")
        # Stored behind memroute's back: the negative entry still answers,
        # and L2 is not asked.
        mc_set(far, "k", b"v1")
        start = time.monotonic()
        before = far_gets()
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(b"mg k v f\r\n") == b"EN\r\n"
        assert c.request(b"mg k\r\n") == b"EN\r\n"
        if time.monotonic() - start < 1.5:
            assert far_gets() == before
        # It expires after negative_ttl.
        wait_until(lambda: c.request(b"get k\r\n", b"END\r\n") ==
                   b"VALUE k 0 2\r\nv1\r\nEND\r\n", 5, what="the negative entry to expire")
        # A write through memroute drops a negative entry at once.
        assert c.request(b"get n\r\n", b"END\r\n") == b"END\r\n"
        wait_until(lambda: c.request(b"mg n\r\n") == b"EN\r\n", 5, what="n's negative entry")
        assert c.request(b"set n 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.request(b"get n\r\n", b"END\r\n") == b"VALUE n 0 1\r\nx\r\nEND\r\n"
        # L2 down: an error is no miss, and is not remembered as one.
        far.stop()
        assert c.request(b"get gone\r\n").startswith(b"SERVER_ERROR")
        time.sleep(0.2)
        assert c.request(b"mg gone v\r\n").startswith(b"SERVER_ERROR")


@pytest.mark.parametrize("handler, message", [
    ('route_bigvalue{ child = "p" }', "route_bigvalue: threshold is required"),
    ('route_bigvalue{ child = "p", threshold = 0 }', "route_bigvalue: threshold must be"),
    ('route_keysplit{ child = "p", copies = 1 }', "route_keysplit: copies must be"),
    ('route_keysplit{ child = "p", copies = 3, hot = true }',
     "route_keysplit: unknown option 'hot'"),
    ('route_l1l2{ child_l1 = "p", child_l2 = "p", negative_ttl = -1 }',
     "route_l1l2: negative_ttl must be"),
])
def test_new_handler_mistakes_are_load_errors(startfile_dir, handler, message):
    path = routes_file(startfile_dir, 'pools{ p = { backends = { "127.0.0.1:1" } } }\n'
                       'routes{ default = %s }\n' % handler)
    result = run_memroute_expect_failure(["--routes", str(path)])
    assert result.returncode != 0
    assert "routes.lua:2: " + message in result.stderr, result.stderr


HANDLER_LIBRARY = """
register_route_handlers({ "hello", "copyall" })

-- Config VM: decorate the options, take a counter.
function route_hello_conf(t, ctx)
    t.msg = t.msg .. " " .. ctx:label()
    if t.stats then
        t.stats_id = ctx:get_stats_id("hello_calls")
    end
    return t
end

-- Worker VMs: make the funcgen.
function route_hello_start(a, ctx, fgen)
    fgen:ready({ a = a, n = ctx:label(), f = route_hello_f })
end

function route_hello_f(rctx, a)
    local msg = "SERVER_ERROR " .. a.msg .. "\\r\\n"
    local id = a.stats_id
    return function(r)
        if id then mcp.stat(id, 1) end
        return msg
    end
end

function route_copyall_conf(t, ctx)
    return t
end

-- Every child gets the request; the first child's result is the answer.
function route_copyall_start(a, ctx, fgen)
    local handles = {}
    for _, child in ipairs(a.children) do
        table.insert(handles, fgen:new_handle(child))
    end
    fgen:ready({ a = handles, n = ctx:label(), f = route_copyall_f })
end

function route_copyall_f(rctx, handles)
    return function(r)
        rctx:enqueue(r, handles)
        rctx:wait_cond(#handles, mcp.WAIT_ANY)
        return rctx:result(handles[1])
    end
end
"""


def test_user_route_handlers_plug_into_the_native_tree(backends, memroute_factory,
                                                        startfile_dir):
    import signal

    a, b, c3 = backends(3)
    library = routes_file(startfile_dir, HANDLER_LIBRARY, "handlers.lua")
    text = pools_text(pa=[a], pb=[b], pc=[c3]) + """
routes{
    map = {
        hi = route_hello{ msg = "hello,", stats = true },
        -- A native handler under a Lua one, and a Lua one under a native one.
        cp = route_copyall{ children = { "pa", route_direct{ child = "pb" } } },
        fo = route_failover{ children = { route_copyall{ children = { "pc" } }, "pa" } },
    },
}
"""
    path = routes_file(startfile_dir, text)
    mr = memroute_factory("-o", "proxy_config=routelib:%s,proxy_arg=%s" % (library, path))
    with mr.client() as c:
        assert c.request(b"get hi/x\r\n") == b"SERVER_ERROR hello, hi\r\n"
        assert c.request(b"set cp/k 0 0 2\r\nab\r\n") == b"STORED\r\n"
        assert c.request(b"get cp/k\r\n", b"END\r\n") == b"VALUE cp/k 0 2\r\nab\r\nEND\r\n"
        assert c.request(b"set fo/k 0 0 1\r\nz\r\n") == b"STORED\r\n"
        assert stats_dict(c, b"proxy")["hello_calls"] == "1"
    assert mc_get(a, "cp/k") == b"ab" and mc_get(b, "cp/k") == b"ab"
    assert mc_get(c3, "fo/k") == b"z" and mc_get(a, "fo/k") is None
    # A child's server gone: the Lua handler answers its error, and the
    # native failover above the other Lua handler moves on.
    a.stop()
    c3.stop()
    with mr.client() as c:
        assert c.request(b"set cp/k 0 0 1\r\nx\r\n").startswith(b"SERVER_ERROR")
        assert c.request(b"get fo/k\r\n").startswith(b"SERVER_ERROR")
    # A reload builds the handlers again.
    routes_file(startfile_dir, text.replace('msg = "hello,"', 'msg = "bye,"'))
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as c:
        wait_until(lambda: c.request(b"get hi/x\r\n") == b"SERVER_ERROR bye, hi\r\n", 10,
                   what="the reloaded handler")


CMD_LIBRARY = """
register_route_handlers({ "whichcmd" })

-- mcp.CMD_* ids back to their names, on whichever VM this runs.
local function cmd_name(id)
    for k, v in pairs(mcp) do
        if type(k) == "string" and k:find("^CMD_") and v == id then
            return k
        end
    end
    return tostring(id)
end

function route_whichcmd_conf(t, ctx)
    t.conf_cmd = cmd_name(ctx:cmd())
    return t
end

function route_whichcmd_start(a, ctx, fgen)
    local line = "SERVER_ERROR " .. ctx:label() .. " conf=" .. a.conf_cmd
        .. " start=" .. cmd_name(ctx:cmd()) .. "\\r\\n"
    fgen:ready({ a = line, n = ctx:label(), f = function(rctx, msg)
        return function(r) return msg end
    end })
end
"""


def test_user_route_handlers_see_the_command_their_tree_is_built_for(
        backends, memroute_factory, startfile_dir):
    """routelib builds a tree per command of a cmdmap{} entry or a cmap,
    and ctx:cmd() (on the config VM and on the workers) names that
    command; elsewhere it is CMD_ANY_STORAGE."""
    (a,) = backends(1)
    library = routes_file(startfile_dir, CMD_LIBRARY, "handlers.lua")
    path = routes_file(startfile_dir, pools_text(pa=[a]) + """
routes{
    map = {
        both = cmdmap{
            get = route_whichcmd{},
            -- Nested under a native handler: the same tree, the same command.
            set = route_failover{ children = { route_whichcmd{} } },
        },
        any = route_whichcmd{},
    },
    cmap = { delete = route_whichcmd{} },
    default = route_whichcmd{},
}
""")
    mr = memroute_factory("-o", "proxy_config=routelib:%s,proxy_arg=%s" % (library, path))
    with mr.client() as c:
        assert c.request(b"get both/k\r\n") == \
            b"SERVER_ERROR both conf=CMD_GET start=CMD_GET\r\n"
        assert c.request(b"set both/k 0 0 1\r\nx\r\n") == \
            b"SERVER_ERROR both conf=CMD_SET start=CMD_SET\r\n"
        assert c.request(b"get any/k\r\n") == \
            b"SERVER_ERROR any conf=CMD_ANY_STORAGE start=CMD_ANY_STORAGE\r\n"
        assert c.request(b"delete other\r\n") == \
            b"SERVER_ERROR cmdmap conf=CMD_DELETE start=CMD_DELETE\r\n"
        assert c.request(b"get other\r\n") == \
            b"SERVER_ERROR default conf=CMD_ANY_STORAGE start=CMD_ANY_STORAGE\r\n"


@pytest.mark.parametrize("library, routes, message", [
    # Registered and used, but its worker half is nowhere.
    ('register_route_handlers({ "half" })\nfunction route_half_conf(t) return t end\n',
     'routes{ default = route_half{} }\n',
     "route_half: no function route_half_start on the workers"),
    ('register_route_handlers({ "noconf" })\n',
     'routes{ default = route_noconf{} }\n',
     "routes.lua:2: route_noconf: no function route_noconf_conf"),
    ('register_route_handlers({ "direct" })\n',
     'routes{ default = route_direct{ child = "p" } }\n',
     "route_direct is a built-in handler"),
    ('register_route_handlers({ "bad" })\nfunction route_bad_conf(t) return t end\n'
     'function route_bad_start(a, ctx, fgen) error("no way") end\n',
     'routes{ default = route_bad{} }\n',
     "route_bad_start: "),
    ('register_route_handlers({ "lazy" })\nfunction route_lazy_conf(t) return t end\n'
     'function route_lazy_start(a, ctx, fgen) end\n',
     'routes{ default = route_lazy{} }\n',
     "route_lazy_start: it must call fgen:ready"),
])
def test_user_route_handler_mistakes_stop_the_start(startfile_dir, library, routes, message):
    lib = routes_file(startfile_dir, library, "lib.lua")
    path = routes_file(startfile_dir, 'pools{ p = { backends = { "127.0.0.1:1" } } }\n' + routes)
    result = run_memroute_expect_failure(
        ["-o", "proxy_config=routelib:%s,proxy_arg=%s" % (lib, path)])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def doc_blocks(name: str) -> list:
    """The ```lua blocks of docs/NAME, in order."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).parent.parent / "docs" / name).read_text()
    return re.findall(r"```lua\n(.*?)```", text, re.S)


def test_every_routes_md_route_file_loads_and_serves(backends, memroute_factory, startfile_dir):
    import re
    servers = backends(3)
    blocks = doc_blocks("routes.md")
    library = next(b for b in blocks if "register_route_handlers" in b)
    # Whole route files (snippets without pools{} are parts of one).
    route_files = [b for b in blocks if "routes{" in b and "pools{" in b]
    assert len(route_files) >= 5
    lib_path = routes_file(startfile_dir, library, "handlers.lua")
    for i, text in enumerate(route_files):
        addrs = iter(s.addr for s in servers * 4)
        text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", lambda _: next(addrs), text)
        path = routes_file(startfile_dir, text, "example%d.lua" % i)
        if "route_copyall" in text:
            mr = memroute_factory("--routes", str(path), "--route-handlers", str(lib_path))
        else:
            mr = memroute_factory("--routes", str(path))
        key = re.search(r"map = \{\s*(?:--[^\n]*\n\s*)*(\w+) =", text)
        key = (key.group(1) + "/k") if key else "k"
        with mr.client() as c:
            assert c.request(b"set %s 0 0 2\r\nok\r\n" % key.encode()) == b"STORED\r\n", text
            assert c.request(b"get %s\r\n" % key.encode(), b"END\r\n") == \
                b"VALUE %s 0 2\r\nok\r\nEND\r\n" % key.encode(), text
        mr.stop()


def test_keysplit_gat_touches_every_copy_even_when_the_key_looks_like_the_ttl(
        backends, memroute_factory, startfile_dir):
    servers = backends(2)
    path = routes_file(startfile_dir, pools_text(main=servers) + """
routes{ default = route_keysplit{ child = "main", copies = 2 } }
""")
    mr = memroute_factory("--routes", str(path))
    with mr.client() as c:
        assert c.request(b"set 300 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert c.request(b"gat 300 300\r\n", b"END\r\n") == b"VALUE 300 0 1\r\nv\r\nEND\r\n"
    for key in ("300", "300::ks1"):
        with holder(servers, key).client() as direct:
            ttl = int(direct.request(b"mg %s t\r\n" % key.encode()).split(b"t")[-1])
        assert 290 <= ttl <= 300, (key, ttl)


def test_keysplit_and_bigvalue_with_a_hung_backend(backends, memroute_factory, startfile_dir):
    """A backend stopped with SIGSTOP: keysplit reads time out on its copy
    and take the next; a big value with chunks there answers an error
    within the read timeout instead of hanging."""
    import os
    import signal
    import time

    servers = backends(2)
    path = routes_file(startfile_dir, """
settings{ backend_read_timeout = 0.5, backend_connect_timeout = 0.5 }
""" + pools_text(main=servers) + """
routes{
    map = {
        hot = route_keysplit{ child = "main", copies = 2 },
        big = route_bigvalue{ child = "main", threshold = 1000 },
    },
}
""")
    mr = memroute_factory("--routes", str(path))
    with mr.client() as c:
        # A hot key with one copy on each server.
        key = next(k for k in ("hot/%d" % i for i in range(200))
                   if c.request(b"set %s 0 0 1\r\nv\r\n" % k.encode()) == b"STORED\r\n"
                   and holder(servers, k) is not holder(servers, k + "::ks1"))
        assert c.request(b"set big/k 0 0 20000\r\n%s\r\n" % (b"b" * 20000)) == b"STORED\r\n"
        hung = holder(servers, key + "::ks1")
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            for _ in range(6):
                start = time.monotonic()
                assert c.request(b"get %s\r\n" % key.encode(), b"END\r\n") == \
                    b"VALUE %s 0 1\r\nv\r\nEND\r\n" % key.encode()
                assert time.monotonic() - start < 3
            start = time.monotonic()
            # 20 chunks over two servers: some on the hung one.
            assert c.request(b"get big/k\r\n").startswith(b"SERVER_ERROR")
            assert time.monotonic() - start < 3
        finally:
            os.kill(hung.pid, signal.SIGCONT)

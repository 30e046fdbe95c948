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

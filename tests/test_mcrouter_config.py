"""mcrouter JSON configurations (`--mcrouter-config FILE`), run by memroute's
native route handlers, against real memcached backends.

Each route handle's effect is checked on the backends themselves (which got
the write, which were asked); a handle memroute cannot honour stops the
start with its JSON path; and a Ch3 pool puts keys on the server mcrouter
would, computed here by a small reimplementation of mcrouter's furc hash
(checked first against the vectors of mcrouter's Ch3HashTest.cpp).
"""

from __future__ import annotations

import json
import re
import signal
import struct

import pytest

from conftest import (mc_get, mc_set, run_memroute_expect_failure, stats_dict, wait_until,
                      write_startfile)

M64 = (1 << 64) - 1
MURMUR_M = 0xC6A4A7935BD1E995
FURC_SEED = 4193360111


def murmur64a(data: bytes, seed: int) -> int:
    """MurmurHash64A, as mcrouter's furc hash uses it."""
    h = (seed ^ (len(data) * MURMUR_M)) & M64
    whole = len(data) // 8 * 8
    for (k,) in struct.iter_unpack("<Q", data[:whole]):
        k = (k * MURMUR_M) & M64
        k ^= k >> 47
        k = (k * MURMUR_M) & M64
        h ^= k
        h = (h * MURMUR_M) & M64
    tail = data[whole:]
    if tail:
        for i, b in enumerate(tail):
            h ^= b << (8 * i)
        h = (h * MURMUR_M) & M64
    h ^= h >> 47
    h = (h * MURMUR_M) & M64
    return h ^ (h >> 47)


def ch3(key: bytes, n: int) -> int:
    """mcrouter's Ch3 (furc_hash): the server index of `key` in a pool of n."""
    if n <= 1:
        return 0
    blocks = [murmur64a(key, FURC_SEED)]

    def bit(idx: int) -> int:
        while len(blocks) <= idx >> 6:
            blocks.append(murmur64a(struct.pack("<Q", blocks[-1]), FURC_SEED))
        return (blocks[idx >> 6] >> (idx & 63)) & 1

    d = 0
    while n > (1 << d):
        d += 1
    a = d
    for _ in range(32):
        while not bit(a):
            d -= 1
            if d == 0:
                return 0
            a = d
        a += 23
        num = 1
        for _ in range(d - 1):
            num = (num << 1) | bit(a)
            a += 23
        if num < n:
            return num
    return 0


def config_file(startfile_dir, config, name: str = "mcrouter.json"):
    return write_startfile(startfile_dir, name, json.dumps(config, indent=1))


def servers(*handles) -> dict:
    return {"servers": [h.addr for h in handles]}


def test_python_ch3_matches_mcrouter_vectors():
    # From facebook/mcrouter mcrouter/lib/test/Ch3HashTest.cpp.
    assert ch3(b"sample", 100) == 97
    assert ch3(b"", 100) == 72
    assert ch3(b"sample", 1 << 23) == 5167780
    counts = [0, 0, 0]
    for i in range(1000):
        counts[ch3(str(i).encode(), 3)] += 1
    assert counts == [307, 342, 351]


def test_pool_route_places_keys_as_mcrouter_ch3(backends, memroute_factory, startfile_dir):
    pool = backends(3)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(*pool)},
        "route": "PoolRoute|A",
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    keys = ["key:%d" % i for i in range(30)]
    with mr.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 1\r\nv\r\n" % k.encode()) == b"STORED\r\n"
        assert c.request(b"get key:1 key:2\r\n", b"END\r\n").count(b"VALUE") == 2
    for k in keys:
        expected = ch3(k.encode(), 3)
        for i, server in enumerate(pool):
            assert (mc_get(server, k) is not None) == (i == expected), (k, i)
    # mcrouter's admin key names the same server.
    with mr.client() as c:
        reply = c.request(b"get __mcrouter__.route(get,key:7)\r\n", b"END\r\n")
        assert reply.split(b"\r\n")[1].decode() == pool[ch3(b"key:7", 3)].addr, reply


def test_failover_route_skips_a_dead_server(backends, memroute_factory, startfile_dir):
    live, = backends(1)
    path = config_file(startfile_dir, {
        "pools": {"A": {"servers": ["127.0.0.1:1", live.addr]}},
        "route": {"type": "FailoverRoute", "children": "Pool|A"},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(live, "k", b"v")
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
        assert c.request(b"set k2 0 0 1\r\nw\r\n") == b"STORED\r\n"
    assert mc_get(live, "k2") == b"w"


def test_miss_failover_reads_on_and_writes_to_the_first(backends, memroute_factory,
                                                         startfile_dir):
    a, b = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a), "B": servers(b)},
        "route": {"type": "MissFailoverRoute", "children": ["PoolRoute|A", "PoolRoute|B"]},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(b, "only-b", b"bee")
    with mr.client() as c:
        assert c.request(b"get only-b\r\n", b"END\r\n") == b"VALUE only-b 0 3\r\nbee\r\nEND\r\n"
        assert c.request(b"get nowhere\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(b"set w 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(a, "w") == b"x" and mc_get(b, "w") is None


def test_all_sync_writes_to_every_child(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a), "B": servers(b)},
        "route": {"type": "AllSyncRoute", "children": ["PoolRoute|A", "PoolRoute|B"]},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set k 0 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert mc_get(a, "k") == b"hi" and mc_get(b, "k") == b"hi"


def test_prefix_selector_picks_the_longest_prefix(backends, memroute_factory, startfile_dir):
    a, b, c3 = backends(3)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a), "B": servers(b), "C": servers(c3)},
        "route": {
            "type": "PrefixSelectorRoute",
            "policies": {"user": "PoolRoute|A", "user:vip": "PoolRoute|B"},
            "wildcard": "PoolRoute|C",
        },
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        for key in (b"user:1", b"user:vip:1", b"other"):
            assert c.request(b"set %s 0 0 1\r\nx\r\n" % key) == b"STORED\r\n"
    assert mc_get(a, "user:1") == b"x" and mc_get(a, "user:vip:1") is None
    assert mc_get(b, "user:vip:1") == b"x"
    assert mc_get(c3, "other") == b"x"


def test_operation_selector_splits_commands(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a), "B": servers(b)},
        "route": {
            "type": "OperationSelectorRoute",
            "operation_policies": {"get": "PoolRoute|A", "delete": "NullRoute"},
            "default_policy": "PoolRoute|B",
        },
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(a, "k", b"from-a")
    with mr.client() as c:
        assert c.request(b"set k 0 0 4\r\nto-b\r\n") == b"STORED\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 6\r\nfrom-a\r\nEND\r\n"
        assert c.request(b"delete k\r\n") == b"NOT_FOUND\r\n"
    assert mc_get(b, "k") == b"to-b"


def test_routing_prefixes_route_by_alias_and_strip(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a), "B": servers(b)},
        "routes": [
            {"aliases": ["/east/web/"], "route": "PoolRoute|A"},
            {"aliases": ["/west/web/", "/west/api/"], "route": "PoolRoute|B"},
        ],
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set /west/api/k 0 0 1\r\nw\r\n") == b"STORED\r\n"
        assert c.request(b"set plain 0 0 1\r\ne\r\n") == b"STORED\r\n"
        # The reply names the key the client sent, prefix and all.
        assert (c.request(b"get /west/web/k\r\n", b"END\r\n")
                == b"VALUE /west/web/k 0 1\r\nw\r\nEND\r\n")
        assert c.request(b"get /north/x/k\r\n") == b"SERVER_ERROR no route\r\n"
        assert c.request(b"mg /west/web/k v k\r\n", b"w\r\n") == b"VA 1 k/west/web/k\r\nw\r\n"
        assert (c.request(b"get /west/web/k plain\r\n", b"END\r\n")
                == b"VALUE /west/web/k 0 1\r\nw\r\nVALUE plain 0 1\r\ne\r\nEND\r\n")
    # Stored without the prefix; keys without one use the first alias.
    assert mc_get(b, "k") == b"w" and mc_get(a, "plain") == b"e"


def test_warm_up_fills_the_cold_pool(backends, memroute_factory, startfile_dir):
    cold, warm = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"cold": servers(cold), "warm": servers(warm)},
        "route": {"type": "WarmUpRoute", "cold": "PoolRoute|cold",
                  "warm": "PoolRoute|warm", "exptime": 100},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(warm, "k", b"old")
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 3\r\nold\r\nEND\r\n"
    wait_until(lambda: mc_get(cold, "k") == b"old", 3, what="the warmed copy")


def test_sighup_reloads_the_json(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    pools = {"A": servers(a), "B": servers(b)}
    path = config_file(startfile_dir, {"pools": pools, "route": "PoolRoute|A"})
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set k1 0 0 1\r\n1\r\n") == b"STORED\r\n"
        before = stats_dict(c)["config_digest"]
    config_file(startfile_dir, {"pools": pools, "route": "PoolRoute|B"})
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as c:
        wait_until(lambda: stats_dict(c, b"proxy").get("config_reloads") == "1", 10,
                   what="the reload")
        assert c.request(b"set k2 0 0 1\r\n2\r\n") == b"STORED\r\n"
        after = stats_dict(c)["config_digest"]
    # The digest covers the JSON file itself.
    assert len(before) == 16 and before != after
    assert mc_get(a, "k1") == b"1" and mc_get(b, "k2") == b"2" and mc_get(a, "k2") is None


def test_shadow_copies_the_keys_in_its_range(backends, memroute_factory, startfile_dir):
    main, copy = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"main": servers(main), "copy": servers(copy)},
        "route": {"type": "PoolRoute", "pool": "main",
                  "shadows": [{"target": "PoolRoute|copy", "key_fraction_range": [0, 1]}]},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(main, "k") == b"x"
    wait_until(lambda: mc_get(copy, "k") == b"x", 3, what="the shadow copy")


def test_import_and_comments(backends, memroute_factory, startfile_dir):
    a, = backends(1)
    write_startfile(startfile_dir, "pools.json", json.dumps({"A": servers(a)}))
    path = write_startfile(startfile_dir, "main.json", """
// mcrouter allows comments
{
  "pools": "@import(pools.json)",
  /* the route */
  "route": "PoolRoute|A"
}
""")
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(a, "k") == b"x"


def test_an_unsupported_handle_stops_the_start_with_its_path(startfile_dir):
    path = config_file(startfile_dir, {
        "pools": {"A": {"servers": ["127.0.0.1:1"]}},
        "route": {"type": "AllSyncRoute",
                  "children": ["PoolRoute|A", "NullRoute", {"type": "BigValueRoute"}]},
    })
    result = run_memroute_expect_failure(["--mcrouter-config", str(path)])
    assert result.returncode != 0
    assert "route.children[2].type: BigValueRoute is not supported" in result.stderr


def test_big_value_split_threshold_chunks_as_mcrouter_does(backends, memroute_factory,
                                                           startfile_dir):
    a, b = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"A": servers(a, b)},
        "route": "PoolRoute|A",
    })
    mr = memroute_factory("--mcrouter-config", str(path), "--big-value-split-threshold", "5000",
                          "-I", "4m")
    value = b"abc" * 400001       # 1,200,003 bytes: over the servers' 1 MB items
    with mr.client() as c:
        c.send(b"set key 3 0 %d\r\n%s\r\n" % (len(value), value))
        assert c.read_line() == b"STORED\r\n"
        assert c.request(b"get key\r\n", b"END\r\n") == \
            b"VALUE key 3 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        # Written by hand in mcrouter's layout (as mcrouter's own
        # test_bigvalue does): memroute reads it back whole.
        piece = b"a" * 5000
        for server in (a, b):
            mc_set(server, "hand", b"1-2-1234", flags=0x8000)
            mc_set(server, "hand:0:1234", piece)
            mc_set(server, "hand:1:1234", b"a")
        assert c.request(b"get hand\r\n", b"END\r\n") == \
            b"VALUE hand 0 5001\r\n%s\r\nEND\r\n" % (piece + b"a")
        # A piece gone: a miss.
        for server in (a, b):
            with server.client() as direct:
                direct.request(b"delete hand:1:1234\r\n")
        assert c.request(b"get hand\r\n", b"END\r\n") == b"END\r\n"
        # Small values pass through with their flags.
        assert c.request(b"set s 9 0 2\r\nhi\r\n") == b"STORED\r\n"
        assert c.request(b"get s\r\n", b"END\r\n") == b"VALUE s 9 2\r\nhi\r\nEND\r\n"
        # A server killed: a big write cannot land whole, and says so.
        b.stop()
        reply = c.request(b"set key2 0 0 %d\r\n%s\r\n" % (len(value), value))
        assert reply.startswith(b"SERVER_ERROR"), reply


def test_l1l2_cache_route_negative_caching(backends, memroute_factory, startfile_dir):
    near, far = backends(2)
    path = config_file(startfile_dir, {
        "pools": {"near": servers(near), "far": servers(far)},
        "route": {"type": "L1L2CacheRoute", "l1": "PoolRoute|near", "l2": "PoolRoute|far",
                  "upgradingL1Exptime": 60, "ncacheExptime": 30},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        # The negative entry lands in L1 with mcrouter's flag.
        wait_until(lambda: near.client().request(b"mg k f t\r\n").startswith(b"HD f65536 t"),
                   5, what="the negative entry in L1")
        mc_set(far, "k", b"v")
        assert c.request(b"get k\r\n", b"END\r\n") == b"END\r\n"
        assert c.request(b"delete k\r\n") == b"DELETED\r\n"
        assert mc_get(near, "k") is None
    bad = config_file(startfile_dir, {
        "pools": {"near": servers(near), "far": servers(far)},
        "route": {"type": "L1L2CacheRoute", "l1": "PoolRoute|near", "l2": "PoolRoute|far",
                  "upgradingL1Exptime": 60, "ncacheExptime": 30, "ncacheUpdatePeriod": 5},
    }, name="bad.json")
    result = run_memroute_expect_failure(["--mcrouter-config", str(bad)])
    assert "route.ncacheUpdatePeriod: only 0 is supported" in result.stderr, result.stderr


def test_config_file_and_md5_digest_admin_keys_follow_reloads(backends, memroute_factory,
                                                             startfile_dir):
    # mcrouter's health check compares `get __mcrouter__.config_md5_digest`
    # with `md5sum` of the file: the MD5 of the main file's bytes.
    import hashlib

    a, b = backends(2)
    pools = {"A": servers(a), "B": servers(b)}
    path = config_file(startfile_dir, {"pools": pools, "route": "PoolRoute|A"})
    mr = memroute_factory("--mcrouter-config", str(path))

    def admin(c, name):
        reply = c.request(b"get __mcrouter__.%s\r\n" % name, b"END\r\n")
        lines = reply.split(b"\r\n")
        assert lines[0].startswith(b"VALUE __mcrouter__.%s 0 " % name), reply
        return lines[1].decode()

    with mr.client() as c:
        assert admin(c, b"config_md5_digest") == hashlib.md5(path.read_bytes()).hexdigest()
        assert admin(c, b"config_file") == str(path)
    config_file(startfile_dir, {"pools": pools, "route": "PoolRoute|B"})
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as c:
        wait_until(lambda: stats_dict(c, b"proxy").get("config_reloads") == "1", 10,
                   what="the reload")
        assert admin(c, b"config_md5_digest") == hashlib.md5(path.read_bytes()).hexdigest()


def doc_json_blocks(name: str) -> list:
    """The ```json blocks of docs/NAME, in order."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).parent.parent / "docs" / name).read_text()
    return re.findall(r"```json\n(.*?)```", text, re.S)


def test_the_migration_guides_macro_example_loads_and_replicates(backends, memroute_factory,
                                                                 startfile_dir):
    """docs/mcrouter-migration.md's macro example, its two servers replaced by
    real ones: a constant names the pools, a macro with a default port
    builds them, another builds the replicated route (AllSync writes,
    MissFailover reads)."""
    a, b = backends(2)
    (example,) = [block for block in doc_json_blocks("mcrouter-migration.md")
                  if '"macros"' in block]
    a_host, a_port = a.addr.rsplit(":", 1)
    b_host, b_port = b.addr.rsplit(":", 1)
    text = example.replace('"11211"', json.dumps(a_port)) \
        .replace("@cluster(10.0.0.1)", "@cluster(%s)" % a_host) \
        .replace("@cluster(10.0.1.1, 11212)", "@cluster(%s, %s)" % (b_host, b_port))
    path = write_startfile(startfile_dir, "macros.json", text)
    mr = memroute_factory("--mcrouter-config", str(path))
    with mr.client() as c:
        assert c.request(b"set k 0 0 2\r\nhi\r\n") == b"STORED\r\n"
        # The second pool alone has this one: the read fails over to it.
        mc_set(b, "only-b", b"bee")
        assert c.request(b"get only-b\r\n", b"END\r\n") == b"VALUE only-b 0 3\r\nbee\r\nEND\r\n"
        assert c.request(b"delete k\r\n") == b"DELETED\r\n"
        # The pools' names came from the constant.
        reply = c.request(b"get __mcrouter__.route_handles(get,k)\r\n", b"END\r\n")
        assert b"west-a" in reply and b"west-b" in reply, reply
    assert mc_get(a, "k") is None and mc_get(b, "k") is None
    with mr.client() as c:
        assert c.request(b"set k2 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(a, "k2") == b"x" and mc_get(b, "k2") == b"x"


def test_macros_with_builtins_pick_warm_up_ttls(backends, memroute_factory, startfile_dir):
    """A prefix-routed two-cluster setup whose WarmUpRoutes come from one
    macro, called as a string and as an object; the fill TTL is selected
    from a constant table by name, with a default. The pools are made from
    a constant table of clusters by a transform."""
    cold, warm = backends(2)
    path = config_file(startfile_dir, {
        "macros": {
            "clusters": {"type": "constDef", "result": {"cold": cold.addr, "warm": warm.addr}},
            "ttls": {"type": "constDef", "result": {"short": 60, "long": 3600}},
            "warm": {
                "type": "macroDef",
                "params": ["cold", "warm", {"name": "ttl", "default": "short"}],
                "result": {"type": "WarmUpRoute", "cold": "PoolRoute|%cold%",
                           "warm": "PoolRoute|%warm%",
                           "exptime": "@select(%ttls%,%ttl%)"},
            },
            "twice": {"type": "macroDef", "params": ["n"],
                      "result": "@mul(@int(%n%),@int(2))"},
        },
        "pools": {"type": "transform", "dictionary": "%clusters%",
                  "itemTransform": {"servers": ["%item%"]}},
        "route": {
            "type": "PrefixSelectorRoute",
            "policies": {
                "a:": {"type": "warm", "cold": "cold", "warm": "warm"},
                "b:": "@warm(cold,warm,long)",
                "c:": {"type": "WarmUpRoute", "cold": "PoolRoute|cold",
                       "warm": "PoolRoute|warm", "exptime": "@twice(450)"},
            },
            "wildcard": {"type": "if", "condition": "@equals(@size(%ttls%),@int(2))",
                         "is_true": "PoolRoute|cold", "is_false": "@fail(two ttls)"},
        },
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    for key in ("a:k", "b:k", "c:k"):
        mc_set(warm, key, b"old")
    with mr.client() as c:
        for key in (b"a:k", b"b:k", b"c:k"):
            assert c.request(b"get %s\r\n" % key, b"END\r\n") == \
                b"VALUE %s 0 3\r\nold\r\nEND\r\n" % key
        assert c.request(b"set other 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(cold, "other") == b"x"

    def ttl(key: str) -> int:
        with cold.client() as direct:
            reply = direct.request(b"mg %s t\r\n" % key.encode())
        assert reply.startswith(b"HD t"), reply
        return int(reply.split(b"t")[-1])

    wait_until(lambda: all(mc_get(cold, k) == b"old" for k in ("a:k", "b:k", "c:k")), 3,
               what="the warmed copies")
    assert 50 <= ttl("a:k") <= 60
    assert 3500 <= ttl("b:k") <= 3600
    assert 890 <= ttl("c:k") <= 900


@pytest.mark.parametrize("config, message", [
    ({"route": "@hash(abc)"},
     "route (@hash): the built-in macro hash is not supported by memroute"),
    ({"route": {"type": "shuffle", "dictionary": ["PoolRoute|A", "NullRoute"]}},
     "the built-in macro shuffle is not supported by memroute"),
    ({"route": "@nope(x)"}, "route (@nope): no macro named 'nope'"),
    ({"macros": {"m": {"type": "macroDef", "params": ["a", "b"], "result": "%a%"}},
      "route": "@m(x)"},
     "route (@m): macro m takes 2 arguments, not 1"),
    ({"macros": {"m": {"type": "macro", "result": 1}}, "route": "NullRoute"},
     "macros.m.type: unknown macro definition type \"macro\" (macroDef or constDef)"),
    ({"route": "PoolRoute|%missing%"},
     "route: %missing%: no such parameter or constant"),
    ({"route": "@fail(not this one)"}, "@fail: not this one"),
    ({"macros": {"file": {"type": "constDef", "result": "pools.json"}},
      "route": "@import(%file%)"},
     "route (@import): the built-in macro import is not supported by memroute: @import takes "
     "a literal file path here"),
])
def test_macro_mistakes_stop_the_start_naming_them(startfile_dir, config, message):
    path = config_file(startfile_dir, dict({"pools": {"A": {"servers": ["127.0.0.1:1"]}}},
                                           **config))
    result = run_memroute_expect_failure(["--mcrouter-config", str(path)])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_config_that_grows_without_bound_fails_its_start_and_its_reload(
        backends, memroute_factory, startfile_dir):
    """A configuration whose expansion has no sane bound (a `range` of
    billions; an `@import` of /dev/zero) stops the start with an error, and
    a reload that brings one leaves the running configuration serving. The
    range once aborted the process ("memory allocation of 96000000032 bytes
    failed"), at start and, by the same parser, on a reload."""
    (a,) = backends(1)
    hostile = {
        "pools": {"A": servers(a)},
        "route": {"type": "if",
                  "condition": {"type": "isInt", "value": {
                      "type": "size",
                      "dictionary": {"type": "range", "from": 0, "to": 3000000000}}},
                  "is_true": "PoolRoute|A", "is_false": "PoolRoute|A"},
    }
    bad = config_file(startfile_dir, hostile, name="bad.json")
    result = run_memroute_expect_failure(["--mcrouter-config", str(bad)])
    assert result.returncode not in (0, -6, 134), result.stderr
    assert "expands to more than 4000000 values" in result.stderr, result.stderr
    zero = config_file(startfile_dir, {"pools": {"A": servers(a)}, "route": "@import(/dev/zero)"},
                       name="zero.json")
    result = run_memroute_expect_failure(["--mcrouter-config", str(zero)])
    assert "/dev/zero: larger than 64 MiB, too large for a configuration" in result.stderr, \
        result.stderr
    path = config_file(startfile_dir, {"pools": {"A": servers(a)}, "route": "PoolRoute|A"})
    mr = memroute_factory("--mcrouter-config", str(path))
    config_file(startfile_dir, hostile)
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as c:
        wait_until(lambda: stats_dict(c).get("proxy_config_reload_fails") == "1", 10,
                   what="the refused reload")
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    assert mc_get(a, "k") == b"x"
    assert mr.is_running()


def test_filled_replies_show_the_meta_flags_asked_for(backends, memroute_factory,
                                                      startfile_dir):
    """A reply an L1L2CacheRoute or a WarmUpRoute makes from an item read in
    its other child shows every meta flag asked for, as the backend's own
    reply would: the size (`s`) too, and, for a warm-up, the TTL the cold
    copy was given. (`s` was missing from both.)"""
    near, far, cold, warm = backends(4)
    path = config_file(startfile_dir, {
        "pools": {"near": servers(near), "far": servers(far)},
        "route": {"type": "L1L2CacheRoute", "l1": "PoolRoute|near", "l2": "PoolRoute|far",
                  "upgradingL1Exptime": 60},
    })
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(far, "far-only", b"hello", flags=3)
    with mr.client() as c:
        assert c.request(b"mg far-only s v f\r\n", b"\r\nhello\r\n") == \
            b"VA 5 s5 f3\r\nhello\r\n"
        wait_until(lambda: mc_get(near, "far-only") == b"hello", 5, what="the L1 copy")
        assert c.request(b"mg far-only s\r\n") == b"HD s5\r\n"
    path = config_file(startfile_dir, {
        "pools": {"cold": servers(cold), "warm": servers(warm)},
        "route": {"type": "WarmUpRoute", "cold": "PoolRoute|cold", "warm": "PoolRoute|warm",
                  "exptime": 100},
    }, name="warmup.json")
    mr = memroute_factory("--mcrouter-config", str(path))
    mc_set(warm, "warm-only", b"hello", flags=3)
    with mr.client() as c:
        assert c.request(b"mg warm-only s v f t\r\n", b"\r\nhello\r\n") == \
            b"VA 5 s5 f3 t100\r\nhello\r\n"
        wait_until(lambda: mc_get(cold, "warm-only") == b"hello", 5, what="the cold copy")
        reply = c.request(b"mg warm-only s f t\r\n")
        assert re.fullmatch(rb"HD s5 f3 t(99|100)\r\n", reply), reply

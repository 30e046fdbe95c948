"""Every startfile in examples/ loaded by memroute and exercised against
real memcached backends started by the harness.  Where a key lands is
checked by asking each memcached directly."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from conftest import EXAMPLES_DIR, LUA_DIR, mc_get, mc_set, write_startfile

# example file -> the test in this module that loads it.
TESTED_EXAMPLES = {
    "single-pool.lua": "test_example_single_pool",
    "keyprefix.lua": "test_example_keyprefix",
    "closure.lua": "test_example_closure",
    "simple-keyprefix.lua": "test_example_simple_keyprefix",
    "simple-zones.lua": "test_example_simple_zones",
}


def test_every_example_is_tested():
    """Every examples/*.lua is loaded by a test: the ones above here, the
    others (e.g. the DynamoDB examples) by a test module naming the file."""
    for name in TESTED_EXAMPLES.values():
        assert name in globals(), name
    tests_dir = Path(__file__).resolve().parent
    sources = "".join(p.read_text() for p in tests_dir.glob("test_*.py")
                      if p.name != Path(__file__).name)
    untested = [p.name for p in sorted(EXAMPLES_DIR.glob("*.lua"))
                if p.name not in TESTED_EXAMPLES and p.name not in sources]
    assert not untested, "example startfiles no test loads: %s" % untested


def hostlist(handles) -> str:
    return ",".join(h.addr for h in handles)


def holders(handles, key):
    """Which of ``handles`` hold ``key`` (by index)."""
    return [i for i, h in enumerate(handles) if mc_get(h, key) is not None]


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_example_single_pool(backends, memroute_factory):
    bs = backends(2)
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "single-pool.lua"),
                          "--config-arg", hostlist(bs))
    run = uuid.uuid4().hex[:6]
    keys = ["sp:%s:%d" % (run, i) for i in range(40)]
    with mr.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(k), k.encode())) \
                == b"STORED\r\n"
        # every key on exactly one backend, and both backends used
        placement = [holders(bs, k) for k in keys]
        assert all(len(p) == 1 for p in placement), placement
        assert {p[0] for p in placement} == {0, 1}
        c.send(b"get " + " ".join(keys).encode() + b"\r\n")
        want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(k), k.encode())
                        for k in keys) + b"END\r\n"
        assert c.read_until(b"END\r\n") == want
        # flush_all goes to every backend
        assert c.request(b"flush_all\r\n") == b"OK\r\n"
        assert all(holders(bs, k) == [] for k in keys)


def test_example_keyprefix(backends, memroute_factory):
    foo = backends(2)
    bar = backends(1)
    arg = "foo=%s;bar=%s" % (hostlist(foo), hostlist(bar))
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "keyprefix.lua"), "--config-arg", arg)
    with mr.client() as c:
        foo_keys = ["/foo/k%d" % i for i in range(30)]
        for k in foo_keys:
            assert c.request(b"set %s 0 0 1\r\nf\r\n" % k.encode()) == b"STORED\r\n"
        placement = [holders(foo, k) for k in foo_keys]
        assert all(len(p) == 1 for p in placement), placement
        assert {p[0] for p in placement} == {0, 1}, "keys should spread over both foo backends"
        assert all(mc_get(bar[0], k) is None for k in foo_keys)

        for i in range(10):
            k = "/bar/k%d" % i
            assert c.request(b"set %s 0 0 1\r\nb\r\n" % k.encode()) == b"STORED\r\n"
            assert mc_get(bar[0], k) == b"b"
            assert holders(foo, k) == []
            assert c.request(b"get %s\r\n" % k.encode(), b"END\r\n") == \
                b"VALUE %s 0 1\r\nb\r\nEND\r\n" % k.encode()

        for k in (b"/baz/x", b"plain", b"foo/x"):
            assert c.request(b"set %s 0 0 1\r\nz\r\n" % k) == b"SERVER_ERROR no route\r\n"
            assert c.request(b"get %s\r\n" % k) == b"SERVER_ERROR no route\r\n"
        c.assert_alive()


def test_example_closure(backends, memroute_factory):
    bs = backends(2)
    # memcached-style flags this time
    mr = memroute_factory("-o", "proxy_config=%s,proxy_arg=%s" % (
        EXAMPLES_DIR / "closure.lua", hostlist(bs)))
    with mr.client() as c:
        keys = ["/app/k%d" % i for i in range(20)]
        for k in keys:
            assert c.request(b"set %s 0 0 2\r\nok\r\n" % k.encode()) == b"STORED\r\n"
        assert all(len(holders(bs, k)) == 1 for k in keys)
        c.send(b"get " + " ".join(keys).encode() + b"\r\n")
        assert c.read_until(b"END\r\n") == b"".join(
            b"VALUE %s 0 2\r\nok\r\n" % k.encode() for k in keys) + b"END\r\n"
        # the closure fallback: no reply allocated per request, same bytes each time
        for k in (b"other", b"/nope/x", b"/app"):
            assert c.request(b"get %s\r\n" % k) == b"SERVER_ERROR no route\r\n"
            assert c.request(b"mg %s v\r\n" % k) == b"SERVER_ERROR no route\r\n"
        assert c.request(b"set other 0 0 1\r\nx\r\n") == b"SERVER_ERROR no route\r\n"
        assert all(holders(bs, "other") == [] for _ in bs)
        c.assert_alive()


def test_example_simple_keyprefix(backends, memroute_factory):
    foo = backends(2)
    bar = backends(1)
    env = env_with(MEMROUTE_FOO_BACKENDS=hostlist(foo), MEMROUTE_BAR_BACKENDS=hostlist(bar))
    mr = memroute_factory("--config", str(LUA_DIR / "simple.lua"),
                          "--config-arg", str(EXAMPLES_DIR / "simple-keyprefix.lua"), env=env)
    with mr.client() as c:
        foo_keys = ["/foo/s%d" % i for i in range(30)]
        for k in foo_keys:
            assert c.request(b"set %s 0 0 3\r\nfoo\r\n" % k.encode()) == b"STORED\r\n"
        placement = [holders(foo, k) for k in foo_keys]
        assert all(len(p) == 1 for p in placement), placement
        assert {p[0] for p in placement} == {0, 1}
        assert all(mc_get(bar[0], k) is None for k in foo_keys)

        assert c.request(b"set /bar/s 0 0 3\r\nbar\r\n") == b"STORED\r\n"
        assert mc_get(bar[0], "/bar/s") == b"bar"
        assert holders(foo, "/bar/s") == []

        # no matching pool -> default_pool (foo)
        for k in ("/nope/s", "plain"):
            assert c.request(b"set %s 0 0 1\r\nd\r\n" % k.encode()) == b"STORED\r\n"
            assert len(holders(foo, k)) == 1
            assert mc_get(bar[0], k) is None
        assert c.request(b"get /bar/s\r\n", b"END\r\n") == b"VALUE /bar/s 0 3\r\nbar\r\nEND\r\n"
        assert c.request(b"delete /bar/s\r\n") == b"DELETED\r\n"
        assert mc_get(bar[0], "/bar/s") is None


def test_simple_flat_router_sends_everything_to_the_default_pool(backends, memroute_factory,
                                                                  startfile_dir):
    """simple.lua's flat router attaches the default pool itself: every key,
    prefixed or not, lands on that pool, and multi-gets come back in order."""
    main = backends(2)
    other = backends(1)
    decl = write_startfile(startfile_dir, "flat.lua", """
    pool{ name = "main", backends = { %s } }
    pool{ name = "other", backends = { "%s" } }
    router{ router_type = "flat", default_pool = "main" }
    """ % (", ".join('"%s"' % h for h in hostlist(main).split(",")), hostlist(other)))
    mr = memroute_factory("--config", str(LUA_DIR / "simple.lua"), "--config-arg", str(decl))
    keys = ["/other/f%d" % i for i in range(10)] + ["f%d" % i for i in range(10)]
    with mr.client() as c:
        for k in keys:
            assert c.request(b"set %s 0 0 2\r\nok\r\n" % k.encode()) == b"STORED\r\n"
        assert all(len(holders(main, k)) == 1 for k in keys)
        assert {holders(main, k)[0] for k in keys} == {0, 1}
        assert all(mc_get(other[0], k) is None for k in keys)
        asked = list(reversed(keys)) + ["missing"]
        assert c.request(("get %s\r\n" % " ".join(asked)).encode(), b"END\r\n") == b"".join(
            b"VALUE %s 0 2\r\nok\r\n" % k.encode() for k in reversed(keys)) + b"END\r\n"


def test_example_simple_zones(backends, memroute_factory):
    z1, z2 = backends(2)
    env = env_with(MEMROUTE_ZONE1_BACKENDS=z1.addr, MEMROUTE_ZONE2_BACKENDS=z2.addr,
                   MEMROUTE_MY_ZONE="z1")
    mr = memroute_factory("--config", str(LUA_DIR / "simple.lua"),
                          "--config-arg", str(EXAMPLES_DIR / "simple-zones.lua"), env=env)
    with mr.client() as c:
        # writes reach both zones
        assert c.request(b"set zk 0 0 5\r\nboth!\r\n") == b"STORED\r\n"
        assert mc_get(z1, "zk") == b"both!"
        assert mc_get(z2, "zk") == b"both!"
        # reads come from the local zone first
        mc_set(z1, "zr", b"near")
        mc_set(z2, "zr", b"far")
        assert c.request(b"get zr\r\n", b"END\r\n") == b"VALUE zr 0 4\r\nnear\r\nEND\r\n"
        # a local miss falls back to the far zone
        mc_set(z2, "zfar", b"from-z2")
        assert c.request(b"get zfar\r\n", b"END\r\n") == b"VALUE zfar 0 7\r\nfrom-z2\r\nEND\r\n"
        assert c.request(b"mg zfar v\r\n", b"\r\n") == b"VA 7\r\n"
        assert c.read_line() == b"from-z2\r\n"
        # a miss everywhere is a miss
        assert c.request(b"get zmissing\r\n") == b"END\r\n"
        # deletes reach both zones
        assert c.request(b"delete zk\r\n") == b"DELETED\r\n"
        assert mc_get(z1, "zk") is None and mc_get(z2, "zk") is None
        # the write reply: the first error if any zone fails, else the local one
        assert c.request(b"add zr 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        mc_set(z1, "zonly1", b"1")
        mc_set(z2, "zonly2", b"2")
        for _ in range(5):
            assert c.request(b"add zonly1 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
            assert c.request(b"add zonly2 0 0 1\r\nx\r\n") == b"STORED\r\n"
            assert c.request(b"delete zonly2\r\n") == b"DELETED\r\n"
            mc_set(z2, "zonly2", b"2")
        assert mc_get(z2, "zonly1") == b"x"
        c.assert_alive()


def test_example_simple_zones_far_side(backends, memroute_factory):
    """The same declarations on a proxy in zone z2 read z2 first."""
    z1, z2 = backends(2)
    env = env_with(MEMROUTE_ZONE1_BACKENDS=z1.addr, MEMROUTE_ZONE2_BACKENDS=z2.addr,
                   MEMROUTE_MY_ZONE="z2")
    mr = memroute_factory("--config", str(LUA_DIR / "simple.lua"),
                          "--config-arg", str(EXAMPLES_DIR / "simple-zones.lua"), env=env)
    mc_set(z1, "zr", b"z1")
    mc_set(z2, "zr", b"z2")
    with mr.client() as c:
        assert c.request(b"get zr\r\n", b"END\r\n") == b"VALUE zr 0 2\r\nz2\r\nEND\r\n"

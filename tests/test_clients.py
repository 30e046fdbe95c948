"""Real third-party clients against memroute (embedded cache) and, as the
reference, against real memcached: every test runs on both through the
parametrized ``server`` fixture.

* pymemcache (PyPI)
* Perl Cache::Memcached (Debian libcache-memcached-perl), tests/clients/*.pl
* libmemcached's ``memccapable -a`` conformance checker
* a multi-threaded set/get smoke test
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

from conftest import CLIENTS_DIR, RawClient, missing

pymemcache = pytest.importorskip("pymemcache")
from pymemcache.client.base import Client  # noqa: E402

pytestmark = pytest.mark.clients


@pytest.fixture
def mc(server):
    """A pymemcache client on an emptied server."""
    c = Client((server.host, server.port), connect_timeout=3, timeout=3, default_noreply=False,
               no_delay=True)
    c.flush_all()
    yield c
    c.close()


# --------------------------------------------------------------------------
# pymemcache
# --------------------------------------------------------------------------


def test_pymemcache_set_get(mc):
    assert mc.set("py:a", b"hello") is True
    assert mc.get("py:a") == b"hello"
    assert mc.get("py:missing") is None
    assert mc.set("py:a", b"again", expire=0) is True
    assert mc.get("py:a") == b"again"
    assert mc.set("py:bin", b"\x00\r\n\xff" * 100) is True
    assert mc.get("py:bin") == b"\x00\r\n\xff" * 100
    big = os.urandom(500_000)
    assert mc.set("py:big", big) is True
    assert mc.get("py:big") == big


def test_pymemcache_flags(mc):
    mc.set("py:f", b"v", flags=1234)
    raw = mc.raw_command(b"get py:f", b"END\r\n")
    assert raw.startswith(b"VALUE py:f 1234 1\r\nv\r\n"), raw


def test_pymemcache_get_many(mc):
    assert mc.set_many({"py:m1": b"1", "py:m2": b"22", "py:m3": b"333"}) == []
    got = mc.get_many(["py:m1", "py:nope", "py:m2", "py:m3", "py:nope2"])
    assert got == {"py:m1": b"1", "py:m2": b"22", "py:m3": b"333"}
    keys = ["py:many%d" % i for i in range(300)]
    mc.set_many({k: k.encode() for k in keys[::2]})
    got = mc.get_many(keys)
    assert got == {k: k.encode() for k in keys[::2]}


def test_pymemcache_gets_cas(mc):
    mc.set("py:c", b"v1")
    value, cas = mc.gets("py:c")
    assert value == b"v1" and cas.isdigit()
    assert mc.cas("py:c", b"v2", cas) is True
    assert mc.cas("py:c", b"v3", cas) is False  # stale cas -> EXISTS
    assert mc.get("py:c") == b"v2"
    assert mc.cas("py:nocas", b"x", b"1") is None  # NOT_FOUND
    assert mc.gets("py:nocas") == (None, None)
    many = mc.gets_many(["py:c", "py:nocas"])
    assert list(many) == ["py:c"] and many["py:c"][0] == b"v2"


def test_pymemcache_add_replace(mc):
    assert mc.add("py:r", b"1") is True
    assert mc.add("py:r", b"2") is False
    assert mc.replace("py:r", b"3") is True
    assert mc.replace("py:nor", b"3") is False
    assert mc.get("py:r") == b"3"


def test_pymemcache_incr_decr(mc):
    assert mc.incr("py:n", 1) is None
    mc.set("py:n", b"10")
    assert mc.incr("py:n", 5) == 15
    assert mc.decr("py:n", 3) == 12
    assert mc.decr("py:n", 100) == 0
    mc.set("py:n", b"18446744073709551615")
    assert mc.incr("py:n", 1) == 0
    mc.set("py:s", b"abc")
    with pytest.raises(pymemcache.exceptions.MemcacheClientError):
        mc.incr("py:s", 1)


def test_pymemcache_append_prepend(mc):
    assert mc.append("py:ap", b"x") is False
    mc.set("py:ap", b"mid")
    assert mc.append("py:ap", b">") is True
    assert mc.prepend("py:ap", b"<") is True
    assert mc.get("py:ap") == b"<mid>"


def test_pymemcache_delete(mc):
    mc.set("py:d", b"v")
    assert mc.delete("py:d") is True
    assert mc.delete("py:d") is False
    assert mc.get("py:d") is None
    mc.set_many({"py:d1": b"1", "py:d2": b"2"})
    assert mc.delete_many(["py:d1", "py:d2", "py:d3"]) is True
    assert mc.get_many(["py:d1", "py:d2"]) == {}


def test_pymemcache_touch(mc):
    assert mc.touch("py:t", 10) is False
    mc.set("py:t", b"v")
    assert mc.touch("py:t", 100) is True
    assert mc.get("py:t") == b"v"


@pytest.mark.slow
def test_pymemcache_expiry(mc):
    # Expiry has whole-second resolution (in memcached too): a 2 s TTL is the
    # shortest that surely outlives the few requests before the first read.
    mc.set("py:e1", b"v", expire=2)
    mc.set("py:e2", b"v", expire=60)
    mc.set("py:e3", b"v")
    mc.touch("py:e3", 2)
    # gat (no pymemcache API) shortens the ttl to 2s
    assert mc.raw_command(b"gat 2 py:e2", b"END\r\n") .startswith(b"VALUE py:e2 0 1\r\nv\r\n")
    assert mc.get_many(["py:e1", "py:e2", "py:e3"]) == {"py:e1": b"v", "py:e2": b"v", "py:e3": b"v"}
    time.sleep(3.2)
    assert mc.get_many(["py:e1", "py:e2", "py:e3"]) == {}


def test_pymemcache_flush_all(mc):
    mc.set_many({"py:x%d" % i: b"v" for i in range(20)})
    assert mc.flush_all() is True
    assert mc.get_many(["py:x%d" % i for i in range(20)]) == {}


def test_pymemcache_noreply(mc):
    assert mc.set("py:nr", b"1", noreply=True) is True
    assert mc.add("py:nr", b"2", noreply=True) is True  # noreply always "succeeds"
    assert mc.append("py:nr", b"0", noreply=True) is True
    assert mc.incr("py:nr", 5, noreply=True) is None
    assert mc.get("py:nr") == b"15"
    assert mc.delete("py:nr", noreply=True) is True
    assert mc.get("py:nr") is None
    mc.flush_all(noreply=True)
    # the connection must still be in sync after all those silent commands
    assert mc.version()


def test_pymemcache_version_and_stats(mc):
    assert re.match(rb"^[0-9A-Za-z.\-+_]+$", mc.version())
    stats = mc.stats()
    assert isinstance(stats, dict) and stats


# --------------------------------------------------------------------------
# Perl Cache::Memcached
# --------------------------------------------------------------------------

PERL_EXPECTED = """\
set: 1
get: hello
get_miss: <undef>
set_ref: 1
get_ref: 1,2,3
get_multi: k1=5,k2=5,k3=1000
add_existing: 0
add_new: 1
replace: 1
replace_missing: 0
get_replaced: replaced
set_counter: 1
incr: 11
incr_5: 16
decr_3: 13
decr_100: 0
incr_missing: <undef>
append: 1
prepend: 1
get_appended: >hello!
delete: 1
delete_missing: 0
get_deleted: <undef>
stats_has_hosts: 1
flush_all: 1
get_after_flush: <undef>
done
"""


def _perl_has_cache_memcached() -> bool:
    if not shutil.which("perl"):
        return False
    return subprocess.run(["perl", "-MCache::Memcached", "-e", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=30).returncode == 0


def test_perl_cache_memcached(server):
    if not _perl_has_cache_memcached():
        pytest.skip("perl Cache::Memcached missing (run scripts/install-test-deps.sh)")
    script = CLIENTS_DIR / "perl_cache_memcached.pl"
    proc = subprocess.run(["perl", str(script), server.addr, "perl:%s:" % uuid.uuid4().hex[:8]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PERL_EXPECTED, "stderr:\n" + proc.stderr


# --------------------------------------------------------------------------
# libmemcached memccapable
# --------------------------------------------------------------------------

# Every ascii test memccapable (libmemcached-tools 1.1.x) runs.  memcached
# 1.6.18 passes all of them and skips none.
MEMCCAPABLE_TESTS = {
    "ascii": [
        "version", "quit", "verbosity", "set", "set noreply", "get", "gets", "mget",
        "flush", "flush noreply", "add", "add noreply", "replace", "replace noreply",
        "cas", "cas noreply", "delete", "delete noreply", "incr", "incr noreply",
        "decr", "decr noreply", "append", "append noreply", "prepend",
        "prepend noreply", "stat",
    ],
    "binary": [
        "noop", "quit", "quitq", "set", "setq", "flush", "flushq", "add", "addq",
        "replace", "replaceq", "delete", "deleteq", "get", "getq", "getk", "getkq",
        "incr", "incrq", "decr", "decrq", "version", "append", "appendq", "prepend",
        "prependq", "stat",
    ],
}


def parse_memccapable(output: str, mode: str) -> dict:
    """{'set': 'pass', ...} from lines like 'ascii set          [pass]'."""
    results = {}
    for line in output.splitlines():
        m = re.match(r"^%s (.+?)\s+\[(\w+)\]\s*$" % mode, line)
        if m:
            results[m.group(1)] = m.group(2)
    return results


def assert_memccapable_passes(host: str, port: int, mode: str) -> None:
    """libmemcached's conformance tool, every test of one protocol
    (``ascii`` or ``binary``), against host:port."""
    exe = shutil.which("memccapable") or shutil.which("memcapable")
    if not exe:
        missing("memccapable missing (libmemcached-tools; run scripts/install-test-deps.sh)")
    proc = subprocess.run([exe, "-a" if mode == "ascii" else "-b", "-t", "5", "-h", host,
                           "-p", str(port)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    results = parse_memccapable(out, mode)
    assert sorted(results) == sorted(MEMCCAPABLE_TESTS[mode]), out
    failed = {k: v for k, v in results.items() if v != "pass"}
    assert not failed, "memccapable failures %s\n%s" % (failed, out)
    assert proc.returncode == 0, out
    assert "All tests passed" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ascii", "binary"])
def test_memccapable(server, mode):
    assert_memccapable_passes(server.host, server.port, mode)


def binary_request(opcode, key=b"", value=b"", extras=b"", cas=0, opaque=0):
    return struct.pack(">BBHBBHIIQ", 0x80, opcode, len(key), len(extras), 0, 0,
                       len(extras) + len(key) + len(value), opaque, cas) + extras + key + value


def binary_responses(sock, count):
    """``count`` response packets: (opcode, status, opaque, cas, extras, key, value)."""
    out, buf = [], b""
    while len(out) < count:
        while len(buf) < 24 or len(buf) < 24 + struct.unpack(">I", buf[8:12])[0]:
            chunk = sock.recv(65536)
            assert chunk, "connection closed after %d packets" % len(out)
            buf += chunk
        magic, op, klen, elen, _, status, blen, opaque, cas = struct.unpack(">BBHBBHIIQ", buf[:24])
        assert magic == 0x81
        body, buf = buf[24:24 + blen], buf[24 + blen:]
        out.append((op, status, opaque, cas, body[:elen], body[elen:elen + klen], body[elen + klen:]))
    return out


def test_binary_keys_quiet_pipelines_and_counters(server):
    """Binary protocol corners memccapable does not reach, the same on
    memcached and memroute: keys with spaces and NULs, a quiet multi-get
    ended by NOOP, incr that must not create, touch."""
    key = b"bin key\x00%d" % random.randrange(1 << 30)
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(binary_request(0x01, key, b"val", struct.pack(">II", 3, 0), opaque=1))
        [(op, status, opaque, cas, _, _, _)] = binary_responses(s, 1)
        assert (op, status, opaque) == (0x01, 0, 1) and cas != 0
        s.sendall(binary_request(0x0c, key, opaque=2))
        [(_, status, _, got_cas, extras, k, v)] = binary_responses(s, 1)
        assert (status, extras, k, v, got_cas) == (0, struct.pack(">I", 3), key, b"val", cas)
        # GETKQ x2 (one miss) + NOOP: only the hit and the NOOP answer.
        s.sendall(binary_request(0x0d, key + b"-missing", opaque=3)
                  + binary_request(0x0d, key, opaque=4) + binary_request(0x0a, opaque=5))
        replies = binary_responses(s, 2)
        assert [(r[0], r[1], r[2], r[5], r[6]) for r in replies] == [
            (0x0d, 0, 4, key, b"val"), (0x0a, 0, 5, b"", b"")]
        # INCR with expiry 0xffffffff must not create; with 0 it creates.
        counter = key + b"-n"
        s.sendall(binary_request(0x05, counter, extras=struct.pack(">QQI", 1, 10, 0xffffffff)))
        assert binary_responses(s, 1)[0][1] == 0x0001
        s.sendall(binary_request(0x05, counter, extras=struct.pack(">QQI", 1, 10, 0)))
        assert binary_responses(s, 1)[0][1] == 0
        s.sendall(binary_request(0x05, counter, extras=struct.pack(">QQI", 5, 10, 0)))
        assert binary_responses(s, 1)[0][6] == struct.pack(">Q", 15)
        # TOUCH of a live key and of a missing one; a CAS mismatch on SET.
        s.sendall(binary_request(0x1c, key, extras=struct.pack(">I", 100)))
        [(_, status, _, touched_cas, extras, k, v)] = binary_responses(s, 1)
        # With the item's flags and CAS, as memcached answers it.
        assert (status, extras, k, v, touched_cas) == (0, struct.pack(">I", 3), b"", b"", cas)
        s.sendall(binary_request(0x1c, key + b"-missing", extras=struct.pack(">I", 100)))
        assert binary_responses(s, 1)[0][1] == 0x0001
        s.sendall(binary_request(0x01, key, b"x", struct.pack(">II", 0, 0), cas=cas + 1000))
        assert binary_responses(s, 1)[0][1] == 0x0002
        # A value over the item size limit (1 MiB): "too large", the old
        # value is gone, and the connection goes on.
        s.sendall(binary_request(0x11, key, b"x" * (1 << 20), struct.pack(">II", 0, 0), opaque=6)
                  + binary_request(0x0c, key, opaque=7))
        too_large, miss = binary_responses(s, 2)
        assert (too_large[1], too_large[2], too_large[6]) == (0x0003, 6, b"Too large.")
        assert (miss[1], miss[2]) == (0x0001, 7)
        # A GETK miss carries its key and nothing else (no "Not found").
        assert (miss[4], miss[5], miss[6]) == (b"", key, b"")


@pytest.mark.parametrize("packet", [
    binary_request(0x01, b"k", b"v", b"\0" * 4),   # SET with 4 bytes of extras
    binary_request(0x08, extras=b"\0\0"),          # FLUSH with 2
    binary_request(0x00, b"k", b"v"),                # GET with a value
    binary_request(0x0a, b"k"),                      # NOOP with a key
], ids=["set_extras", "flush_extras", "get_value", "noop_key"])
def test_binary_packet_of_the_wrong_shape_closes(server, packet):
    """A binary packet whose extras, key or value do not fit its opcode is
    answered "invalid arguments" and the connection closes (memcached's
    binary protocol error), on memcached and memroute alike; the NOOP
    behind it is not answered."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(packet + binary_request(0x0a))
        [(_, status, _, _, _, _, body)] = binary_responses(s, 1)
        assert (status, body) == (0x0004, b"Invalid arguments")
        assert s.recv(100) == b""


def test_binary_unknown_opcode_and_flush_with_expiry_keep_the_connection(server):
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(binary_request(0x30) + binary_request(0x08, extras=b"\0" * 4)
                  + binary_request(0x0a))
        replies = binary_responses(s, 3)
        assert [(r[0], r[1], r[6]) for r in replies] == [
            (0x30, 0x0081, b"Unknown command"), (0x08, 0, b""), (0x0a, 0, b"")]


# --------------------------------------------------------------------------
# concurrency smoke
# --------------------------------------------------------------------------


def test_concurrent_set_get(server):
    threads, rounds = 8, 400
    run = uuid.uuid4().hex[:8]
    errors = []

    def worker(t):
        try:
            c = Client((server.host, server.port), connect_timeout=3, timeout=5, no_delay=True)
            for i in range(rounds):
                key = "cc:%s:%d:%d" % (run, t, i % 50)  # keys are reused: overwrite path too
                value = ("%s-%d-%d-" % (run, t, i)).encode() * (1 + i % 40)
                if not c.set(key, value):
                    errors.append("set failed %s" % key)
                    return
                got = c.get(key)
                if got != value:
                    errors.append("thread %d round %d: %r != %r" % (t, i, got[:40] if got else got,
                                                                    value[:40]))
                    return
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("thread %d: %r" % (t, e))

    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "workers hung"
    assert not errors, errors[:5]


def test_concurrent_pipelined_raw(server):
    """Several raw connections each pipelining 200 sets + gets in one write."""
    run = uuid.uuid4().hex[:8].encode()
    errors = []

    def worker(t):
        try:
            with RawClient(server.host, server.port, timeout=10) as c:
                n = 200
                req = b"".join(b"set p:%s:%d:%d 0 0 %d noreply\r\n%s\r\n" % (
                    run, t, i, len(b"v%d" % i), b"v%d" % i) for i in range(n))
                req += b"get " + b" ".join(b"p:%s:%d:%d" % (run, t, i) for i in range(n)) + b"\r\n"
                c.send(req)
                got = c.read_until(b"END\r\n")
                want = b"".join(b"VALUE p:%s:%d:%d 0 %d\r\nv%d\r\n" % (run, t, i, len(b"v%d" % i), i)
                                for i in range(n)) + b"END\r\n"
                if got != want:
                    errors.append("thread %d: reply mismatch" % t)
        except Exception as e:  # noqa: BLE001
            errors.append("thread %d: %r" % (t, e))

    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors


def test_many_connections(server):
    """Open 200 connections at once; every one answers."""
    clients = []
    try:
        for _ in range(200):
            clients.append(RawClient(server.host, server.port, timeout=5))
        for c in clients:
            c.send(b"mn\r\n")
        for c in clients:
            assert c.read_until(b"\r\n") == b"MN\r\n"
    finally:
        for c in clients:
            c.close()

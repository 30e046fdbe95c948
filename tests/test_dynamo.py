"""DynamoDB pools end to end: memroute with the examples/dynamo-*.lua
startfiles against a real DynamoDB Local (no mocks) and real memcached.

Run alone with: python3 -m pytest tests/test_dynamo.py -q
"""

import itertools
import random
import threading
import time

import pytest

from conftest import EXAMPLES_DIR, mc_get, mc_set, stats_dict
from ddb_local import DynamoLocal, dynamo_env

_tables = itertools.count(1)


def new_table() -> str:
    return "t%d_%d" % (next(_tables), random.randrange(1 << 30))


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    d = DynamoLocal(tmp_path_factory.mktemp("ddb")).start()
    yield d
    d.stop()


def dynamo_memroute(factory, ddb, table, write="through", example="dynamo-only.lua",
                    args=(), threads=2, verbose=False, **env):
    """memroute run as users run it: default flags (no `-v`), unless a test
    reads its informational log lines."""
    flags = ("-v",) if verbose else ()
    return factory(*flags, "--config", str(EXAMPLES_DIR / example), "-t", str(threads), *args,
                   env=dynamo_env(ddb, table, DDB_WRITE=write, **env))


def converse(client, rows):
    for send, expect in rows:
        got = client.request(send, terminator=expect[-5:] if expect.endswith(b"END\r\n") else b"\r\n")
        if expect.startswith(b"VALUE") or expect.startswith(b"VA "):
            # Read the rest of a value reply; stop as soon as it cannot match.
            deadline = time.monotonic() + 10
            while len(got) < len(expect) and expect.startswith(got) \
                    and time.monotonic() < deadline:
                got += client.read_available(quiet=0.1)
        assert got == expect, "reply to %r: %r, expected %r" % (send, got, expect)


# ---------------------------------------------------------------- commands

def test_command_mapping_write_through(memroute_factory, ddb):
    mr = dynamo_memroute(memroute_factory, ddb, new_table())
    with mr.client() as c:
        converse(c, [
            (b"get k\r\n", b"END\r\n"),
            (b"set k 5 0 3\r\nabc\r\n", b"STORED\r\n"),
            (b"get k\r\n", b"VALUE k 5 3\r\nabc\r\nEND\r\n"),
            (b"add k 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            (b"add n 0 0 2\r\n10\r\n", b"STORED\r\n"),
            (b"replace missing 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            (b"replace k 7 0 3\r\nxyz\r\n", b"STORED\r\n"),
            (b"append k 0 0 2\r\n++\r\n", b"STORED\r\n"),
            (b"prepend k 0 0 2\r\n--\r\n", b"STORED\r\n"),
            (b"get k\r\n", b"VALUE k 7 7\r\n--xyz++\r\nEND\r\n"),
            (b"append missing 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
            (b"incr n 5\r\n", b"15\r\n"),
            (b"decr n 100\r\n", b"0\r\n"),
            (b"incr k 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
            (b"incr missing 1\r\n", b"NOT_FOUND\r\n"),
            (b"touch k 100\r\n", b"TOUCHED\r\n"),
            (b"touch missing 100\r\n", b"NOT_FOUND\r\n"),
            (b"delete k\r\n", b"DELETED\r\n"),
            (b"delete k\r\n", b"NOT_FOUND\r\n"),
            (b"get k\r\n", b"END\r\n"),
        ])
        # cas: the unique from gets must be accepted once, then refused.
        got = c.request(b"set c 0 0 1\r\n1\r\n")
        assert got == b"STORED\r\n"
        c.send(b"gets c\r\n")
        line = c.read_line()
        cas = int(line.split()[4])
        c.read_until(b"END\r\n")
        converse(c, [
            (b"cas c 0 0 1 %d\r\n2\r\n" % (cas + 1000), b"EXISTS\r\n"),
            (b"cas c 0 0 1 %d\r\n3\r\n" % cas, b"STORED\r\n"),
            (b"cas c 0 0 1 %d\r\n4\r\n" % cas, b"EXISTS\r\n"),
            (b"cas nope 0 0 1 1\r\n4\r\n", b"NOT_FOUND\r\n"),
            (b"get c\r\n", b"VALUE c 0 1\r\n3\r\nEND\r\n"),
        ])
        # Multi-key gets answer in the client's key order, one END.
        converse(c, [
            (b"set a 1 0 1\r\nA\r\n", b"STORED\r\n"),
            (b"set b 2 0 1\r\nB\r\n", b"STORED\r\n"),
            (b"get b nope a b\r\n",
             b"VALUE b 2 1\r\nB\r\nVALUE a 1 1\r\nA\r\nVALUE b 2 1\r\nB\r\nEND\r\n"),
        ])
        # Meta commands.
        converse(c, [
            (b"ms m 2 F9 T0\r\nhi\r\n", b"HD\r\n"),
            (b"mg m v f\r\n", b"VA 2 f9\r\nhi\r\n"),
            (b"mg nope v\r\n", b"EN\r\n"),
            (b"md m\r\n", b"HD\r\n"),
            (b"md m\r\n", b"NF\r\n"),
        ])
        # flush_all never reaches the table.
        got = c.request(b"flush_all\r\n")
        assert got.startswith(b"SERVER_ERROR"), got
        converse(c, [(b"get a\r\n", b"VALUE a 1 1\r\nA\r\nEND\r\n")])


def test_expiry_and_oversized_values(memroute_factory, ddb):
    mr = dynamo_memroute(memroute_factory, ddb, new_table())
    with mr.client() as c:
        converse(c, [
            (b"set gone 0 -1 1\r\nx\r\n", b"STORED\r\n"),
            (b"get gone\r\n", b"END\r\n"),
            (b"set past 0 1000000000 1\r\nx\r\n", b"STORED\r\n"),
            (b"get past\r\n", b"END\r\n"),
            # Whole-second expiry: 2 s surely outlives the next request.
            (b"set soon 0 2 1\r\nx\r\n", b"STORED\r\n"),
            (b"get soon\r\n", b"VALUE soon 0 1\r\nx\r\nEND\r\n"),
        ])
        time.sleep(3.2)
        converse(c, [(b"get soon\r\n", b"END\r\n")])
        # Over DynamoDB's 400 KB item limit: refused, nothing written.
        big = b"v" * (500 * 1024)
        converse(c, [(b"set big 0 0 1\r\nx\r\n", b"STORED\r\n")])
        got = c.request(b"set big 0 0 %d\r\n%s\r\n" % (len(big), big))
        assert got.startswith(b"SERVER_ERROR"), got
        # The old value is not silently replaced by a truncated one.
        c.send(b"get big\r\n")
        rest = c.read_until(b"END\r\n")
        assert rest in (b"VALUE big 0 1\r\nx\r\nEND\r\n", b"END\r\n"), rest
        # Just under the limit is stored whole.
        ok = b"w" * (350 * 1024)
        converse(c, [(b"set fits 0 0 %d\r\n%s\r\n" % (len(ok), ok), b"STORED\r\n")])
        c.send(b"get fits\r\n")
        assert c.read_until(b"END\r\n") == b"VALUE fits 0 %d\r\n%s\r\nEND\r\n" % (len(ok), ok)


# ------------------------------------------------------- ordering torture

def read_table(factory, ddb, table, keys):
    """Values of ``keys`` read back with a separate write-through memroute."""
    reader = dynamo_memroute(factory, ddb, table, threads=1)
    out = {}
    with reader.client() as c:
        for k in keys:
            c.send(b"get %s\r\n" % k.encode())
            line = c.read_line()
            if line == b"END\r\n":
                out[k] = None
                continue
            n = int(line.split()[3])
            out[k] = c.read_exact(n + 2)[:-2]
            assert c.read_line() == b"END\r\n"
    reader.stop()
    return out


def torture(memroute, shared_keys, threads=8, per_thread=150):
    """Concurrent sets of a few shared keys plus private keys; returns the
    last acknowledged value of every key."""
    last = {}
    lock = threading.Lock()
    errors = []

    def worker(tid):
        try:
            with memroute.client() as c:
                for i in range(per_thread):
                    key = shared_keys[i % len(shared_keys)]
                    mine = "own-%d-%d" % (tid, i % 5)
                    for k in (key, mine):
                        value = b"%d-%d" % (tid, i)
                        got = c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(value), value))
                        if got != b"STORED\r\n":
                            errors.append((k, got))
                            return
                        if k == mine:
                            with lock:
                                last[k] = value
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(("exception", repr(e)))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors[:5]
    # The concurrent phase decided nothing about the shared keys' final
    # value: finish with one acknowledged write per shared key.
    with memroute.client() as c:
        for k in shared_keys:
            value = b"final-" + k.encode()
            assert c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(value), value)) \
                == b"STORED\r\n"
            last[k] = value
    return last


def assert_table_holds(memroute_factory, ddb, table, last):
    """The table holds, for every key of ``last``, its last acknowledged
    value (call after memroute stopped and drained)."""
    stored = read_table(memroute_factory, ddb, table, sorted(last))
    wrong = {k: (stored[k], v) for k, v in last.items() if stored[k] != v}
    assert not wrong, "keys whose stored value is not the last acknowledged one: %s" % wrong


# "behind" sends the queued writes through the SDK client (the default,
# writer = "sdk"); "behind-direct" with the writer's own requests.
@pytest.mark.parametrize("mode", ["behind", "behind-direct", "through"])
def test_last_acknowledged_write_wins(memroute_factory, ddb, mode):
    table = new_table()
    write = mode.split("-")[0]
    env = {"DDB_WRITER": "direct"} if mode == "behind-direct" else {}
    mr = dynamo_memroute(memroute_factory, ddb, table, write=write, threads=2, **env)
    shared = ["hot1", "hot2", "hot3"]
    last = torture(mr, shared)
    if write == "behind":
        with mr.client() as c:
            st = stats_dict(c)
        assert any(k.endswith("_queued") for k in st), st
    # Graceful shutdown drains the write-behind queue.
    mr.stop()
    assert_table_holds(memroute_factory, ddb, table, last)


@pytest.mark.parametrize("writer", ["sdk", "direct"])
def test_dynamodb_restart_during_write_behind(memroute_factory, ddb, tmp_path, writer):
    """DynamoDB Local dies under write-behind traffic and comes back: every
    acknowledged write still lands, with either writer."""
    persistent = DynamoLocal(tmp_path / "work", db_path=tmp_path / "db").start()
    try:
        table = new_table()
        mr = dynamo_memroute(memroute_factory, persistent, table, write="behind",
                             DDB_WRITER=writer)
        acked = {}
        with mr.client() as c:
            for i in range(200):
                k, v = "r%d" % (i % 50), b"before-%d" % i
                assert c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)) == b"STORED\r\n"
                acked[k] = v
            persistent.kill()
            # Writes keep being acknowledged from the queue while the table
            # is away.
            for i in range(200):
                k, v = "r%d" % (i % 70), b"during-%d" % i
                got = c.request(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v))
                assert got == b"STORED\r\n", got
                acked[k] = v
        time.sleep(1.0)
        persistent.start()  # same port, same files
        # Drains: waits for DynamoDB to take every queued write. Writes
        # waiting out a retry backoff (up to 5 s) are woken when the drain
        # starts; before they were not, and under load the drain outlasted
        # the 5 s a server gets to exit.
        stopping = time.monotonic()
        mr.stop()
        assert time.monotonic() - stopping < 3.0
        stored = read_table(memroute_factory, persistent, table, sorted(acked))
        missing = {k: (stored[k], v) for k, v in acked.items() if stored[k] != v}
        assert not missing, "acknowledged writes lost: %s" % missing
    finally:
        persistent.stop()


# ------------------------------------------------------------------ tiers

def test_write_behind_tier(memroute_factory, memcached_factory, ddb):
    table = new_table()
    mc = memcached_factory()
    mr = dynamo_memroute(memroute_factory, ddb, table, example="dynamo-write-behind.lua",
                         args=("--config-arg", mc.addr), FILL_TTL=30)
    with mr.client() as c:
        converse(c, [
            (b"set k 3 0 2\r\nhi\r\n", b"STORED\r\n"),
            (b"set n 0 0 1\r\n5\r\n", b"STORED\r\n"),
            (b"incr n 2\r\n", b"7\r\n"),
            (b"get k\r\n", b"VALUE k 3 2\r\nhi\r\nEND\r\n"),
        ])
    # memcached holds the writes at once.
    assert mc_get(mc, "k") == b"hi"
    mr.stop()  # drain the queue
    assert read_table(memroute_factory, ddb, table, ["k", "n"]) == {"k": b"hi", "n": b"7"}
    # A cold cache is refilled from the table.
    mc2 = memcached_factory()
    mr2 = dynamo_memroute(memroute_factory, ddb, table, example="dynamo-write-behind.lua",
                          args=("--config-arg", mc2.addr))
    with mr2.client() as c:
        converse(c, [(b"get k\r\n", b"VALUE k 3 2\r\nhi\r\nEND\r\n")])
    deadline = time.monotonic() + 5
    while mc_get(mc2, "k") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mc_get(mc2, "k") == b"hi"


@pytest.mark.parametrize("writer", ["direct", "sdk"])
def test_write_behind_tier_with_batched_writes(memroute_factory, memcached_factory, ddb, writer):
    """The tier example with DDB_BATCH_WRITES=1: concurrent clients, writes
    leave in BatchWriteItem calls, and after a graceful shutdown the table
    holds every key's last acknowledged value; with either writer."""
    table = new_table()
    mc = memcached_factory()
    mr = dynamo_memroute(memroute_factory, ddb, table, example="dynamo-write-behind.lua",
                         args=("--config-arg", mc.addr), DDB_BATCH_WRITES="1",
                         DDB_WRITER=writer)
    last = torture(mr, ["hot1", "hot2", "hot3"])
    # The writes were acknowledged once queued; the batches that carry
    # them may still be on their way (the first one waits for the
    # writer's credentials and endpoint).
    deadline = time.monotonic() + 10
    while True:
        with mr.client() as c:
            st = stats_dict(c)
        batches = [int(v) for k, v in st.items() if k.endswith("_batches")]
        if (batches and batches[0] > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert batches and batches[0] > 0, {k: v for k, v in st.items() if k.startswith("dynamo_")}
    mr.stop()  # drains the queue
    assert_table_holds(memroute_factory, ddb, table, last)


def test_read_through_example(memroute_factory, memcached_factory, ddb):
    table = new_table()
    mc = memcached_factory()
    mr = dynamo_memroute(memroute_factory, ddb, table, example="dynamo-read-through.lua",
                         args=("--config-arg", mc.addr), FILL_TTL=60)
    with mr.client() as c:
        converse(c, [(b"set k 0 0 2\r\nv1\r\n", b"STORED\r\n")])
        # Write-through: the table has it; the cache does not (yet).
        assert mc_get(mc, "k") is None
        converse(c, [(b"get k\r\n", b"VALUE k 0 2\r\nv1\r\nEND\r\n")])
        deadline = time.monotonic() + 5
        while mc_get(mc, "k") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mc_get(mc, "k") == b"v1", "a miss must fill the cache"
        # A write invalidates the cached copy before it is acknowledged.
        converse(c, [(b"set k 0 0 2\r\nv2\r\n", b"STORED\r\n")])
        assert mc_get(mc, "k") is None
        converse(c, [(b"get k\r\n", b"VALUE k 0 2\r\nv2\r\nEND\r\n")])
        # That miss refills the cache in the background: wait for the fill,
        # so it cannot overwrite the value set below.
        deadline = time.monotonic() + 5
        while mc_get(mc, "k") != b"v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mc_get(mc, "k") == b"v2"
        # Reads are served by the cache while it holds the key.
        mc_set(mc, "k", b"cached")
        converse(c, [(b"get k\r\n", b"VALUE k 0 6\r\ncached\r\nEND\r\n")])


def test_warm_up_copies_the_table_into_memcached(memroute_factory, memcached_factory, ddb):
    table = new_table()
    writer = dynamo_memroute(memroute_factory, ddb, table)
    keys = ["w%d" % i for i in range(250)]  # more than one scan page
    with writer.client() as c:
        for k in keys:
            v = k.encode() * 3
            assert c.request(b"set %s 7 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)) == b"STORED\r\n"
        assert c.request(b"set gone 0 -1 1\r\nx\r\n") == b"STORED\r\n"
    writer.stop()
    mc = memcached_factory()
    tier = dynamo_memroute(memroute_factory, ddb, table, example="dynamo-write-behind.lua",
                           args=("--config-arg", mc.addr), verbose=True, WARM=1, FILL_TTL=600)
    deadline = time.monotonic() + 30
    while mc_get(mc, keys[-1]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    for k in keys:
        assert mc_get(mc, k) == k.encode() * 3, k
    assert mc_get(mc, "gone") is None, "expired items are not warmed"
    deadline = time.monotonic() + 10
    while "warm-up" not in tier.stderr_tail() or "done" not in tier.stderr_tail():
        assert time.monotonic() < deadline, tier.stderr_tail()
        time.sleep(0.1)
    assert "250 items copied" in tier.stderr_tail(), tier.stderr_tail()

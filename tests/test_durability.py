"""Durability of acknowledged writes across a normal shutdown, with memroute
started with its default flags (no -v), as in production.

A write-behind DynamoDB pool acknowledges a set before DynamoDB has it; a
graceful shutdown (SIGTERM) must empty that queue into the table before the
process exits. These tests read the table directly (DynamoDB Local's API,
not through memroute) after memroute has exited.

Run alone with: python3 -m pytest tests/test_durability.py -q
"""

import base64
import random
import threading
import time

import pytest

from conftest import EXAMPLES_DIR
from ddb_local import DynamoLocal, dynamo_env

# How long memroute may take to drain its queue and exit after SIGTERM.
# The drain of the sets below takes about 10 s on DynamoDB Local; this
# bound only keeps a hung process from hanging the test.
EXIT_TIMEOUT = 40.0


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    d = DynamoLocal(tmp_path_factory.mktemp("ddb")).start()
    yield d
    d.stop()


def scan_table(ddb, table) -> dict:
    """Every item of ``table`` as {key: value bytes}, read straight from
    DynamoDB Local with Scan (consistent, paginated)."""
    out = {}
    start = None
    while True:
        body = {"TableName": table, "ConsistentRead": True}
        if start is not None:
            body["ExclusiveStartKey"] = start
        page = ddb.call("Scan", body)
        for item in page.get("Items", []):
            value = item["value"]
            out[item["id"]["S"]] = (base64.b64decode(value["B"]) if "B" in value
                                    else value["S"].encode())
        start = page.get("LastEvaluatedKey")
        if not start:
            return out


def pipelined_sets(handle, conn_id, keys, versions, chunk=500):
    """Sets every key of ``keys`` ``versions`` times over one connection,
    pipelined ``chunk`` requests at a time, each value naming its key and
    version. Returns {key: last acknowledged value}."""
    plan = [(k, v) for v in range(versions) for k in keys]
    last = {}
    with handle.client(timeout=30.0) as c:
        for i in range(0, len(plan), chunk):
            part = plan[i:i + chunk]
            c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(val), val)
                            for k, val in ((k, b"%s=v%d" % (k.encode(), v)) for k, v in part)))
            for k, v in part:
                got = c.read_line()
                assert got == b"STORED\r\n", "set %s (conn %d): %r" % (k, conn_id, got)
                last[k] = b"%s=v%d" % (k.encode(), v)
    return last


def test_sigterm_drains_write_behind_queue_at_default_log_level(memroute_factory, ddb):
    """20,000 acknowledged write-behind sets, then SIGTERM at once: memroute
    exits 0 and DynamoDB holds every key's last acknowledged value."""
    table = "durable_%d" % random.randrange(1 << 30)
    # Default flags: no -v. At the default log level (warnings only) nothing
    # logged at info level is evaluated, which is how the drain was lost.
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "dynamo-only.lua"), "-t", "2",
                          env=dynamo_env(ddb, table, DDB_WRITE="behind"))
    assert "-v" not in mr.argv and not any(a.startswith("-v") for a in mr.argv), mr.argv
    # 4 x 250 x 20 = 20,000 sets of 1,000 keys. DynamoDB Local on a small
    # machine stores about a hundred writes a second, so more keys would make
    # the drain, not the bug, the slow part of the test.
    conns, keys_per_conn, versions = 4, 250, 20
    results, errors = {}, []

    def run(conn_id):
        try:
            keys = ["d%d-%d" % (conn_id, j) for j in range(keys_per_conn)]
            results[conn_id] = pipelined_sets(mr, conn_id, keys, versions)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("conn %d: %r" % (conn_id, e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    last = {}
    for r in results.values():
        last.update(r)
    assert len(last) == conns * keys_per_conn

    # Every set above was acknowledged: stop right away.
    t0 = time.monotonic()
    mr.terminate()
    try:
        status = mr.proc.wait(EXIT_TIMEOUT)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        pytest.fail("memroute did not exit within %.0fs of SIGTERM\n%s"
                    % (EXIT_TIMEOUT, mr.stderr_tail()))
    took = time.monotonic() - t0
    assert status == 0, "exit status %s\n%s" % (status, mr.stderr_tail())
    mr.stop()  # already exited: only records it

    stored = scan_table(ddb, table)
    lost = sorted(k for k in last if k not in stored)
    wrong = sorted(k for k in last if k in stored and stored[k] != last[k])
    assert not lost and not wrong, (
        "after SIGTERM (exit after %.1fs): %d of %d acknowledged keys missing from the "
        "table (e.g. %s), %d hold an older value (e.g. %s)\nmemroute stderr:\n%s"
        % (took, len(lost), len(last), lost[:5], len(wrong),
           [(k, stored[k], last[k]) for k in wrong[:5]], mr.stderr_tail()))

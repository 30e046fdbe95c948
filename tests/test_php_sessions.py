"""PHP sessions through memroute into DynamoDB Local, in the AWS SDK for
PHP's table format: real PHP processes with php-memcached's session handler
(text protocol) against examples/php-sessions.lua, and the table looked at
directly (as Aws\\DynamoDb\\SessionHandler would read it).

Run alone with: python3 -m pytest tests/test_php_sessions.py -q
"""

import itertools
import os
import random
import subprocess
import threading
import time

import pytest

from conftest import CLIENTS_DIR, EXAMPLES_DIR
from ddb_local import DynamoLocal, dynamo_env

PHP_SESSION = CLIENTS_DIR / "php_session.php"
LIFETIME = 1440  # session.gc_maxlifetime in php_session.php

_sids = itertools.count(1)


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    d = DynamoLocal(tmp_path_factory.mktemp("ddb")).start()
    yield d
    d.stop()


@pytest.fixture
def sessions(memroute_factory, ddb):
    table = "sessions_%d" % random.randrange(1 << 30)
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "php-sessions.lua"), "-t", "2",
                          env=dynamo_env(ddb, table))
    return mr, table


def new_sid() -> str:
    return "sid%d%d" % (next(_sids), random.randrange(1 << 40))


def php(mr, sid, action, hold_ms=0, timeout=60, binary=False):
    env = dict(os.environ, PHP_SESS_BINARY="1" if binary else "0")
    proc = subprocess.run(
        ["php", str(PHP_SESSION), "127.0.0.1:%d" % mr.port, sid, action, str(hold_ms)],
        capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, "php %s: %s%s" % (action, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def item(ddb, table, sid, name="PHPSESSID"):
    out = ddb.call("GetItem", {"TableName": table, "Key": {"id": {"S": "%s_%s" % (name, sid)}},
                               "ConsistentRead": True})
    return out.get("Item")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_sessions_live_in_the_sdk_table_format(php_memcached, sessions, ddb, binary):
    """php-memcached's session handler over the text protocol, and over the
    binary protocol (its default)."""
    mr, table = sessions
    sid = new_sid()
    assert php(mr, sid, "read", binary=binary) == "0"
    assert item(ddb, table, sid) is None, "a read-only request writes nothing"
    for n in (1, 2, 3):
        assert php(mr, sid, "incr", binary=binary) == str(n)
    stored = item(ddb, table, sid)
    assert stored["id"] == {"S": "PHPSESSID_" + sid}
    assert stored["data"] == {"S": "n|i:3;"}
    now = time.time()
    assert now + LIFETIME - 5 <= int(stored["expires"]["N"]) <= now + LIFETIME + 1
    assert "lock" not in stored and "lock_expires" not in stored, "unlocked after the request"
    assert php(mr, sid, "read", binary=not binary) == "3", "either protocol reads it"


def test_a_session_written_by_the_aws_sdk_is_read_and_updated(php_memcached, sessions, ddb):
    mr, table = sessions
    sid = new_sid()
    # As Aws\DynamoDb\SessionHandler writes it (string data, epoch expires).
    ddb.call("PutItem", {"TableName": table, "Item": {
        "id": {"S": "PHPSESSID_" + sid}, "data": {"S": "n|i:41;"},
        "expires": {"N": str(int(time.time()) + 600)}}})
    assert php(mr, sid, "incr") == "42"
    assert item(ddb, table, sid)["data"] == {"S": "n|i:42;"}
    # An expired session is gone, as the SDK reads it.
    ddb.call("PutItem", {"TableName": table, "Item": {
        "id": {"S": "PHPSESSID_" + sid}, "data": {"S": "n|i:41;"},
        "expires": {"N": str(int(time.time()) - 1)}}})
    assert php(mr, sid, "read") == "0"


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_session_locking_serializes_requests(php_memcached, sessions, ddb, binary):
    """Two requests on one session at once: the second waits for the
    first's lock (held in DynamoDB), so neither increment is lost."""
    mr, table = sessions
    sid = new_sid()
    results = {}

    def request(name, hold_ms):
        start = time.monotonic()
        results[name] = (php(mr, sid, "incr", hold_ms, binary=binary),
                         time.monotonic() - start)

    first = threading.Thread(target=request, args=("first", 1500))
    first.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "lock" not in (item(ddb, table, sid) or {}):
        time.sleep(0.02)
    assert item(ddb, table, sid)["lock"] == {"N": "1"}, "the first request holds the lock"
    second = threading.Thread(target=request, args=("second", 0))
    second.start()
    first.join(60)
    second.join(60)
    assert sorted(r[0] for r in results.values()) == ["1", "2"]
    assert results["first"][0] == "1"
    assert results["second"][1] > 0.8, "the second request waited for the lock"
    stored = item(ddb, table, sid)
    assert stored["data"] == {"S": "n|i:2;"} and "lock" not in stored


def test_a_session_held_by_an_sdk_lock_waits(php_memcached, sessions, ddb):
    """The SDK's lock (lock = 1, no expiry) holds php-memcached off until the
    SDK side releases it."""
    mr, table = sessions
    sid = new_sid()
    key = {"id": {"S": "PHPSESSID_" + sid}}
    ddb.call("PutItem", {"TableName": table, "Item": dict(key, data={"S": "n|i:7;"},
             expires={"N": str(int(time.time()) + 600)}, lock={"N": "1"})})
    result = {}
    t = threading.Thread(target=lambda: result.update(n=php(mr, sid, "incr")))
    t.start()
    time.sleep(1.0)
    assert "n" not in result, "php-memcached must wait for the SDK's lock"
    ddb.call("UpdateItem", {"TableName": table, "Key": key, "UpdateExpression": "REMOVE #l",
                            "ExpressionAttributeNames": {"#l": "lock"}})
    t.join(60)
    assert result.get("n") == "8"


def test_session_destroy_removes_the_item(php_memcached, sessions, ddb):
    mr, table = sessions
    sid = new_sid()
    assert php(mr, sid, "incr") == "1"
    assert php(mr, sid, "destroy") == "destroyed"
    assert item(ddb, table, sid) is None
    assert php(mr, sid, "read") == "0"

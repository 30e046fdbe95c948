"""Perl CGI::Session and PHP sessions through memroute into one DynamoDB
Local table, in the AWS SDK for PHP's session table format
(examples/cgi-php-sessions.lua): real Perl processes with CGI::Session's
memcached driver (tests/clients/perl_cgi_session.pl), real PHP processes
with php-memcached's session handler (tests/clients/php_session.php), the
table looked at directly, and a memroute restart in between.

What CGI::Session::Driver::memcached 0.04 sends through Cache::Memcached
1.30 (checked against memcached -vv): `get <sid> ` (with a trailing space),
`set <sid> 0 0 <len>` with the Data::Dumper-serialized session (flags 0,
exptime 0: CGI::Session's expiry lives inside the data), and
`delete <sid>`. A load that finds the session writes it back (the access
time changed). It has no lock; the application's lock here is
`add lock.<sid> 1 30` / `delete lock.<sid>`, as php-memcached's.

Run alone with: python3 -m pytest tests/test_sessions.py -q
"""

import json
import random
import re
import subprocess
import threading
import time

import pytest

from conftest import CLIENTS_DIR, EXAMPLES_DIR, missing
from ddb_local import DynamoLocal, dynamo_env
from test_php_sessions import new_sid, php

EXAMPLE = EXAMPLES_DIR / "cgi-php-sessions.lua"
PERL_CGI_SESSION = CLIENTS_DIR / "perl_cgi_session.pl"
CGI_LIFETIME = 86400  # CGI_SESSION_LIFETIME's default in the example
PHP_LIFETIME = 1440  # session.gc_maxlifetime in php_session.php
SDK_ATTRS = {"id", "data", "expires"}


@pytest.fixture(scope="module")
def cgi_session():
    """Perl with CGI::Session and its memcached driver."""
    proc = subprocess.run(["perl", "-MCGI::Session", "-MCGI::Session::Driver::memcached",
                           "-MCache::Memcached", "-e", "1"], capture_output=True, timeout=30)
    if proc.returncode != 0:
        missing("perl CGI::Session with its memcached driver missing (Debian "
                "libcgi-session-driver-memcached-perl; run scripts/install-test-deps.sh)")


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    d = DynamoLocal(tmp_path_factory.mktemp("ddb")).start()
    yield d
    d.stop()


@pytest.fixture
def table():
    return "sessions_%d" % random.randrange(1 << 30)


def start(memroute_factory, ddb, table, **env):
    return memroute_factory("--config", str(EXAMPLE), "-t", "2",
                            env=dynamo_env(ddb, table, **env))


@pytest.fixture
def mr(memroute_factory, ddb, table):
    return start(memroute_factory, ddb, table)


def perl_argv(mr, action, *args):
    return ["perl", str(PERL_CGI_SESSION), "127.0.0.1:%d" % mr.port, action] + list(args)


def perl(mr, action, *args, env=None, timeout=60) -> str:
    proc = subprocess.run(perl_argv(mr, action, *args), capture_output=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, "perl %s: %r %r" % (action, proc.stdout, proc.stderr)
    return proc.stdout.decode("utf-8").strip()


def item(ddb, table, sid, name):
    out = ddb.call("GetItem", {"TableName": table, "Key": {"id": {"S": "%s_%s" % (name, sid)}},
                               "ConsistentRead": True})
    return out.get("Item")


def cgi_item(ddb, table, sid):
    return item(ddb, table, sid, "CGISESSID")


def assert_expires_in(stored, lifetime):
    now = time.time()
    assert now + lifetime - 10 <= int(stored["expires"]["N"]) <= now + lifetime + 1, stored


class Request:
    """A Perl request run in the background; ``loaded()`` waits until it
    holds the loaded session (its "loaded" line on stderr)."""

    def __init__(self, mr, *args):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(perl_argv(mr, "incr", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.err = b""

    def loaded(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            self.err += line
            if line == b"loaded\n":
                return
            if not line:
                break
        raise AssertionError("the request did not load the session: %r" % self.err)

    def result(self):
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, (out, self.err + err)
        return out.decode().strip(), time.monotonic() - self.start


def test_a_cgi_session_is_stored_in_the_sdk_format_and_read_back(cgi_session, mr, ddb, table):
    params = {"user": "alice", "city": "Z\u00fcrich", "quote": "it's \"q\"\\\nline 2"}
    sid = perl(mr, "create", json.dumps(params))
    assert re.fullmatch(r"[0-9a-f]{32}", sid), sid
    stored = cgi_item(ddb, table, sid)
    assert set(stored) == SDK_ATTRS, stored
    assert stored["id"] == {"S": "CGISESSID_" + sid}
    data = stored["data"]["S"]
    assert data.startswith("$D = {") and data.endswith(";$D"), data
    assert "'_SESSION_ID' => '%s'" % sid in data and "'city' => 'Z\u00fcrich'" in data
    assert_expires_in(stored, CGI_LIFETIME)
    # Another process reads it back through memroute, bytes intact.
    assert json.loads(perl(mr, "read", sid)) == params
    # memcached clients see the same bytes, with flags 0.
    with mr.client() as c:
        c.send(("get %s\r\n" % sid).encode())
        head = c.read_until(b"\r\n").split()
        assert head[:3] == [b"VALUE", sid.encode(), b"0"], head
        value = c.read_exact(int(head[3]) + 2)[:-2]
        c.read_until(b"END\r\n")
    assert value.startswith(b"$D = {") and "Z\u00fcrich".encode() in value


def test_cgi_session_expiry_and_delete(cgi_session, mr, ddb, table):
    """CGI::Session's own expiry: an expired session is deleted by the next
    load (`delete <sid>`), and so is the item."""
    sid = perl(mr, "create", '{"user": "bob"}')
    assert perl(mr, "expire", sid, "1") == "ok"
    time.sleep(2.1)
    assert perl(mr, "read", sid) == "expired"
    assert cgi_item(ddb, table, sid) is None
    assert perl(mr, "read", sid) == "missing"
    sid = perl(mr, "create", '{"user": "carol"}')
    assert perl(mr, "delete", sid) == "deleted"
    assert cgi_item(ddb, table, sid) is None


def test_cgi_session_data_that_is_not_utf8_is_refused(cgi_session, mr, ddb, table):
    """A string table keeps UTF-8 only: the set is refused, and the driver
    ignores set's result, so CGI::Session reports success and the session
    keeps its last stored state (docs/dynamodb.md: data_type = "binary")."""
    sid = perl(mr, "create", '{"user": "dave"}')
    argv = perl_argv(mr, "set", sid, "name")
    proc = subprocess.run([a.encode() for a in argv] + [b"caf\xe9"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == b"ok\n", proc
    assert json.loads(perl(mr, "read", sid)) == {"user": "dave"}
    with mr.client() as c:
        c.send(b"set %s 0 0 4\r\ncaf\xe9\r\n" % sid.encode())
        assert c.read_until(b"\r\n") == (
            b"SERVER_ERROR session data is not UTF-8 (the table stores it as a string)\r\n")


def test_cgi_session_requests_without_a_lock_lose_an_update(cgi_session, mr, ddb, table):
    """CGI::Session itself does not lock: two requests that overlap both
    load n = 0, and the last to write wins."""
    sid = perl(mr, "create", "{}")
    slow = Request(mr, sid, "1500")
    slow.loaded()
    assert perl(mr, "incr", sid, "0") == "1"
    assert slow.result()[0] == "1"
    assert json.loads(perl(mr, "read", sid)) == {"n": 1}


def test_cgi_session_application_lock_serializes_requests(cgi_session, mr, ddb, table):
    """The application's add-based lock is the table's `lock` attribute:
    the second request waits for the first, and no increment is lost."""
    sid = perl(mr, "create", "{}")
    first = Request(mr, sid, "1500", "lock")
    first.loaded()
    stored = cgi_item(ddb, table, sid)
    assert stored["lock"] == {"N": "1"}, "the first request holds the lock in the table"
    assert_expires_in({"expires": stored["lock_expires"]}, 30)
    second = Request(mr, sid, "0", "lock")
    assert first.result()[0] == "1"
    n, waited = second.result()
    assert n == "2" and waited > 0.8, (n, waited)
    stored = cgi_item(ddb, table, sid)
    assert "lock" not in stored and "lock_expires" not in stored
    assert json.loads(perl(mr, "read", sid)) == {"n": 2}


def test_an_sdk_lock_holds_the_cgi_application_lock_off(cgi_session, mr, ddb, table):
    sid = perl(mr, "create", "{}")
    key = {"id": {"S": "CGISESSID_" + sid}}
    ddb.call("UpdateItem", {"TableName": table, "Key": key, "UpdateExpression": "SET #l = :one",
                            "ExpressionAttributeNames": {"#l": "lock"},
                            "ExpressionAttributeValues": {":one": {"N": "1"}}})
    waiting = Request(mr, sid, "0", "lock")
    time.sleep(1.0)
    assert waiting.proc.poll() is None, "the Perl request must wait for the SDK's lock"
    ddb.call("UpdateItem", {"TableName": table, "Key": key, "UpdateExpression": "REMOVE #l",
                            "ExpressionAttributeNames": {"#l": "lock"}})
    assert waiting.result()[0] == "1"


def test_a_cache_memcached_namespace_is_the_key_prefix(cgi_session, memroute_factory, ddb,
                                                       table):
    mr = start(memroute_factory, ddb, table, CGI_SESS_PREFIX="cgisess:")
    env = dynamo_env(ddb, table, CGI_SESS_NAMESPACE="cgisess:")
    sid = perl(mr, "create", '{"user": "erin"}', env=env)
    assert cgi_item(ddb, table, sid)["id"] == {"S": "CGISESSID_" + sid}
    assert json.loads(perl(mr, "read", sid, env=env)) == {"user": "erin"}
    # Without the namespace the key is not a CGI session key.
    with mr.client() as c:
        c.send(("get %s\r\n" % sid).encode())
        assert c.read_until(b"\r\n") == b"CLIENT_ERROR not a PHP session key\r\n"


def test_php_session_locking_between_two_requests(php_memcached, mr, ddb, table):
    """php-memcached's sessions through the same startfile: two requests at
    once, the second waits for the first's lock (binary protocol, the
    handler's default)."""
    sid = new_sid()
    results = {}

    def request(name, hold_ms):
        start = time.monotonic()
        results[name] = (php(mr, sid, "incr", hold_ms, binary=True), time.monotonic() - start)

    first = threading.Thread(target=request, args=("first", 1500))
    first.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "lock" not in (item(ddb, table, sid, "PHPSESSID")
                                                         or {}):
        time.sleep(0.02)
    assert item(ddb, table, sid, "PHPSESSID")["lock"] == {"N": "1"}
    second = threading.Thread(target=request, args=("second", 0))
    second.start()
    first.join(60)
    second.join(60)
    assert results["first"][0] == "1"
    assert results["second"][0] == "2" and results["second"][1] > 0.8, results
    stored = item(ddb, table, sid, "PHPSESSID")
    assert set(stored) == SDK_ATTRS and stored["data"] == {"S": "n|i:2;"}
    assert_expires_in(stored, PHP_LIFETIME)


def test_both_sessions_survive_a_memroute_restart(cgi_session, php_memcached, memroute_factory,
                                                  ddb, table):
    mr = start(memroute_factory, ddb, table)
    cgi_sid = perl(mr, "create", '{"user": "frank"}')
    assert perl(mr, "incr", cgi_sid, "0", "lock") == "1"
    php_sid = new_sid()
    assert php(mr, php_sid, "incr", binary=True) == "1"
    assert php(mr, php_sid, "incr") == "2"
    ids = sorted(i["id"]["S"] for i in ddb.call("Scan", {"TableName": table})["Items"])
    assert ids == sorted(["CGISESSID_" + cgi_sid, "PHPSESSID_" + php_sid])

    mr.stop()  # SIGTERM; asserts exit status 0 within 5 s
    again = start(memroute_factory, ddb, table)
    assert json.loads(perl(again, "read", cgi_sid)) == {"user": "frank", "n": 1}
    assert php(again, php_sid, "read", binary=True) == "2"
    # And they go on: locked writes work on the new process.
    assert perl(again, "incr", cgi_sid, "0", "lock") == "2"
    assert php(again, php_sid, "incr", binary=True) == "3"
    assert set(cgi_item(ddb, table, cgi_sid)) == SDK_ATTRS
    assert set(item(ddb, table, php_sid, "PHPSESSID")) == SDK_ATTRS


def test_session_pools_refuse_write_behind(memroute_factory, ddb, table, tmp_path):
    """There is no write-behind variant: a session lock must be answered
    by the table, so the session format refuses write = "behind"."""
    startfile = tmp_path / "behind.lua"
    startfile.write_text(
        'function mcp_config_pools() return { s = mcp.dynamo_pool{ table = "%s", '
        'endpoint = "%s", region = "us-east-1", format = "php_session", '
        'session_name = "CGISESSID", session_prefix = "", write = "behind" } } end\n'
        'function mcp_config_routes(p) mcp.attach(mcp.CMD_ANY_STORAGE, p.s) end\n'
        % (table, ddb.endpoint))
    with pytest.raises(RuntimeError, match="needs write = .through."):
        memroute_factory("--config", str(startfile), env=dynamo_env(ddb, table),
                         ready_timeout=5)

"""`memroute route-of`: where keys go under a configuration, answered on the
command line without serving or sending anything.

For a routelib file, an mcrouter JSON configuration and a Lua startfile, the
command's answer for each key must be what a proxy running the same
configuration answers to `get __mcrouter__.route(OP,KEY)` and
`__mcrouter__.route_handles(OP,KEY)`. The backends are addresses nothing
answers on (or a socket that never accepts), so the command also shows it
needs no backend and opens no connection, and it must exit at once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from conftest import HOST, _require_memroute, free_port, write_startfile

# Unreachable backends: nothing listens on these ports.
DEAD = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
KEYS = ["user/%d" % i for i in range(12)] + ["foo/%d" % i for i in range(12)] + ["k"]
# Generous for a debug build on a loaded machine, far below any connect
# timeout or retry a backend connection would wait for.
PROMPT = 5.0


def route_of(*args: str):
    """Runs `memroute route-of ARGS`; (exit code, stdout, stderr, seconds)."""
    argv = [str(_require_memroute()), "route-of"] + list(args)
    start = time.monotonic()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return (proc.returncode, proc.stdout.decode(), proc.stderr.decode(),
            time.monotonic() - start)


def parse(stdout: str) -> dict:
    """The command's answer as {(op, key): (backends, route tree lines)}."""
    answers = {}
    current = section = None
    for line in stdout.splitlines():
        if not line.startswith(" "):
            op, key = line.split(" ", 1)
            current = answers.setdefault((op, key), ([], []))
        elif line == "  backends:":
            section = 0
        elif line == "  route:":
            section = 1
        else:
            assert line.startswith("    "), line
            current[section].append(line[4:])
    return answers


def admin(client, name: str, op: str, key: str) -> list:
    """A running proxy's answer to `get __mcrouter__.NAME(OP,KEY)`, by line."""
    asked = "__mcrouter__.%s(%s,%s)" % (name, op, key)
    reply = client.request(b"get %s\r\n" % asked.encode(), b"END\r\n")
    head, rest = reply.split(b"\r\n", 1)
    parts = head.split(b" ")
    assert parts[:2] == [b"VALUE", asked.encode()], reply
    body = rest[:int(parts[3])].decode()
    return body.split("\r\n") if body else []


def assert_same_answers(cli: dict, proxy, op: str, keys, port=None):
    """Every key's command-line answer is the running proxy's."""
    assert set(cli) == {(op, k) for k in keys}
    client = proxy.client() if port is None else _client(port)
    with client as c:
        for key in keys:
            backends, tree = cli[(op, key)]
            assert backends, (key, tree)
            assert backends == admin(c, "route", op, key), key
            assert tree == admin(c, "route_handles", op, key), key


def _client(port: int):
    from conftest import RawClient
    return RawClient(HOST, port)


def check_prompt(rc, out, err, took):
    assert rc == 0, err
    assert took < PROMPT, "route-of took %.1fs" % took
    return parse(out)


def test_routelib_failover_between_two_pools(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "routes.lua", """
        pools{
            main = { backends = { "%s", "%s", "%s" } },
            gutter = { backends = { "%s" } },
        }
        routes{
            map = { user = route_failover{ children = { "main", "gutter" } } },
            default = route_direct{ child = "gutter" },
        }
        """ % tuple(DEAD))
    for op in ("get", "set"):
        cli = check_prompt(*route_of("--routes", str(path), op, *KEYS))
        # The failover tries the main pool's pick, then the gutter.
        backends, tree = cli[(op, "user/1")]
        assert len(backends) == 2 and backends[0] in DEAD[:3] and backends[1] == DEAD[3]
        assert tree[:2] == ["router", "  failover"], tree
        # The main pool spreads the keys over its three servers.
        assert {cli[(op, k)][0][0] for k in KEYS if k.startswith("user/")} == set(DEAD[:3])
        assert cli[(op, "foo/1")][0] == [DEAD[3]]
        # The same flags in front of the subcommand give the same answer.
        before = [str(_require_memroute()), "--routes", str(path), "route-of", op] + KEYS
        assert parse(subprocess.run(before, capture_output=True, timeout=30,
                                    check=True).stdout.decode()) == cli
        proxy = memroute_factory("--routes", str(path))
        assert_same_answers(cli, proxy, op, KEYS)


def test_mcrouter_json_config(memroute_factory, startfile_dir):
    path = write_startfile(startfile_dir, "mcrouter.json", json.dumps({
        "pools": {"A": {"servers": DEAD[:3]}, "B": {"servers": DEAD[3:]}},
        "route": {
            "type": "PrefixSelectorRoute",
            "policies": {"user": {"type": "FailoverRoute",
                                  "children": ["PoolRoute|A", "PoolRoute|B"]}},
            "wildcard": "PoolRoute|B",
        },
    }))
    cli = check_prompt(*route_of("--mcrouter-config", str(path), "get", *KEYS))
    assert {cli[("get", k)][0][0] for k in KEYS if k.startswith("user/")} <= set(DEAD[:3])
    assert cli[("get", "k")][0] == [DEAD[3]]
    proxy = memroute_factory("--mcrouter-config", str(path))
    assert_same_answers(cli, proxy, "get", KEYS)


def test_lua_startfile_and_tagged_listener(memroute_factory, startfile_dir):
    # A backend that listens but never accepts: any connection attempt
    # would be waiting in its queue.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind((HOST, 0))
    silent.listen(16)
    silent_addr = "%s:%d" % silent.getsockname()
    try:
        path = write_startfile(startfile_dir, "start.lua", """
            function mcp_config_pools()
                local function b(name, port)
                    return mcp.backend(name, "127.0.0.1", port)
                end
                return {
                    main = mcp.pool({ b("m1", 1), b("m2", 2), b("m3", %d) }),
                    near = mcp.pool({ b("n1", 4) }),
                }
            end

            function mcp_config_routes(pools)
                mcp.attach(mcp.CMD_GET, pools.main)
                mcp.attach(mcp.CMD_GET, pools.near, "aa")
                mcp.attach(mcp.CMD_SET, function(r) return pools.main(r) end)
            end
            """ % silent.getsockname()[1])
        cli = check_prompt(*route_of("--config", str(path), "get", *KEYS))
        tagged = check_prompt(*route_of("--config", str(path), "--tag", "aa", "get", *KEYS))
        sets = check_prompt(*route_of("--config", str(path), "set", "k"))
        rc, unrouted, err, _ = route_of("--config", str(path), "delete", "k")
        # Nothing connected to the backend that listens.
        silent.settimeout(0.3)
        with pytest.raises(socket.timeout):
            silent.accept()
    finally:
        silent.close()
    assert {cli[("get", k)][0][0] for k in KEYS} == {DEAD[0], DEAD[1], silent_addr}
    assert all(tagged[("get", k)][0] == [DEAD[3]] for k in KEYS)
    # A Lua function decides at run time: no backend to name.
    assert sets[("set", "k")] == ([], ["lua function"])
    # Nothing attached for delete: said so, still an answer.
    assert rc == 0 and unrouted == "delete k\n  no route: nothing is attached for delete\n", err

    tag_port = free_port()
    proxy = memroute_factory("--config", str(path), "-l", "tag_aa_:%s:%d" % (HOST, tag_port))
    assert_same_answers(cli, proxy, "get", KEYS)
    assert_same_answers(tagged, proxy, "get", KEYS, port=tag_port)
    with proxy.client() as c:
        assert admin(c, "route", "delete", "k") == ["no route"]


def test_bad_config_or_question_exits_2(startfile_dir):
    broken = write_startfile(startfile_dir, "broken.lua", """
        pools{ main = { backends = { "127.0.0.1:1" } } }
        routes{ default = route_direct{ child = "nosuchpool" } }
        """)
    rc, out, err, _ = route_of("--routes", str(broken), "get", "k")
    assert rc == 2 and out == "" and "nosuchpool" in err, err
    bad_json = write_startfile(startfile_dir, "bad.json", "{ not json")
    rc, out, err, _ = route_of("--mcrouter-config", str(bad_json), "get", "k")
    assert rc == 2 and out == "" and "bad.json" in err, err
    rc, _, err, _ = route_of("get", "k")
    assert rc == 2 and "needs a configuration" in err, err
    good = write_startfile(startfile_dir, "good.lua", """
        pools{ main = { backends = { "127.0.0.1:1" } } }
        routes{ default = route_direct{ child = "main" } }
        """)
    rc, _, err, _ = route_of("--routes", str(good), "frob", "k")
    assert rc == 2 and "not a request" in err, err
    rc, _, err, _ = route_of("--routes", str(good), "--tag", "waytoolong", "get", "k")
    assert rc == 2 and "--tag" in err, err

"""Listeners: tagged TCP listeners (`-l tag_NAME_:HOST:PORT`) routing to
their tag's routes, beside untagged ones, and the UNIX socket (`-s`, `-a`).

Tagged routes are attached with `mcp.attach(cmd, route, "NAME")` or
routelib's `routes{ tag = "NAME", ... }`; each test checks where a write
landed on real memcached backends. The UNIX socket is compared with a real
memcached's: the same conversation gets the same bytes, the socket file
has the mode `-a` gives, TCP is off, and the file outlives shutdown as
memcached's does.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import (HOST, RawClient, _require_memcached, _require_memroute, free_port,
                      mc_get, run_memroute_expect_failure, stats_dict, wait_until,
                      write_startfile)
# test_tls's certificates (made once per module with openssl) and its
# per-test server list, for the TLS test at the end.
from test_tls import certs, servers  # noqa: F401  (pytest fixtures)


def tagged(tag: str, port: int) -> list:
    """memroute args adding a listener tagged `tag` on `port`."""
    return ["-l", "tag_%s_:%s:%d" % (tag, HOST, port)]


def set_via(port: int, key: str, value: bytes) -> bytes:
    with RawClient(HOST, port) as c:
        return c.request(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))


def get_via(port: int, key: str) -> bytes:
    """A `get`'s whole reply: VALUE blocks and END, or an error line."""
    with RawClient(HOST, port) as c:
        c.send(b"get %s\r\n" % key.encode())
        line = c.read_line()
        if line.startswith(b"VALUE "):
            return line + c.read_until(b"END\r\n")
        return line


def lua_pools(**servers) -> str:
    """`mcp_config_pools` returning one single-backend pool per name."""
    lines = ["function mcp_config_pools()", "    return {"]
    for name, s in servers.items():
        lines.append('        %s = mcp.pool({ mcp.backend("%s", "%s", %d) }),'
                     % (name, name, s.host, s.port))
    lines += ["    }", "end", ""]
    return "\n".join(lines)


def test_lua_attach_per_tag(backends, memroute_factory, startfile_dir):
    a, b, c = backends(3)
    path = write_startfile(startfile_dir, "tags.lua", lua_pools(pa=a, pb=b, pc=c) + """
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return p.pc(r) end)
    -- a pool attached as itself, for every storage command of tag "aa"
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pa, "aa")
    -- only set for tag "bb": its gets fall back to the untagged route
    mcp.attach(mcp.CMD_SET, function(r) return p.pb(r) end, "bb")
    -- a tag no listener carries: accepted, never reached
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pb, "nobody")
end
""")
    port_a, port_b = free_port(), free_port()
    mr = memroute_factory("--config", str(path), *tagged("aa", port_a), *tagged("bb", port_b))
    assert set_via(mr.port, "k", b"untagged") == b"STORED\r\n"
    assert set_via(port_a, "k", b"tag-aa") == b"STORED\r\n"
    assert set_via(port_b, "k", b"tag-bb") == b"STORED\r\n"
    assert mc_get(c, "k") == b"untagged"
    assert mc_get(a, "k") == b"tag-aa"
    assert mc_get(b, "k") == b"tag-bb"
    assert get_via(port_a, "k") == b"VALUE k 0 6\r\ntag-aa\r\nEND\r\n"
    # "bb" has no get route: memcached falls back to the untagged one.
    assert get_via(port_b, "k") == b"VALUE k 0 8\r\nuntagged\r\nEND\r\n"
    assert get_via(mr.port, "k") == b"VALUE k 0 8\r\nuntagged\r\nEND\r\n"
    assert "nobody" in mr.stderr_tail()


def test_routelib_sections_per_tag(backends, memroute_factory, startfile_dir):
    a, b, c = backends(3)
    path = write_startfile(startfile_dir, "routes.lua", """
pools{
    pa = { backends = { "%s" } },
    pb = { backends = { "%s" } },
    pc = { backends = { "%s" } },
}
routes{ default = route_direct{ child = "pc" } }
routes{ tag = "aa", default = route_direct{ child = "pa" } }
routes{
    tag = "bb",
    map = { hot = route_direct{ child = "pb" } },
    default = route_direct{ child = "pc" },
}
""" % (a.addr, b.addr, c.addr))
    port_a, port_b = free_port(), free_port()
    mr = memroute_factory("--routes", str(path), *tagged("aa", port_a), *tagged("bb", port_b))
    assert set_via(mr.port, "cold/1", b"u") == b"STORED\r\n"
    assert set_via(port_a, "cold/2", b"a") == b"STORED\r\n"
    assert set_via(port_b, "hot/3", b"b") == b"STORED\r\n"
    assert set_via(port_b, "cold/4", b"c") == b"STORED\r\n"
    assert mc_get(c, "cold/1") == b"u" and mc_get(a, "cold/1") is None
    assert mc_get(a, "cold/2") == b"a" and mc_get(c, "cold/2") is None
    assert mc_get(b, "hot/3") == b"b"
    assert mc_get(c, "cold/4") == b"c"


def test_listeners_sharing_a_tag_and_funcgen_attach(backends, memroute_factory, startfile_dir):
    """Two listeners with one tag share its routes; a funcgen attached for
    one command of a tag serves that command, the untagged routes the
    rest."""
    a, c = backends(2)
    path = write_startfile(startfile_dir, "tags.lua", lua_pools(pa=a, pc=c) + """
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pc)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pa, "aa")
    local fg = mcp.funcgen_new()
    fg:ready({ f = function(rctx)
        return function(r) return "SERVER_ERROR from zz\\r\\n" end
    end })
    mcp.attach(mcp.CMD_GET, fg, "zz")
end
""")
    port_a1, port_a2, port_z = free_port(), free_port(), free_port()
    memroute_factory("--config", str(path), *tagged("aa", port_a1), *tagged("aa", port_a2),
                     *tagged("zz", port_z))
    assert set_via(port_a1, "k1", b"1") == b"STORED\r\n"
    assert set_via(port_a2, "k2", b"2") == b"STORED\r\n"
    assert set_via(port_z, "k3", b"3") == b"STORED\r\n"
    assert mc_get(a, "k1") == b"1" and mc_get(a, "k2") == b"2"
    assert mc_get(c, "k3") == b"3" and mc_get(a, "k3") is None
    assert get_via(port_z, "k3") == b"SERVER_ERROR from zz\r\n"
    assert get_via(port_a1, "k1") == b"VALUE k1 0 1\r\n1\r\nEND\r\n"


def test_routelib_with_only_tagged_sections(backends, memroute_factory, startfile_dir):
    """Untagged clients of a file with tagged routes only have no route:
    the embedded cache answers them."""
    (a,) = backends(1)
    path = write_startfile(startfile_dir, "routes.lua", """
pools{ pa = { backends = { "%s" } } }
routes{ tag = "aa", default = route_direct{ child = "pa" } }
""" % a.addr)
    port_a = free_port()
    mr = memroute_factory("--routes", str(path), *tagged("aa", port_a))
    assert set_via(port_a, "k", b"tagged") == b"STORED\r\n"
    assert set_via(mr.port, "k", b"local") == b"STORED\r\n"
    assert mc_get(a, "k") == b"tagged"
    assert get_via(mr.port, "k") == b"VALUE k 0 5\r\nlocal\r\nEND\r\n"


def test_reload_swaps_a_tags_routes(backends, memroute_factory, startfile_dir):
    a, b, c = backends(3)
    routes = lua_pools(pa=a, pb=b, pc=c) + """
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pc)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.%s, "aa")
end
"""
    path = write_startfile(startfile_dir, "tags.lua", routes % "pa")
    port_a = free_port()
    mr = memroute_factory("--config", str(path), *tagged("aa", port_a))
    assert set_via(port_a, "k1", b"1") == b"STORED\r\n"
    write_startfile(startfile_dir, "tags.lua", routes % "pb")
    mr.proc.send_signal(signal.SIGHUP)
    with mr.client() as client:
        wait_until(lambda: stats_dict(client, b"proxy").get("config_reloads") == "1", 10,
                   what="the reload")
    assert set_via(port_a, "k2", b"2") == b"STORED\r\n"
    assert set_via(mr.port, "k3", b"3") == b"STORED\r\n"
    assert mc_get(a, "k1") == b"1" and mc_get(b, "k2") == b"2" and mc_get(a, "k2") is None
    assert mc_get(c, "k3") == b"3"


@pytest.mark.parametrize("args, message", [
    (["-l", "tag_toolongtag_:127.0.0.1:1"], "1 to 8 bytes"),
    (["-l", "tag_x:127.0.0.1:1"], "tag_NAME_:HOST[:PORT]"),
    (["-l", "tag__:127.0.0.1:1"], "1 to 8 bytes"),
    (["-l", "127.0.0.1:99999"], "not a port number"),
    (["-l", "[::1"], "needs its ]"),
    (["-l", "example.invalid"], "not an IP address"),
    (["-s", "/tmp/memroute-test.sock", "-a", "abc"], "octal permission mask"),
    (["-s", "/tmp/memroute-test.sock", "-a", "1777"], "octal permission mask"),
    (["-s", "/nonexistent-dir/memroute.sock"], "cannot listen on UNIX socket"),
])
def test_bad_listener_flags_are_refused(args, message):
    result = run_memroute_expect_failure(args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("routes, message", [
    ('mcp.attach(mcp.CMD_SET, p.pa, "waytoolongtag")', "mcp.attach: tag"),
    ('mcp.attach(mcp.CMD_SET, p.pa, "")', "mcp.attach: tag"),
])
def test_bad_attach_tags_are_refused(startfile_dir, routes, message):
    path = write_startfile(startfile_dir, "bad.lua", """
function mcp_config_pools()
    return { pa = mcp.pool({ mcp.backend("a", "127.0.0.1", 1) }) }
end
function mcp_config_routes(p)
    %s
end
""" % routes)
    result = run_memroute_expect_failure(["--config", str(path)])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_routelib_second_section_for_a_tag_is_refused(startfile_dir):
    path = write_startfile(startfile_dir, "routes.lua", """
pools{ p = { backends = { "127.0.0.1:1" } } }
routes{ tag = "aa", default = route_direct{ child = "p" } }
routes{ tag = "aa", default = route_direct{ child = "p" } }
""")
    result = run_memroute_expect_failure(["--routes", str(path)])
    assert "routes.lua:3: routes: a second tag 'aa' routes{} section" in result.stderr, \
        result.stderr


# --------------------------------------------------------------------------
# UNIX socket
# --------------------------------------------------------------------------


class UnixServer:
    """A server listening on a UNIX socket only, started and stopped by pid."""

    def __init__(self, argv: list, path: Path, log: Path):
        self.path = path
        self.log = log
        with open(log, "wb") as errf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf,
                                         stderr=errf, start_new_session=True)
        wait_until(self._answers, 10, what="%s to answer on %s" % (argv[0], path))

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail("exited with %s: %s" % (self.proc.returncode,
                                                self.log.read_text(errors="replace")))
        try:
            return self.request(b"version\r\n").startswith(b"VERSION ")
        except OSError:
            return False

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(self.path))
        return s

    def request(self, data: bytes, ends: bytes = b"\r\n") -> bytes:
        with self.connect() as s:
            s.sendall(data)
            out = b""
            while not out.endswith(ends):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def unix_servers(tmp_path):
    started = []

    def start(kind: str, *args: str) -> UnixServer:
        path = tmp_path / ("%s-%d.sock" % (kind, len(started)))
        if kind == "memcached":
            argv = [_require_memcached(), "-U", "0", "-s", str(path)]
            if os.geteuid() == 0:
                argv += ["-u", "root"]
        else:
            argv = [str(_require_memroute()), "-s", str(path)]
        server = UnixServer(argv + list(args), path, tmp_path / ("%s.log" % path.name))
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


CONVERSATION = [
    (b"set k 5 0 3\r\nabc\r\n", b"\r\n"),
    (b"get k missing\r\n", b"END\r\n"),
    (b"add k 0 0 1\r\nx\r\n", b"\r\n"),
    (b"incr n 1\r\n", b"\r\n"),
    (b"set n 0 0 1\r\n7\r\n", b"\r\n"),
    (b"incr n 5\r\n", b"\r\n"),
    (b"mg k v f\r\n", b"\r\n"),
    (b"ms m 2 T0\r\nhi\r\n", b"\r\n"),
    (b"mg m v\r\n", b"\r\n"),
    (b"delete k\r\n", b"\r\n"),
    (b"get k\r\n", b"END\r\n"),
    (b"bogus\r\n", b"\r\n"),
]


def converse(server: UnixServer) -> list:
    with server.connect() as s:
        replies = []
        for request, ends in CONVERSATION:
            s.sendall(request)
            out = b""
            while not out.endswith(ends):
                chunk = s.recv(65536)
                assert chunk, "closed after %r (got %r)" % (request, out)
                out += chunk
            replies.append(out)
        return replies


def test_unix_socket_answers_as_memcached_does(unix_servers):
    mc = unix_servers("memcached")
    mr = unix_servers("memroute")
    assert converse(mr) == converse(mc)


def test_unix_socket_mode_and_tcp_off(unix_servers):
    port = free_port()
    mc = unix_servers("memcached", "-a", "660", "-l", HOST, "-p", str(port))
    mr = unix_servers("memroute", "-a", "660", "-l", HOST, "-p", str(port))
    for server in (mc, mr):
        st = os.stat(server.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    # As in memcached, -s turns TCP off even with -l and -p.
    with pytest.raises(OSError):
        RawClient(HOST, port, timeout=1).close()
    default = unix_servers("memroute")
    assert stat.S_IMODE(os.stat(default.path).st_mode) == 0o700
    assert b"STAT domain_socket %s\r\n" % str(mr.path).encode() in mr.request(
        b"stats settings\r\n", b"END\r\n")


def test_unix_socket_file_outlives_shutdown_and_is_reused(unix_servers):
    mc = unix_servers("memcached")
    mr = unix_servers("memroute")
    assert mc.stop() == 0 and mr.stop() == 0
    # memcached leaves its socket file behind; so does memroute, and the
    # next start on the same path replaces it.
    assert stat.S_ISSOCK(os.stat(mc.path).st_mode)
    assert stat.S_ISSOCK(os.stat(mr.path).st_mode)
    again = UnixServer([str(_require_memroute()), "-s", str(mr.path)], mr.path,
                       mr.log.with_suffix(".again"))
    try:
        assert again.request(b"version\r\n").startswith(b"VERSION ")
    finally:
        assert again.stop() == 0


def test_unix_socket_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    result = run_memroute_expect_failure(["-s", str(path)])
    assert result.returncode != 0
    assert "cannot listen on UNIX socket" in result.stderr, result.stderr
    assert path.read_text() == "keep me"


def test_unix_socket_takes_the_untagged_routes(backends, unix_servers, startfile_dir):
    a, c = backends(2)
    path = write_startfile(startfile_dir, "tags.lua", lua_pools(pa=a, pc=c) + """
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pc)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pa, "aa")
end
""")
    mr = unix_servers("memroute", "--config", str(path))
    assert mr.request(b"set k 0 0 2\r\nvu\r\n") == b"STORED\r\n"
    assert mc_get(c, "k") == b"vu" and mc_get(a, "k") is None
    assert mr.request(b"get k\r\n", b"END\r\n") == b"VALUE k 0 2\r\nvu\r\nEND\r\n"


def test_tls_covers_tagged_listeners_not_the_unix_socket(certs, servers, backends, startfile_dir,
                                                         tmp_path, unix_servers):
    """Under -Z a tagged listener speaks TLS and keeps its tag's routes;
    the UNIX socket stays plain, as memcached serves its own."""
    from test_tls import TlsClient, client_context, start, tls_args, tls_probe

    a, c = backends(2)
    path = write_startfile(startfile_dir, "tags.lua", lua_pools(pa=a, pc=c) + """
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pc)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.pa, "aa")
end
""")
    ctx = client_context(certs)
    port_a = free_port()
    mr = start(tls_args(certs, "--config", str(path), *tagged("aa", port_a)), tmp_path,
               tls_probe(ctx))
    servers.append(mr)
    with TlsClient(port_a, ctx) as client:
        assert client.request(b"set k 0 0 3\r\ntls\r\n") == b"STORED\r\n"
    with TlsClient(mr.port, ctx) as client:
        assert client.request(b"set u 0 0 3\r\ntls\r\n") == b"STORED\r\n"
    assert mc_get(a, "k") == b"tls" and mc_get(c, "u") == b"tls"
    unix = unix_servers("memroute", *tls_args(certs))
    assert unix.request(b"version\r\n").startswith(b"VERSION ")

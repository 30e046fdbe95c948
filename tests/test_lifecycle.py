"""Process-level behaviour expected of a drop-in memcached: the memcached
command-line flags are accepted, and SIGTERM is a graceful shutdown (exit
status 0 within a few seconds), also with clients connected.  Runs against
both servers."""

from __future__ import annotations

import signal
import struct
import subprocess

import pytest

from conftest import STOP_TIMEOUT, RawClient, _factory, _server_kinds, stats_dict


@pytest.mark.parametrize("kind", _server_kinds())
def test_memcached_cli_flags_accepted(kind, server_workdir):
    f = _factory(kind, server_workdir)
    try:
        h = f("-t", "2", "-m", "64", "-c", "128", "-v")
        with h.client() as c:
            c.send(b"set a 0 0 1\r\nx\r\nget a\r\n")
            assert c.read_until(b"END\r\n") == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
    finally:
        f.stop_all()  # asserts exit status 0 after SIGTERM


@pytest.mark.parametrize("kind", _server_kinds())
def test_sigterm_with_connected_clients_exits_0(kind, server_workdir):
    f = _factory(kind, server_workdir)
    h = f()
    idle = [RawClient(h.host, h.port) for _ in range(5)]
    busy = RawClient(h.host, h.port)
    try:
        for c in idle:
            c.assert_alive()
        busy.send(b"set half 0 0 10\r\n01234")  # mid-request
        h.proc.send_signal(signal.SIGTERM)
        try:
            rc = h.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("%s did not exit within %ss of SIGTERM" % (kind, STOP_TIMEOUT))
        assert rc == 0, h.stderr_tail()
        # every client sees the connection closed
        for c in idle + [busy]:
            c.wait_closed(STOP_TIMEOUT)
    finally:
        for c in idle + [busy]:
            c.close()
        f.stop_all()


@pytest.mark.parametrize("kind", _server_kinds())
def test_protocol_flag(kind, server_workdir):
    """`-B ascii` serves text only; `-B binary` serves binary only, and a text
    request ends the connection; the default serves both."""
    noop = struct.pack(">BBHBBHIIQ", 0x80, 0x0a, 0, 0, 0, 0, 0, 7, 0)
    f = _factory(kind, server_workdir)
    try:
        text = f("-B", "ascii")
        with text.client() as c:
            c.send(b"set a 0 0 1\r\nx\r\nget a\r\n")
            assert c.read_until(b"END\r\n") == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
            assert stats_dict(c, b"settings")["binding_protocol"] == "ascii"
        binary = f("-B", "binary")
        with binary.client() as c:
            c.send(noop)
            reply = c.read_exact(24)
            assert reply[:2] == b"\x81\x0a" and reply[12:16] == struct.pack(">I", 7)
        with binary.client() as c:
            # (memcached reads a whole 24-byte header before it checks)
            c.send(b"version\r\n" * 3)
            c.wait_closed(5)
        both = f()
        with both.client() as c:
            c.send(noop)
            assert c.read_exact(24)[:2] == b"\x81\x0a"
        with both.client() as c:
            c.send(b"version\r\n")
            assert c.read_until(b"\r\n").startswith(b"VERSION ")
            assert stats_dict(c, b"settings")["binding_protocol"] == "auto-negotiate"
    finally:
        f.stop_all()


def test_sigterm_ends_a_worker_held_by_a_lua_route_that_never_returns(memroute_factory,
                                                                      startfile_dir):
    """A route stuck in a Lua loop holds its worker (Lua cannot be
    interrupted), but SIGTERM still ends the process: the server waits the
    shutdown timeout and a 5 s grace for its workers, then ends without the
    stuck one, with an error naming it (exit 1). It waited for ever, and only
    SIGKILL stopped it."""
    import time
    from conftest import write_startfile
    path = write_startfile(startfile_dir, "loop.lua", """
function mcp_config_pools() return {} end
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        if r:key() == "loop" then
            while true do end
        end
        return "SERVER_ERROR not looping"
    end)
end
""")
    mr = memroute_factory("--config", str(path), "-t", "1", "--shutdown-timeout", "1")
    with mr.client() as c:
        assert c.request(b"get other\r\n") == b"SERVER_ERROR not looping\r\n"
        c.send(b"get loop\r\n")
        time.sleep(0.2)
        started = time.monotonic()
        mr.proc.send_signal(signal.SIGTERM)
        try:
            rc = mr.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("memroute did not exit within 20 s of SIGTERM\n" + mr.stderr_tail())
        took = time.monotonic() - started
    mr.stop(expect_clean=False)
    assert rc == 1, mr.stderr_tail()
    assert 5 <= took < 15, took
    assert "did not stop within the shutdown timeout" in mr.stderr_tail()

"""Client authentication: memcached's text-protocol auth file (-Y) and
binary SASL PLAIN (-S), over raw sockets.

The text conversation is t/ascii-auth.t's, run against the real memcached
(Debian's, which has -Y built in) and memroute alike: the replies must be
the same bytes. SASL follows t/binary-sasl.t's status codes (0x20 auth
error, 0x21 continue); memcached's SASL needs Cyrus SASL and a sasldb, so
it is checked against memroute only.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (HOST, ServerHandle, _RUNNING, _require_memroute, free_port,
                      memcached_bin, missing)

pytestmark = pytest.mark.timeout(120)

AUTHFILE = "foo:bar\nbaaaz:quux\n"


def start(binary: str, args, workdir: Path, probe, kind: str = "memroute",
          env=None) -> ServerHandle:
    port = free_port()
    if kind == "memcached":
        argv = [binary, "-U", "0", "-l", HOST, "-p", str(port)]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        argv += list(args)
    else:
        argv = [binary, "-l", HOST, "-p", str(port), "-t", "2"] + list(args)
    stderr_path = workdir / ("%s-%d.stderr" % (kind, port))
    with open(stderr_path, "wb") as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                cwd=str(workdir), start_new_session=True, env=env)
    handle = ServerHandle(kind, HOST, port, proc, argv, stderr_path)
    _RUNNING.append(handle)
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("%s exited with %s:\n%s"
                                 % (kind, proc.returncode, handle.stderr_tail()))
        try:
            if probe(port):
                return handle
        except OSError as e:
            last = e
        time.sleep(0.05)
    handle.stop(expect_clean=False)
    raise AssertionError("did not become ready: %r\n%s" % (last, handle.stderr_tail()))


@pytest.fixture
def servers():
    started = []
    yield started
    for h in reversed(started):
        h.terminate()
    for h in reversed(started):
        h.stop()


class Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def read_until(self, terminator: bytes) -> bytes:
        while terminator not in self.buf:
            if not self.fill():
                raise EOFError("closed after %r" % self.buf)
        i = self.buf.index(terminator) + len(terminator)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError("closed after %r" % self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self, data: bytes) -> bytes:
        self.send(data)
        return self.read_until(b"\r\n")

    def closed(self) -> bool:
        """Whether the server closed the connection (after what it sent)."""
        self.sock.settimeout(5)
        while self.fill():
            pass
        return True

    def stats(self, group: bytes = b"") -> dict:
        self.send(b"stats" + (b" " + group if group else b"") + b"\r\n")
        raw = self.read_until(b"END\r\n")
        return {p[1].decode(): p[2].decode() for p in
                (line.split(b" ", 2) for line in raw.split(b"\r\n")) if len(p) == 3}


def unauth_probe(port: int) -> bool:
    c = Conn(port)
    try:
        return c.line(b"version\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
    finally:
        c.close()


# --------------------------------------------------------------------------
# text protocol: -Y
# --------------------------------------------------------------------------


def text_conversation(port: int) -> list:
    """t/ascii-auth.t's conversation, plus a few of memcached's other
    replies; returns every reply. Each send draws one reply: memcached
    1.6.18 keeps only the last of two auth replies made from one read."""
    out = []
    c = Conn(port)
    out.append(c.line(b"set foo 0 0 2\r\nhi\r\n"))  # a write: refused
    out.append(c.line(b"get foo\r\n"))  # a read: refused
    out.append(c.line(b"stats\r\n"))
    out.append(c.line(b"quit\r\n"))  # refused too, and the connection stays
    out.append(c.line(b"set foo 0 0 7\r\nfoo bab\r\n"))  # wrong password
    out.append(c.line(b"set foo 0 0 7\r\nfoo bar\r\n"))  # authenticated
    out.append(c.line(b"set toast 0 0 2\r\nhi\r\n"))
    c.send(b"get toast\r\n")
    out.append(c.read_until(b"END\r\n"))
    c.close()
    # A second connection, the other user; a command pipelined after the
    # token.
    c2 = Conn(port)
    c2.send(b"set foo 0 0 10\r\nbaaaz quux\r\nset toast2 0 0 2\r\nho\r\nget toast2\r\n")
    out.append(c2.read_until(b"END\r\n"))
    c2.close()
    # A token block not ending in \r\n.
    c3 = Conn(port)
    c3.send(b"set foo 0 0 5\r\nfoo\r\n")
    out.append(c3.line(b"x\r\n"))
    c3.close()
    return out


def test_text_auth_matches_memcached(tmp_path, servers):
    authfile = tmp_path / "authfile"
    authfile.write_text(AUTHFILE)
    replies = {}
    kinds = [("memroute", str(_require_memroute()))]
    if memcached_bin():
        kinds.append(("memcached", memcached_bin()))
    for kind, binary in kinds:
        h = start(binary, ["-Y", str(authfile)], tmp_path, unauth_probe, kind=kind)
        servers.append(h)
        replies[kind] = text_conversation(h.port)
    got = replies["memroute"]
    assert got == [
        b"CLIENT_ERROR bad authentication token format\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
        b"CLIENT_ERROR authentication failure\r\n",
        b"STORED\r\n",
        b"STORED\r\n",
        b"VALUE toast 0 2\r\nhi\r\nEND\r\n",
        b"STORED\r\nSTORED\r\nVALUE toast2 0 2\r\nho\r\nEND\r\n",
        b"CLIENT_ERROR bad command line termination\r\n",
    ]
    if "memcached" in replies:
        assert got == replies["memcached"]
    else:
        missing("memcached not installed: text auth checked against memroute only")


def test_text_auth_counts_settings_and_reload(tmp_path, servers):
    authfile = tmp_path / "authfile"
    authfile.write_text(AUTHFILE)
    h = start(str(_require_memroute()), ["-v", "-Y", str(authfile)], tmp_path, unauth_probe)
    servers.append(h)
    c = Conn(h.port)
    assert c.line(b"set a 0 0 7\r\nfoo bad\r\n") == b"CLIENT_ERROR authentication failure\r\n"
    assert c.line(b"set a 0 0 7\r\nfoo bar\r\n") == b"STORED\r\n"
    stats = c.stats()
    assert (stats["auth_cmds"], stats["auth_errors"]) == ("2", "1")
    settings = c.stats(b"settings")
    assert settings["auth_enabled_ascii"] == str(authfile)
    assert settings["auth_enabled_sasl"] == "no"
    assert settings["binding_protocol"] == "ascii"
    # SIGHUP reads the file again: the new password works on new connections.
    authfile.write_text("foo:newpass\n")
    os.kill(h.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while b"password file reloaded" not in h.stderr_path.read_bytes():
        assert time.monotonic() < deadline, h.stderr_tail()
        time.sleep(0.05)
    c2 = Conn(h.port)
    assert c2.line(b"set a 0 0 7\r\nfoo bar\r\n") == b"CLIENT_ERROR authentication failure\r\n"
    assert c2.line(b"set a 0 0 11\r\nfoo newpass\r\n") == b"STORED\r\n"
    # A file that cannot be read keeps the users loaded.
    authfile.write_text("no colon here\n")
    os.kill(h.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while b"password file reload failed" not in h.stderr_path.read_bytes():
        assert time.monotonic() < deadline, h.stderr_tail()
        time.sleep(0.05)
    c3 = Conn(h.port)
    assert c3.line(b"set a 0 0 11\r\nfoo newpass\r\n") == b"STORED\r\n"
    # The connection authenticated before the reloads stays authenticated.
    assert c.line(b"mn\r\n") == b"MN\r\n"
    # stats reset zeroes the counters.
    assert c.line(b"stats reset\r\n") == b"RESET\r\n"
    assert c.stats()["auth_cmds"] == "0"
    for conn in (c, c2, c3):
        conn.close()


def test_text_auth_closes_a_long_line_and_a_huge_token(tmp_path, servers):
    authfile = tmp_path / "authfile"
    authfile.write_text(AUTHFILE)
    h = start(str(_require_memroute()), ["-Y", str(authfile)], tmp_path, unauth_probe)
    servers.append(h)
    c = Conn(h.port)
    c.send(b"x" * 3000)
    assert c.closed() and c.buf == b""
    c = Conn(h.port)
    c.send(b"set a 0 0 1000000\r\n")
    assert c.closed() and c.buf == b""


def test_auth_start_errors(tmp_path):
    binary = str(_require_memroute())

    def run(*args: str, env=None) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-l", HOST, "-p", str(free_port())] + list(args),
                              capture_output=True, timeout=30, env=env)

    authfile = tmp_path / "authfile"
    authfile.write_text(AUTHFILE)
    for args, code, says in [
        (["-Y", str(tmp_path / "missing")], 1, b"missing"),
        (["-Y", str(authfile), "-B", "binary"], 2, b"-Y authenticates the text"),
        (["-S", "--sasl-pwdb", str(authfile), "-B", "ascii"], 2, b"-S authenticates the binary"),
        (["-S", "--sasl-pwdb", str(authfile), "-B", "auto"], 2, b"-S authenticates the binary"),
        (["-Y", str(authfile), "-S"], 2, b"give one"),
    ]:
        proc = run(*args)
        assert proc.returncode == code and says in proc.stderr, (args, proc.stderr)
    env = {k: v for k, v in os.environ.items() if k != "MEMCACHED_SASL_PWDB"}
    proc = run("-S", env=env)
    assert proc.returncode == 2 and b"MEMCACHED_SASL_PWDB" in proc.stderr
    bad = tmp_path / "bad"
    bad.write_text("foo:bar\njunk\n")
    proc = run("-Y", str(bad))
    assert proc.returncode == 1 and b"line 2" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------
# binary SASL: -S
# --------------------------------------------------------------------------

GET, SET, VERSION, STAT = 0x00, 0x01, 0x0B, 0x10
LIST_MECHS, AUTH, STEP = 0x20, 0x21, 0x22
AUTH_ERROR, AUTH_CONTINUE = 0x20, 0x21


def packet(op: int, key: bytes = b"", value: bytes = b"", extras: bytes = b"",
           opaque: int = 0xABCD) -> bytes:
    return struct.pack(">BBHBBHIIQ", 0x80, op, len(key), len(extras), 0, 0,
                       len(extras) + len(key) + len(value), opaque, 0) + extras + key + value


def reply(c: Conn):
    head = c.read_exact(24)
    magic, op, keylen, extlen, _, status, bodylen, opaque, _ = struct.unpack(">BBHBBHIIQ", head)
    assert magic == 0x81 and opaque == 0xABCD
    body = c.read_exact(bodylen)
    return op, status, body[extlen + keylen:], body[extlen:extlen + keylen]


def sasl_probe(port: int) -> bool:
    c = Conn(port)
    try:
        c.send(packet(VERSION))
        return reply(c)[1] == 0
    finally:
        c.close()


def binary_stats(c: Conn, group: bytes = b"") -> dict:
    c.send(packet(STAT, key=group))
    out = {}
    while True:
        _, status, value, key = reply(c)
        assert status == 0
        if not key:
            return out
        out[key.decode()] = value.decode()


@pytest.fixture
def pwdb(tmp_path) -> Path:
    p = tmp_path / "sasl-pwdb"
    p.write_text("testuser:testpass\n")
    return p


def test_sasl_plain(tmp_path, servers, pwdb):
    h = start(str(_require_memroute()), ["-S", "--sasl-pwdb", str(pwdb)], tmp_path, sasl_probe)
    servers.append(h)
    c = Conn(h.port)
    c.send(packet(LIST_MECHS))
    assert reply(c)[1:3] == (0, b"PLAIN")
    c.send(packet(VERSION))
    assert reply(c)[1] == 0
    # A mechanism name over 32 bytes is invalid (0x04), and not counted.
    c.send(packet(AUTH, b"X" * 40, b"\0testuser\0testpass"))
    assert reply(c)[1] == 0x04
    c.send(packet(AUTH, b"CRAM-MD5", b"x"))
    assert reply(c)[1:3] == (AUTH_ERROR, b"Auth failure.")
    c.send(packet(AUTH, b"PLAIN", b"\0testuser\0wrongpassword"))
    assert reply(c)[1:3] == (AUTH_ERROR, b"Auth failure.")
    c.send(packet(AUTH, b"PLAIN", b"\0testuser\0testpass"))
    assert reply(c)[1:3] == (0, b"Authenticated")
    c.send(packet(SET, b"x", b"somevalue", extras=struct.pack(">II", 0, 0)))
    assert reply(c)[1] == 0
    c.send(packet(GET, b"x"))
    op, status, value, _ = reply(c)
    assert (status, value) == (0, b"somevalue")
    stats = binary_stats(c)
    assert (stats["auth_cmds"], stats["auth_errors"]) == ("3", "2")
    settings = binary_stats(c, b"settings")
    assert settings["auth_enabled_sasl"] == "yes"
    assert settings["binding_protocol"] == "binary"
    c.close()


def test_sasl_unauthenticated_requests_are_refused_and_closed(tmp_path, servers, pwdb):
    h = start(str(_require_memroute()), ["-S", "--sasl-pwdb", str(pwdb)], tmp_path, sasl_probe)
    servers.append(h)
    for request in (packet(SET, b"x", b"v", extras=bytes(8)), packet(GET, b"x"),
                    packet(STAT), packet(0x0A)):  # NOOP
        c = Conn(h.port)
        c.send(request)
        assert reply(c)[1:3] == (AUTH_ERROR, b"Auth failure.")
        assert c.closed() and c.buf == b""
    # A failed attempt leaves the connection open but unauthenticated.
    c = Conn(h.port)
    c.send(packet(AUTH, b"PLAIN", b"\0testuser\0nope"))
    assert reply(c)[1] == AUTH_ERROR
    c.send(packet(GET, b"x"))
    assert reply(c)[1] == AUTH_ERROR
    assert c.closed()
    # The text protocol is not spoken: the connection closes.
    c = Conn(h.port)
    c.send(b"get x\r\n")
    assert c.closed() and c.buf == b""
    # Nothing reached the cache.
    c = Conn(h.port)
    c.send(packet(AUTH, b"PLAIN", b"\0testuser\0testpass"))
    assert reply(c)[1] == 0
    c.send(packet(GET, b"x"))
    assert reply(c)[1] == 0x01  # not found


def test_sasl_two_step_plain_and_env_pwdb(tmp_path, servers, pwdb):
    env = dict(os.environ, MEMCACHED_SASL_PWDB=str(pwdb))
    h = start(str(_require_memroute()), ["-S"], tmp_path, sasl_probe, env=env)
    servers.append(h)
    c = Conn(h.port)
    # STEP before AUTH fails.
    c.send(packet(STEP, b"PLAIN", b"\0testuser\0testpass"))
    assert reply(c)[1] == AUTH_ERROR
    # AUTH with no data continues (0x21), STEP carries the credentials.
    c.send(packet(AUTH, b"PLAIN"))
    assert reply(c)[1:3] == (AUTH_CONTINUE, b"")
    c.send(packet(STEP, b"PLAIN", b"testuser\0testuser\0testpass"))
    assert reply(c)[1:3] == (0, b"Authenticated")
    c.send(packet(VERSION))
    assert reply(c)[1] == 0
    c.close()


def test_text_auth_over_tls(tmp_path, servers):
    """-Y and -Z together: the token travels inside the TLS session."""
    tls = pytest.importorskip("test_tls")
    d = tmp_path / "certs"
    d.mkdir()
    tls.make_ca(d, "ca")
    tls.make_cert(d, "server", "localhost", 77, san="DNS:localhost,IP:127.0.0.1")
    authfile = tmp_path / "authfile"
    authfile.write_text(AUTHFILE)
    ctx = tls.client_context(d)

    def probe(port: int) -> bool:
        with tls.TlsClient(port, ctx, timeout=1.0) as c:
            return c.request(b"version\r\n") == b"CLIENT_ERROR unauthenticated\r\n"

    h = start(str(_require_memroute()), ["-Y", str(authfile)] + tls.tls_args(d), tmp_path, probe)
    servers.append(h)
    with tls.TlsClient(h.port, ctx) as c:
        assert c.request(b"get k\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
        assert c.request(b"set k 0 0 7\r\nfoo bar\r\n") == b"STORED\r\n"
        assert c.request(b"set k 0 0 1\r\nv\r\nget k\r\n", b"END\r\n") == \
            b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"

"""TLS: memroute's client-facing TLS (-Z, -o ssl_*), certificate reload on
SIGHUP, client certificates (verify modes, r:tls_peer_cn()) and TLS to
backends (mcp.init_tls, mcp.backend{tls = true}).

Certificates are made for each test run with the openssl CLI (Debian's
openssl) in a temporary directory: a test CA, a server certificate for
localhost / 127.0.0.1, a client certificate, and a second CA that signed
nothing memroute serves (for the failing verifications). No key is ever
committed.

Clients: Python's ssl module (raw get/set), pymemcache with `tls_context=`,
and `openssl s_client`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import (HOST, STOP_TIMEOUT, Closed, RawClient, ReadTimeout, ServerHandle,
                      _RUNNING, _require_memroute, free_port, missing, write_startfile)

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        missing("openssl CLI not installed (apt-get install openssl)")
    subprocess.run(["openssl", *args], cwd=str(cwd), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
            "-out", name + ".pem", "-days", "2", "-subj", "/CN=" + name, cwd=d)


def make_cert(d: Path, name: str, cn: str, serial: int, ca: str = "ca",
              san: Optional[str] = None) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
            "-out", name + ".csr", "-subj", "/CN=" + cn, cwd=d)
    ext = d / (name + ".ext")
    ext.write_text("subjectAltName=%s\n" % san if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-set_serial", str(serial), "-days", "2", "-extfile", ext.name,
            "-out", name + ".pem", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "localhost", 1001, san="DNS:localhost,IP:127.0.0.1")
    make_cert(d, "server2", "localhost", 2002, san="DNS:localhost,IP:127.0.0.1")
    make_cert(d, "client", "client-1", 3003)
    make_cert(d, "stranger", "stranger", 4004, ca="other-ca")
    return d


def client_context(certs: Path, cert: Optional[str] = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(certs / (cert + ".pem")), str(certs / (cert + ".key")))
    return ctx


# --------------------------------------------------------------------------
# memroute with TLS
# --------------------------------------------------------------------------


class TlsClient(RawClient):
    """conftest's RawClient over TLS: the same reads with timeouts, for
    line-oriented memcached conversations."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float = 5.0):
        super().__init__(HOST, port, timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def stats(self, group: bytes = b"") -> dict:
        raw = self.request(b"stats" + (b" " + group if group else b"") + b"\r\n", b"END\r\n")
        out = {}
        for line in raw.split(b"\r\n"):
            parts = line.split(b" ", 2)
            if len(parts) == 3 and parts[0] == b"STAT":
                out[parts[1].decode()] = parts[2].decode()
        return out


def start(args, workdir: Path, probe, name: str = "memroute") -> ServerHandle:
    """Start memroute with ``args`` on a free port; ``probe(port)`` must
    succeed (return truthy) before it counts as started."""
    binary = str(_require_memroute())
    port = free_port()
    argv = [binary, "-l", HOST, "-p", str(port), "-t", "2"] + list(args)
    stderr_path = workdir / ("%s-%d.stderr" % (name, port))
    with open(stderr_path, "wb") as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                cwd=str(workdir), start_new_session=True)
    handle = ServerHandle("memroute", HOST, port, proc, argv, stderr_path)
    _RUNNING.append(handle)
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("memroute exited with %s:\n%s"
                                 % (proc.returncode, handle.stderr_tail()))
        try:
            if probe(port):
                return handle
        except (OSError, ssl.SSLError, Closed, ReadTimeout) as e:
            last = e
        time.sleep(0.05)
    handle.stop(expect_clean=False)
    raise AssertionError("memroute did not become ready: %r\n%s" % (last, handle.stderr_tail()))


def tls_probe(ctx: ssl.SSLContext):
    def probe(port: int) -> bool:
        with TlsClient(port, ctx, timeout=1.0) as c:
            return c.request(b"version\r\n").startswith(b"VERSION ")
    return probe


def plain_probe(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1.0) as s:
        s.sendall(b"version\r\n")
        return s.recv(100).startswith(b"VERSION ")


@pytest.fixture
def servers():
    """Every memroute a test starts, stopped (by pid) at its end; each must
    exit cleanly on SIGTERM."""
    started = []
    yield started
    for h in reversed(started):
        h.terminate()
    for h in reversed(started):
        h.stop()


def tls_args(certs: Path, *extra: str, cert: str = "server") -> list:
    return ["-Z", "-o", "ssl_chain_cert=%s,ssl_key=%s" % (certs / (cert + ".pem"),
                                                           certs / (cert + ".key"))] + list(extra)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


# --------------------------------------------------------------------------
# clients over TLS
# --------------------------------------------------------------------------


def test_python_ssl_get_set_and_settings(certs, workdir, servers):
    ctx = client_context(certs)
    h = start(tls_args(certs), workdir, tls_probe(ctx))
    servers.append(h)
    with TlsClient(h.port, ctx) as c:
        assert c.request(b"set k 5 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert c.request(b"get k\r\n", b"END\r\n") == b"VALUE k 5 5\r\nhello\r\nEND\r\n"
        # A value larger than one TLS record, pipelined with more requests.
        big = os.urandom(200_000).hex().encode()[:300_000]
        c.send(b"set big 0 0 %d\r\n%s\r\nget big\r\nmn\r\n" % (len(big), big))
        assert c.read_until(b"\r\n") == b"STORED\r\n"
        assert c.read_until(b"MN\r\n") == b"VALUE big 0 %d\r\n%s\r\nEND\r\nMN\r\n" % (len(big), big)
        settings = c.stats(b"settings")
        assert settings["ssl_enabled"] == "yes"
        assert settings["ssl_chain_cert"] == str(certs / "server.pem")
        assert settings["ssl_key"] == str(certs / "server.key")
        assert settings["ssl_verify_mode"] == "0"
        assert settings["ssl_ca_cert"] == "NULL"
        assert settings["ssl_min_version"] == "tlsv1.2"
        stats = c.stats()
        assert stats["ssl_handshake_errors"] == "0"
        assert int(stats["time_since_server_cert_refresh"]) >= 0
    # A plaintext client gets nothing and counts as a failed handshake.
    with socket.create_connection((HOST, h.port), timeout=5) as s:
        s.sendall(b"version\r\n")
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        assert not got.startswith(b"VERSION")
    with TlsClient(h.port, ctx) as c:
        deadline = time.monotonic() + 5
        while c.stats()["ssl_handshake_errors"] == "0" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.stats()["ssl_handshake_errors"] == "1"


def test_tls13_only_and_binary_protocol(certs, workdir, servers):
    ctx = client_context(certs)
    h = start(tls_args(certs, "-o", "ssl_min_version=3"), workdir, tls_probe(ctx))
    servers.append(h)
    with TlsClient(h.port, ctx) as c:
        assert c.sock.version() == "TLSv1.3"
        assert c.stats(b"settings")["ssl_min_version"] == "tlsv1.3"
    old = client_context(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        TlsClient(h.port, old).request(b"version\r\n")
    # The binary protocol over TLS: VERSION.
    with TlsClient(h.port, ctx) as c:
        c.send(bytes([0x80, 0x0b]) + bytes(22))
        head = b""
        while len(head) < 24:
            head += c.sock.recv(24 - len(head))
        assert head[:2] == b"\x81\x0b" and head[6:8] == b"\x00\x00"


def test_pymemcache_with_tls_context(certs, workdir, servers):
    pymemcache = pytest.importorskip("pymemcache.client.base")
    ctx = client_context(certs)
    h = start(tls_args(certs), workdir, tls_probe(ctx))
    servers.append(h)
    client = pymemcache.Client((HOST, h.port), tls_context=ctx, connect_timeout=5, timeout=5)
    try:
        assert client.set("greeting", b"hello over tls", noreply=False)
        assert client.get("greeting") == b"hello over tls"
        assert client.get_many(["greeting", "missing"]) == {"greeting": b"hello over tls"}
        assert client.incr("n", 1) is None
        client.set("n", b"41", noreply=False)
        assert client.incr("n", 1) == 42
        assert client.delete("greeting", noreply=False)
    finally:
        client.close()


def test_openssl_s_client(certs, workdir, servers):
    if not shutil.which("openssl"):
        missing("openssl CLI not installed")
    ctx = client_context(certs)
    h = start(tls_args(certs), workdir, tls_probe(ctx))
    servers.append(h)
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", "%s:%d" % (HOST, h.port), "-CAfile",
         str(certs / "ca.pem"), "-verify_return_error", "-quiet", "-servername", "localhost"],
        input=b"set sc 0 0 3\r\nabc\r\nget sc\r\nquit\r\n", capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"STORED\r\nVALUE sc 0 3\r\nabc\r\nEND\r\n", proc.stdout
    # A client trusting another CA refuses memroute's certificate.
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", "%s:%d" % (HOST, h.port), "-CAfile",
         str(certs / "other-ca.pem"), "-verify_return_error", "-quiet"],
        input=b"version\r\n", capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert b"VERSION" not in proc.stdout


# --------------------------------------------------------------------------
# client certificates
# --------------------------------------------------------------------------

CN_STARTFILE = """
function mcp_config_pools()
    return {}
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_GET, function(r)
        return "SERVER_ERROR cn=" .. (r:tls_peer_cn() or "none")
    end)
end
"""


def no_reply(port: int, ctx: ssl.SSLContext) -> bool:
    """True when a TLS client gets no reply to `version` (the handshake or
    the first read fails: with TLS 1.3 the server checks the client's
    certificate after the client thinks the handshake is done)."""
    try:
        with TlsClient(port, ctx) as c:
            c.request(b"version\r\n")
    except (ssl.SSLError, Closed, ConnectionResetError, BrokenPipeError):
        return True
    return False


def test_client_certificate_required(certs, workdir, servers):
    startfile = write_startfile(workdir, "cn.lua", CN_STARTFILE)
    with_cert = client_context(certs, "client")
    h = start(tls_args(certs, "-o", "ssl_verify_mode=2,ssl_ca_cert=%s" % (certs / "ca.pem"),
                       "--config", str(startfile)), workdir, tls_probe(with_cert))
    servers.append(h)
    with TlsClient(h.port, with_cert) as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR cn=client-1\r\n"
        assert c.stats(b"settings")["ssl_verify_mode"] == "3"
    # No certificate, or one from a CA memroute does not trust: refused.
    assert no_reply(h.port, client_context(certs))
    assert no_reply(h.port, client_context(certs, "stranger"))
    with TlsClient(h.port, with_cert) as c:
        assert int(c.stats()["ssl_handshake_errors"]) >= 2


def test_client_certificate_requested(certs, workdir, servers):
    startfile = write_startfile(workdir, "cn.lua", CN_STARTFILE)
    h = start(["--tls-verify-mode", "1", "--tls-ca", str(certs / "ca.pem"),
               "--config", str(startfile)] + tls_args(certs), workdir,
              tls_probe(client_context(certs)))
    servers.append(h)
    with TlsClient(h.port, client_context(certs)) as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR cn=none\r\n"
    with TlsClient(h.port, client_context(certs, "client")) as c:
        assert c.request(b"get k\r\n") == b"SERVER_ERROR cn=client-1\r\n"
    # A certificate that is sent is checked.
    assert no_reply(h.port, client_context(certs, "stranger"))


FUNCGEN_CN_STARTFILE = """
function mcp_config_pools()
    return {}
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    fgen:ready({ n = "cn", f = function(rctx)
        return function(r)
            return "SERVER_ERROR cn=" .. (r:tls_peer_cn() or "none")
        end
    end })
    mcp.attach(mcp.CMD_GET, fgen)
end
"""


def test_a_funcgen_slot_reused_by_another_client_sees_its_certificate(certs, workdir, servers):
    """A funcgen slot keeps its request object from request to request, and
    from client to client: each request sees its own client's certificate.
    Clients with and without one take turns, one request at a time, in a
    pattern (with, without, without) that makes each of the two workers
    serve both kinds one after the other on its one slot."""
    startfile = write_startfile(workdir, "fgen-cn.lua", FUNCGEN_CN_STARTFILE)
    h = start(["--tls-verify-mode", "1", "--tls-ca", str(certs / "ca.pem"),
               "--config", str(startfile)] + tls_args(certs), workdir,
              tls_probe(client_context(certs)))
    servers.append(h)
    for _ in range(3):
        for cert, cn in (("client", b"client-1"), (None, b"none"), (None, b"none")):
            with TlsClient(h.port, client_context(certs, cert)) as c:
                assert c.request(b"get k\r\n") == b"SERVER_ERROR cn=%s\r\n" % cn


def test_tls_peer_cn_is_nil_without_tls(workdir, servers):
    startfile = write_startfile(workdir, "cn.lua", CN_STARTFILE)
    h = start(["--config", str(startfile)], workdir, plain_probe)
    servers.append(h)
    with socket.create_connection((HOST, h.port), timeout=5) as s:
        s.sendall(b"get k\r\n")
        assert s.recv(100) == b"SERVER_ERROR cn=none\r\n"


# --------------------------------------------------------------------------
# SIGHUP reload
# --------------------------------------------------------------------------


def serial_seen(port: int, ctx: ssl.SSLContext) -> str:
    with TlsClient(port, ctx) as c:
        assert c.request(b"version\r\n").startswith(b"VERSION")
        return c.sock.getpeercert()["serialNumber"]


def test_sighup_reloads_certificates(certs, workdir, servers):
    live = workdir / "live"
    live.mkdir()
    shutil.copy(certs / "server.pem", live / "cert.pem")
    shutil.copy(certs / "server.key", live / "key.pem")
    ctx = client_context(certs)
    h = start(["-v", "-Z", "--tls-cert", str(live / "cert.pem"),
               "--tls-key", str(live / "key.pem")],
              workdir, tls_probe(ctx))
    servers.append(h)
    assert serial_seen(h.port, ctx) == "03E9"  # 1001
    old = TlsClient(h.port, ctx)
    assert old.request(b"set a 0 0 1\r\nx\r\n") == b"STORED\r\n"

    def reload_and_wait(expect_serial: str, log_line: str) -> None:
        before = h.stderr_tail(100_000).count(log_line)
        os.kill(h.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while h.stderr_tail(100_000).count(log_line) == before:
            assert time.monotonic() < deadline, h.stderr_tail()
            time.sleep(0.05)
        assert serial_seen(h.port, ctx) == expect_serial

    shutil.copy(certs / "server2.pem", live / "cert.pem")
    shutil.copy(certs / "server2.key", live / "key.pem")
    reload_and_wait("07D2", "TLS certificates reloaded")  # 2002
    # The connection made before the reload goes on with its session.
    assert old.request(b"get a\r\n", b"END\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"
    assert old.sock.getpeercert()["serialNumber"] == "03E9"
    old.close()
    # A reload that fails keeps the certificates in use, and says so.
    (live / "cert.pem").write_text("not a certificate\n")
    reload_and_wait("07D2", "TLS reload failed")
    with TlsClient(h.port, ctx) as c:
        assert int(c.stats()["time_since_server_cert_refresh"]) >= 0


def test_bad_certificate_files_stop_the_start(certs, workdir):
    binary = str(_require_memroute())

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-l", HOST, "-p", str(free_port())] + list(args),
                              capture_output=True, timeout=30)

    missing_file = run("-Z", "--tls-cert", str(workdir / "nope.pem"))
    assert missing_file.returncode == 1
    assert b"nope.pem" in missing_file.stderr and b"cannot read" in missing_file.stderr
    mismatch = run("-Z", "--tls-cert", str(certs / "server.pem"),
                   "--tls-key", str(certs / "client.key"))
    assert mismatch.returncode == 1
    assert b"do not make a usable certificate" in mismatch.stderr, mismatch.stderr
    garbage = workdir / "garbage.pem"
    garbage.write_text("hello\n")
    bad = run("-Z", "--tls-cert", str(garbage), "--tls-key", str(certs / "server.key"))
    assert bad.returncode == 1 and b"no certificate" in bad.stderr, bad.stderr
    no_key = run("-Z", "--tls-cert", str(certs / "server.pem"))
    assert no_key.returncode == 1 and b"private key" in no_key.stderr, no_key.stderr
    no_ca = run("-Z", "--tls-cert", str(certs / "server.pem"), "--tls-key",
                str(certs / "server.key"), "--tls-verify-mode", "2")
    assert no_ca.returncode == 1 and b"ssl_ca_cert" in no_ca.stderr, no_ca.stderr
    for args, says in [
        (["-Z"], b"needs a certificate"),
        (["-o", "ssl_chain_cert=%s" % (certs / "server.pem")], b"need -Z"),
        (["-Z", "-o", "ssl_ciphers=HIGH"], b"does not implement"),
        (["-Z", "-o", "ssl_min_version=1"], b"TLS 1.2 and 1.3 only"),
    ]:
        proc = run(*args)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)


# --------------------------------------------------------------------------
# TLS to backends
# --------------------------------------------------------------------------

BACKEND_STARTFILE = """
function mcp_config_pools()
    {init}
    local b = mcp.backend({{ label = "tlsb", host = "127.0.0.1", port = {port},
                            readtimeout = 1, connecttimeout = 1, retrywaittime = 1
                            {backend_opts} }})
    return {{ main = mcp.pool({{ b }}) }}
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_ANY_STORAGE, pools.main)
end
"""


def proxy_startfile(workdir: Path, port: int, init: str, backend_opts: str = "",
                    name: str = "proxy.lua") -> Path:
    return write_startfile(workdir, name, BACKEND_STARTFILE.format(
        init=init, port=port, backend_opts=backend_opts))


@pytest.fixture
def tls_backend(certs, workdir, servers) -> ServerHandle:
    """memroute itself, with -Z, as a TLS-terminating memcached backend."""
    h = start(tls_args(certs), workdir, tls_probe(client_context(certs)), name="backend")
    servers.append(h)
    return h


def proxy_request(port: int, data: bytes, terminator: bytes = b"\r\n") -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while terminator not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def plain_stats(port: int, group: bytes) -> dict:
    raw = proxy_request(port, b"stats " + group + b"\r\n", b"END\r\n")
    return {p[1].decode(): p[2].decode() for p in
            (line.split(b" ", 2) for line in raw.split(b"\r\n")) if len(p) == 3}


def test_backend_tls_verified_against_a_ca_file(certs, workdir, servers, tls_backend):
    startfile = proxy_startfile(workdir, tls_backend.port,
                                'mcp.init_tls({ ca = "%s" })' % (certs / "ca.pem"),
                                ", tls = true")
    proxy = start(["--config", str(startfile)], workdir, plain_probe, name="proxy")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"set viatls 0 0 3\r\nabc\r\n") == b"STORED\r\n"
    assert proxy_request(proxy.port, b"get viatls\r\n", b"END\r\n") == \
        b"VALUE viatls 0 3\r\nabc\r\nEND\r\n"
    # The value is on the backend, read over TLS directly.
    with TlsClient(tls_backend.port, client_context(certs)) as c:
        assert c.request(b"get viatls\r\n", b"END\r\n") == b"VALUE viatls 0 3\r\nabc\r\nEND\r\n"
    backends = plain_stats(proxy.port, b"backends")
    assert backends["tlsb:connect_failures"] == "0"
    assert int(backends["tlsb:connects"]) >= 1


def test_backend_tls_by_default_with_backend_use_tls(certs, workdir, servers, tls_backend):
    init = 'mcp.init_tls({ ca = "%s" }) mcp.backend_use_tls(true)' % (certs / "ca.pem")
    startfile = proxy_startfile(workdir, tls_backend.port, init, ', tls_name = "localhost"')
    proxy = start(["--config", str(startfile)], workdir, plain_probe, name="proxy")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"set d 0 0 1\r\n1\r\n") == b"STORED\r\n"


def test_backend_tls_refuses_a_certificate_from_another_ca(certs, workdir, servers,
                                                           tls_backend):
    startfile = proxy_startfile(workdir, tls_backend.port,
                                'mcp.init_tls({ ca = "%s" })' % (certs / "other-ca.pem"),
                                ", tls = true")
    proxy = start(["--config", str(startfile), "-v"], workdir, plain_probe, name="proxy")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"get k\r\n") == b"SERVER_ERROR backend failure\r\n"
    backends = plain_stats(proxy.port, b"backends")
    assert int(backends["tlsb:connect_failures"]) >= 1
    assert backends["tlsb:connects"] == "0"
    # Verification also fails for a name the certificate does not carry.
    startfile = proxy_startfile(workdir, tls_backend.port,
                                'mcp.init_tls({ ca = "%s" })' % (certs / "ca.pem"),
                                ', tls = true, tls_name = "db.example.com"', name="badname.lua")
    proxy = start(["--config", str(startfile)], workdir, plain_probe, name="proxy2")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"get k\r\n") == b"SERVER_ERROR backend failure\r\n"


def test_backend_tls_verification_can_be_turned_off_explicitly(certs, workdir, servers,
                                                               tls_backend):
    startfile = proxy_startfile(workdir, tls_backend.port,
                                "mcp.init_tls({ verify = false })", ", tls = true")
    proxy = start(["--config", str(startfile)], workdir, plain_probe, name="proxy")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"set nv 0 0 1\r\nz\r\n") == b"STORED\r\n"
    assert b"not verified" in proxy.stderr_path.read_bytes()


def test_backend_tls_against_system_roots_fails_for_a_private_ca(certs, workdir, servers,
                                                                 tls_backend):
    startfile = proxy_startfile(workdir, tls_backend.port, "mcp.init_tls()", ", tls = true")
    proxy = start(["--config", str(startfile)], workdir, plain_probe, name="proxy")
    servers.append(proxy)
    assert proxy_request(proxy.port, b"get k\r\n") == b"SERVER_ERROR backend failure\r\n"


def test_backend_tls_startfile_errors(certs, workdir):
    binary = str(_require_memroute())
    for init, opts, says in [
        ("", ", tls = true", b"needs mcp.init_tls()"),
        ('mcp.init_tls({ ca = "/nonexistent/ca.pem" })', "", b"/nonexistent/ca.pem"),
        ('mcp.init_tls({ bogus = 1 })', "", b"unknown option 'bogus'"),
        ("mcp.init_tls()", ", tls = 1", b"tls must be true or false"),
    ]:
        startfile = proxy_startfile(workdir, 1, init, opts, name="bad.lua")
        proc = subprocess.run([binary, "-l", HOST, "-p", str(free_port()), "--config",
                               str(startfile)], capture_output=True, timeout=30)
        assert proc.returncode == 1 and says in proc.stderr, (init, opts, proc.stderr)

"""Pools whose backends find themselves (`mcp.pool(mcp.discover{...})`),
against a DNS server started here on loopback (dnslib) and a scripted
ElastiCache-style configuration endpoint, in front of real memcached.

Checked: the members a source gives serve the pool; a change in the source
reaches the pool within a period (keys move onto a new member, the change is
logged with the old and new lists); a source that stops answering keeps the
last good members; a pool whose source gives nothing at start stops the
start with its name.
"""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import run_memroute_expect_failure, stats_dict, wait_until, write_startfile

dnslib = pytest.importorskip("dnslib")
from dnslib import QTYPE, RR, SRV, A  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402


class Records(BaseResolver):
    """Answers from a dict the test changes: {(name, "SRV"|"A"): [rdata]}."""

    def __init__(self):
        self.records = {}
        self.lock = threading.Lock()

    def set(self, name, qtype, rdata):
        with self.lock:
            self.records[(name, qtype)] = list(rdata)

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            rdata = list(self.records.get((name, qtype), []))
        for item in rdata:
            reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=item, ttl=1))
        return reply


@pytest.fixture
def dns():
    records = Records()
    server = DNSServer(records, port=0, address="127.0.0.1")
    server.start_thread()
    port = server.server.server_address[1]
    yield records, "127.0.0.1:%d" % port
    server.stop()


def srv_of(servers):
    return [SRV(priority=0, weight=1, port=s.port, target="%s." % s.host) for s in servers]


STARTFILE = """
function mcp_config_pools()
    return { p = mcp.pool(mcp.discover{ %s, every = 0.3 }, { name = "found" }) }
end
function mcp_config_routes(p)
    mcp.attach(mcp.CMD_ANY_STORAGE, p.p)
end
"""


def owner(client, key: str) -> str:
    reply = client.request(b"get __mcrouter__.route(get,%s)\r\n" % key.encode(), b"END\r\n")
    return reply.split(b"\r\n")[1].decode()


def owners(client, n: int = 60) -> set:
    return {owner(client, "k%d" % i) for i in range(n)}


def test_srv_members_follow_the_records(dns, backends, memroute_factory, startfile_dir):
    records, nameserver = dns
    a, b, c = backends(3)
    records.set("_memcache._tcp.cache.test.", "SRV", srv_of([a, b]))
    path = write_startfile(startfile_dir, "srv.lua", STARTFILE % (
        'srv = "_memcache._tcp.cache.test", nameserver = "%s"' % nameserver))
    mr = memroute_factory("--config", str(path))
    with mr.client() as client:
        assert owners(client) == {a.addr, b.addr}
        assert client.request(b"set k1 0 0 1\r\nx\r\n") == b"STORED\r\n"
        records.set("_memcache._tcp.cache.test.", "SRV", srv_of([a, b, c]))
        wait_until(lambda: owners(client) == {a.addr, b.addr, c.addr}, 10,
                   what="the third member")
        # Requests reach the new member, through connections made for it.
        key = next("k%d" % i for i in range(60) if owner(client, "k%d" % i) == c.addr)
        assert client.request(b"set %s 0 0 2\r\nhi\r\n" % key.encode()) == b"STORED\r\n"
        backends_seen = {k.rsplit(":", 1)[0] for k in stats_dict(client, b"backends")}
    with c.client() as direct:
        assert direct.request(b"get %s\r\n" % key.encode(), b"END\r\n") == \
            b"VALUE %s 0 2\r\nhi\r\nEND\r\n" % key.encode()
    assert any(c.addr in name for name in backends_seen), backends_seen
    log = mr.stderr_tail()
    assert "changed from [%s %s] to" % tuple(sorted([a.addr, b.addr])) in log, log


def test_dns_failure_keeps_the_last_members(dns, backends, memroute_factory, startfile_dir):
    records, nameserver = dns
    a, = backends(1)
    records.set("cache.test.", "A", [A(a.host)])
    path = write_startfile(startfile_dir, "a.lua", STARTFILE % (
        'dns = "cache.test:%d", nameserver = "%s"' % (a.port, nameserver)))
    mr = memroute_factory("--config", str(path))
    with mr.client() as client:
        assert owners(client, 5) == {a.addr}
        records.set("cache.test.", "A", [])  # the name stops resolving
        wait_until(lambda: "keeping [%s]" % a.addr in mr.stderr_tail(), 10,
                   what="the failed read logged")
        assert client.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert owners(client, 5) == {a.addr}


class ConfigEndpoint:
    """A scripted ElastiCache configuration endpoint: answers `config get
    cluster` with the members the test sets."""

    def __init__(self):
        self.members = []
        self.version = 1
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def set(self, servers):
        self.members = ["%s|%s|%d" % (s.host, s.host, s.port) for s in servers]
        self.version += 1

    def run(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                if data == b"config get cluster\r\n":
                    body = ("%d\n%s\n" % (self.version, " ".join(self.members))).encode()
                    conn.sendall(b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body))
                else:
                    conn.sendall(b"ERROR\r\n")

    def stop(self):
        self.stopped = True
        self.thread.join(timeout=2)
        self.sock.close()


def test_config_endpoint_members(backends, memroute_factory, startfile_dir):
    a, b = backends(2)
    endpoint = ConfigEndpoint()
    try:
        endpoint.set([a, b])
        path = write_startfile(startfile_dir, "ec.lua", STARTFILE % (
            'endpoint = "%s"' % endpoint.addr))
        mr = memroute_factory("--config", str(path))
        with mr.client() as client:
            assert owners(client) == {a.addr, b.addr}
            endpoint.set([b])
            wait_until(lambda: owners(client) == {b.addr}, 10, what="a member gone")
            assert client.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    finally:
        endpoint.stop()


def test_a_source_with_no_members_stops_the_start(dns, startfile_dir):
    records, nameserver = dns
    path = write_startfile(startfile_dir, "none.lua", STARTFILE % (
        'srv = "_memcache._tcp.nothing.test", nameserver = "%s"' % nameserver))
    result = run_memroute_expect_failure(["--config", str(path)])
    assert result.returncode != 0
    assert "mcp.pool found" in result.stderr and "nothing.test" in result.stderr, result.stderr


@pytest.mark.parametrize("options, message", [
    ('dns = "cache.test"', 'dns must be "name:port"'),
    ('dns = "a:1", srv = "b"', "give one of dns, srv or endpoint"),
    ('every = 1', "give one of dns, srv or endpoint"),
    ('srv = "x", nameserver = "localhost"', 'nameserver must be "ip:port"'),
    ('srv = "x", frobnicate = 1', "unknown option 'frobnicate'"),
])
def test_bad_discovery_options(startfile_dir, options, message):
    path = write_startfile(startfile_dir, "bad.lua", STARTFILE % options)
    result = run_memroute_expect_failure(["--config", str(path)])
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize("every", ["math.huge", "1e300", "1e-300", "0/0", "-1"])
def test_a_refresh_period_out_of_bounds_stops_the_start(startfile_dir, every):
    """`every` must be 0.1 to 86400 seconds: a huge one once panicked the
    config thread at start (and on a reload, leaving every later reload
    failing), a tiny one re-read the source in a tight loop."""
    path = write_startfile(startfile_dir, "every.lua", """
function mcp_config_pools()
    return { p = mcp.pool(mcp.discover{ srv = "x", every = %s }) }
end
function mcp_config_routes(p) mcp.attach(mcp.CMD_ANY_STORAGE, p.p) end
""" % every)
    result = run_memroute_expect_failure(["--config", str(path)])
    assert result.returncode != 0, result.stderr
    assert "every must be a number of seconds from 0.1 to 86400" in result.stderr, result.stderr
    assert "panicked" not in result.stderr, result.stderr


def test_a_replaced_member_and_a_resolver_outage(backends, memroute_factory, startfile_dir):
    a, b, c = backends(3)
    records = Records()
    server = DNSServer(records, port=0, address="127.0.0.1")
    server.start_thread()
    nameserver = "127.0.0.1:%d" % server.server.server_address[1]
    try:
        records.set("_memcache._tcp.swap.test.", "SRV", srv_of([a, b]))
        path = write_startfile(startfile_dir, "swap.lua", STARTFILE % (
            'srv = "_memcache._tcp.swap.test", nameserver = "%s"' % nameserver))
        mr = memroute_factory("--config", str(path))
        with mr.client() as client:
            assert owners(client) == {a.addr, b.addr}
            # b is replaced by c.
            records.set("_memcache._tcp.swap.test.", "SRV", srv_of([a, c]))
            wait_until(lambda: owners(client) == {a.addr, c.addr}, 10, what="b replaced by c")
            # The DNS server goes away: the members stay, requests go on.
            server.stop()
            wait_until(lambda: "keeping [%s %s]" % tuple(sorted([a.addr, c.addr]))
                       in mr.stderr_tail(), 20, what="the outage logged")
            assert owners(client) == {a.addr, c.addr}
            assert client.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    finally:
        server.stop()

"""Shared pytest fixtures for memroute's end-to-end tests.

Everything here talks to real processes over 127.0.0.1 only:

* ``memroute_factory`` / ``memroute``: start the memroute binary
  (``$MEMROUTE_BIN``, else ``target/debug/memroute``) on a free loopback port.
* ``memcached_factory`` / ``memcached``: start Debian's real memcached the
  same way (also usable as proxy backends later).
* ``server``: parametrized over ``["memcached", "memroute"]`` so a test runs
  against both and proves byte-for-byte compatibility.
* ``RawClient``: a tiny raw-socket client (send bytes, read until a
  terminator / regex / EOF, all with timeouts).

Every process is started by us and stopped by its pid (SIGTERM, then SIGKILL
as a last resort); teardown asserts a clean exit (status 0) within a few
seconds.  Each server's stderr goes to a file whose tail is attached to the
report of any failing test that used it.

Environment:
  MEMROUTE_BIN       path to the memroute binary (default target/debug/memroute)
  MEMROUTE_REQUIRE=1 fail (instead of skip) when the memroute binary is missing
  MEMCACHED_BIN      path to memcached (default: found on PATH)
  MEMROUTE_TEST_SERVERS  comma list restricting the ``server`` fixture, e.g.
                     ``memcached`` to run the conversation tables only
                     against the reference server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds to wait for a server to answer `version`
STOP_TIMEOUT = 5.0  # seconds a server gets to exit after SIGTERM
IO_TIMEOUT = 3.0  # default per-read timeout of RawClient

SERVER_KINDS = ("memcached", "memroute")


# --------------------------------------------------------------------------
# binaries
# --------------------------------------------------------------------------


def memroute_bin() -> Optional[Path]:
    """The memroute binary to test, or None when it does not exist."""
    env = os.environ.get("MEMROUTE_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "memroute"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path if path.is_file() and os.access(path, os.X_OK) else None


def memcached_bin() -> Optional[str]:
    return os.environ.get("MEMCACHED_BIN") or shutil.which("memcached")


def _require_memroute() -> Path:
    path = memroute_bin()
    if path is None:
        msg = (
            "memroute binary not found (set MEMROUTE_BIN or run "
            "`cargo build`; looked for %s)"
            % (os.environ.get("MEMROUTE_BIN") or "target/debug/memroute")
        )
        missing(msg)
    return path


def missing(msg: str) -> None:
    """A test's tool is missing: skip, or fail under MEMROUTE_REQUIRE=1 (the
    README's test command installs every tool, so there a skip would hide a
    broken install)."""
    if os.environ.get("MEMROUTE_REQUIRE") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _require_memcached() -> str:
    path = memcached_bin()
    if path is None:
        missing("memcached not installed (run scripts/install-test-deps.sh)")
    return path


def _php_has_memcached() -> bool:
    if not shutil.which("php"):
        return False
    proc = subprocess.run(["php", "-r", "exit(class_exists('Memcached') ? 0 : 1);"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def php_memcached():
    """PHP with the memcached extension (php-cli, php-memcached)."""
    if not _php_has_memcached():
        missing("php-cli with the memcached extension missing "
                "(run scripts/install-test-deps.sh)")


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# raw socket client
# --------------------------------------------------------------------------


class Closed(Exception):
    """The peer closed the connection (EOF or RST) before the reply ended."""

    def __init__(self, data: bytes):
        super().__init__("connection closed by peer after %r" % data[-200:])
        self.data = data


class ReadTimeout(Exception):
    def __init__(self, data: bytes, what: str):
        super().__init__("timed out waiting for %s; got %r" % (what, data[-300:]))
        self.data = data


class RawClient:
    """Minimal blocking socket client with a timeout on every read."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    # -- plumbing ----------------------------------------------------------
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once into self.buf. False on timeout; raises nothing on EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        self.buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    # -- reading -----------------------------------------------------------
    def read_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            if self.eof:
                raise Closed(self._take(len(self.buf)))
            if not self._fill(deadline):
                raise ReadTimeout(self.buf, "%d bytes" % n)
        return self._take(n)

    def read_until(self, terminator: bytes, timeout: Optional[float] = None) -> bytes:
        """Read up to and including ``terminator``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(terminator)
            if i >= 0:
                return self._take(i + len(terminator))
            if self.eof:
                raise Closed(self._take(len(self.buf)))
            if not self._fill(deadline):
                raise ReadTimeout(self.buf, repr(terminator))

    def read_line(self, timeout: Optional[float] = None) -> bytes:
        return self.read_until(b"\r\n", timeout)

    def read_match(self, pattern: "re.Pattern[bytes]", timeout: Optional[float] = None) -> tuple:
        """Read until a prefix of the stream fully matches ``pattern``.

        Returns (bytes, match). Stops at the shortest matching prefix
        that ends at a line boundary (replies are line oriented).
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            pos = 0
            while True:
                j = self.buf.find(b"\n", pos)
                if j < 0:
                    break
                m = pattern.fullmatch(self.buf, 0, j + 1)
                if m:
                    return self._take(j + 1), m
                pos = j + 1
            if self.eof:
                raise Closed(self._take(len(self.buf)))
            if not self._fill(deadline):
                raise ReadTimeout(self.buf, "match of %r" % pattern.pattern[:200])

    def read_available(self, quiet: float = 0.2, timeout: Optional[float] = None) -> bytes:
        """Everything that arrives until the line is quiet for ``quiet`` s."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            if not self._fill(min(deadline, time.monotonic() + quiet)):
                break
        return self._take(len(self.buf))

    def wait_closed(self, timeout: Optional[float] = None) -> bytes:
        """Wait for EOF/RST; return any bytes that came before it.

        Raises ReadTimeout if the peer keeps the connection open.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            if not self._fill(deadline):
                raise ReadTimeout(self.buf, "the server to close the connection")
        return self._take(len(self.buf))

    def request(self, data: bytes, terminator: bytes = b"\r\n") -> bytes:
        self.send(data)
        return self.read_until(terminator)

    def assert_alive(self) -> None:
        """The connection still answers (sends `mn`, expects exactly `MN`)."""
        self.send(b"mn\r\n")
        got = self.read_until(b"MN\r\n")
        assert got == b"MN\r\n", "unexpected bytes before MN: %r" % got


# --------------------------------------------------------------------------
# server processes
# --------------------------------------------------------------------------

_RUNNING: "list[ServerHandle]" = []


@dataclass
class ServerHandle:
    kind: str
    host: str
    port: int
    proc: subprocess.Popen
    argv: list
    stderr_path: Path
    stopped: bool = False
    returncode: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return "%s:%d" % (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout: float = IO_TIMEOUT) -> RawClient:
        return RawClient(self.host, self.port, timeout)

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM (once) without waiting; ``stop`` then waits."""
        if not self.stopped and not self.extra.get("sigterm_sent") and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.extra["sigterm_sent"] = True

    def stop(self, expect_clean: bool = True) -> int:
        """SIGTERM by pid; wait; SIGKILL if it hangs. Returns the exit code."""
        if self.stopped:
            return self.returncode
        if self.proc.poll() is None:
            self.terminate()
        self.stopped = True
        if self in _RUNNING:
            _RUNNING.remove(self)
        hung = False
        if self.proc.poll() is None:
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        if expect_clean:
            assert not hung, "%s (pid %d) did not exit within %.0fs of SIGTERM\n%s" % (
                self.kind, self.pid, STOP_TIMEOUT, self.stderr_tail())
            assert self.returncode == 0, "%s (pid %d) exited with %s after SIGTERM\n%s" % (
                self.kind, self.pid, self.returncode, self.stderr_tail())
        return self.returncode


BINARY_VERSION = struct.pack(">BBHBBHIIQ", 0x80, 0x0b, 0, 0, 0, 0, 0, 0, 0)


def wait_ready(host: str, port: int, proc: subprocess.Popen, timeout: float = START_TIMEOUT,
               binary: bool = False) -> str:
    """Poll until the server answers `version` (in the binary protocol for a
    server started with `-B binary`); return the VERSION line."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited with %s before answering" % proc.returncode)
        try:
            with RawClient(host, port, timeout=1.0) as c:
                if binary:
                    c.send(BINARY_VERSION)
                    head = c.read_exact(24)
                    body = c.read_exact(struct.unpack(">I", head[8:12])[0])
                    if head[:2] == b"\x81\x0b":
                        return "VERSION " + body.decode()
                    last = head
                    continue
                line = c.request(b"version\r\n")
                if line.startswith(b"VERSION "):
                    return line.decode().strip()
                last = line
        except (OSError, Closed, ReadTimeout) as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError("did not answer `version` within %.0fs (last: %r)" % (timeout, last))


def _argv(kind: str, binary: str, port: int, args: Iterable[str]) -> list:
    args = list(args)
    if kind == "memcached":
        argv = [binary, "-U", "0", "-l", HOST, "-p", str(port)]
        if hasattr(os, "geteuid") and os.geteuid() == 0 and "-u" not in args:
            argv += ["-u", "root"]  # memcached refuses to run as root without -u
        return argv + args
    if kind in ("memroute", "memroute-proxy"):
        return [binary, "-l", HOST, "-p", str(port)] + args
    if kind == "nutcracker":
        return [binary] + args  # port is in the config file
    raise ValueError(kind)


def start_server(kind: str, binary: str, args: Iterable[str] = (), workdir: Optional[Path] = None,
                 port: Optional[int] = None, env: Optional[dict] = None,
                 ready_timeout: float = START_TIMEOUT) -> ServerHandle:
    """Start ``binary`` on a free loopback port and wait until it answers.

    Retries with a new port if the first one was taken in the meantime.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="memroute-tests-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args = list(args)
    binary_only = any(a == "-B" and b == "binary" for a, b in zip(args, args[1:]))
    errors = []
    for attempt in range(3):
        p = port if port is not None else free_port()
        argv = _argv(kind, binary, p, args)
        stderr_path = workdir / ("%s-%d.stderr" % (kind, p))
        with open(stderr_path, "wb") as errf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                    cwd=str(workdir), env=env, start_new_session=True)
        handle = ServerHandle(kind, HOST, p, proc, argv, stderr_path)
        try:
            handle.extra["version"] = wait_ready(HOST, p, proc, ready_timeout, binary_only)
        except RuntimeError as e:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)
            errors.append("%s: %s\n%s" % (" ".join(argv), e, handle.stderr_tail()))
            if port is not None:
                break
            continue
        _RUNNING.append(handle)
        return handle
    raise RuntimeError("could not start %s:\n%s" % (kind, "\n".join(errors)))


class ServerFactory:
    """Starts servers of one kind; stops all of them (by pid) at teardown."""

    def __init__(self, kind: str, binary: str, workdir: Path):
        self.kind = kind
        self.binary = binary
        self.workdir = workdir
        self.handles: "list[ServerHandle]" = []

    def __call__(self, *args: str, expect_clean_exit: bool = True, **kw) -> ServerHandle:
        h = start_server(self.kind, self.binary, args, self.workdir, **kw)
        h.extra["expect_clean_exit"] = expect_clean_exit
        self.handles.append(h)
        return h

    def stop_all(self) -> None:
        problems = []
        # Signal every server first, then wait: memcached takes about half a
        # second to exit, so stopping them one by one adds up.
        for h in reversed(self.handles):
            h.terminate()
        for h in reversed(self.handles):
            try:
                h.stop(expect_clean=h.extra.get("expect_clean_exit", True))
            except AssertionError as e:
                problems.append(str(e))
        self.handles.clear()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def server_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


def _factory(kind: str, workdir: Path):
    if kind == "memcached":
        return ServerFactory("memcached", _require_memcached(), workdir)
    return ServerFactory("memroute", str(_require_memroute()), workdir)


def server_factory(kind: str, workdir: Path) -> ServerFactory:
    """Starts servers of ``kind`` ("memcached" or "memroute") for a fixture
    of any scope, which must call ``stop_all`` at its teardown."""
    return _factory(kind, workdir)


@pytest.fixture
def memcached_factory(server_workdir):
    f = _factory("memcached", server_workdir)
    yield f
    f.stop_all()


@pytest.fixture
def memroute_factory(server_workdir):
    f = _factory("memroute", server_workdir)
    yield f
    f.stop_all()


@pytest.fixture(scope="module")
def memcached(server_workdir):
    """One real memcached for the whole module."""
    f = _factory("memcached", server_workdir)
    yield f()
    f.stop_all()


@pytest.fixture(scope="module")
def memroute(server_workdir):
    """One memroute in embedded-cache mode (no config) for the whole module."""
    f = _factory("memroute", server_workdir)
    yield f()
    f.stop_all()


def _server_kinds() -> list:
    wanted = os.environ.get("MEMROUTE_TEST_SERVERS")
    if not wanted:
        return list(SERVER_KINDS)
    kinds = [k.strip() for k in wanted.split(",") if k.strip()]
    bad = set(kinds) - set(SERVER_KINDS)
    if bad:
        raise pytest.UsageError("MEMROUTE_TEST_SERVERS: unknown %s" % ", ".join(sorted(bad)))
    return kinds


@pytest.fixture(scope="module", params=_server_kinds())
def server(request, server_workdir) -> ServerHandle:
    """The same test against real memcached and against memroute."""
    f = _factory(request.param, server_workdir)
    yield f()
    f.stop_all()


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for h in list(_RUNNING):
            tail = h.stderr_tail()
            alive = "running" if h.is_running() else "EXITED with %s" % h.proc.returncode
            report.sections.append((
                "%s pid %d on %s (%s) stderr: %s" % (h.kind, h.pid, h.addr, alive, h.stderr_path),
                tail or "(empty)"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a couple of seconds")


def pytest_sessionfinish(session, exitstatus):
    # Safety net: anything still running (a test crashed mid-fixture) is
    # stopped by its own pid, never by name.
    for h in list(_RUNNING):
        h.stop(expect_clean=False)


# --------------------------------------------------------------------------
# proxy mode (memroute with a Lua startfile, real memcached backends)
# --------------------------------------------------------------------------

EXAMPLES_DIR = REPO_ROOT / "examples"
CLIENTS_DIR = REPO_ROOT / "tests" / "clients"
LUA_DIR = REPO_ROOT / "lua"


def write_startfile(directory: Path, name: str, text: str) -> Path:
    """Write a Lua startfile (dedented) into ``directory`` and return its path."""
    import textwrap

    path = Path(directory) / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def stats_dict(client: RawClient, args: bytes = b"") -> dict:
    """`stats [args]` as {name: value-string}."""
    client.send(b"stats" + (b" " + args if args else b"") + b"\r\n")
    raw = client.read_until(b"END\r\n")
    out = {}
    for line in raw.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == b"STAT":
            out[parts[1].decode()] = parts[2].decode()
    return out


def mc_get(handle: "ServerHandle", key: str) -> Optional[bytes]:
    """The value of ``key`` read straight from a server (None on a miss)."""
    with handle.client() as c:
        c.send(b"mg %s v\r\n" % key.encode())
        line = c.read_line()
        if line == b"EN\r\n":
            return None
        m = re.match(rb"^VA (\d+)", line)
        assert m, "unexpected mg reply from %s: %r" % (handle.addr, line)
        data = c.read_exact(int(m.group(1)) + 2)
        return data[:-2]


def mc_set(handle: "ServerHandle", key: str, value: bytes, flags: int = 0) -> None:
    """Store ``key`` straight on a server."""
    with handle.client() as c:
        got = c.request(b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), flags, len(value), value))
        assert got == b"STORED\r\n", got


def run_memroute_expect_failure(args: Iterable[str], timeout: float = START_TIMEOUT,
                                cwd: Optional[Path] = None) -> "subprocess.CompletedProcess":
    """Run memroute on a free port expecting it to exit by itself (a bad
    startfile); fails the test if it keeps running past ``timeout``."""
    binary = _require_memroute()
    argv = [str(binary), "-l", HOST, "-p", str(free_port())] + list(args)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(cwd) if cwd else None,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
        pytest.fail("memroute kept running with a broken startfile: %s\n%s" % (
            " ".join(argv), err.decode("utf-8", "replace")[-2000:]))
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace"))


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


@pytest.fixture
def startfile_dir(tmp_path) -> Path:
    """A directory for startfiles written by a test."""
    d = tmp_path / "startfiles"
    d.mkdir()
    return d


@pytest.fixture
def backends(memcached_factory):
    """``backends(n)``: start n real memcached servers for one test."""
    def start(n: int, *args: str) -> "list[ServerHandle]":
        return [memcached_factory(*args) for _ in range(n)]
    return start

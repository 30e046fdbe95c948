"""Command-line flags at start: memcached's `-o` options memroute cannot
honour stop the start with a message naming them (exit 2); memcached's
memory tuning options are accepted with a warning; TLS and authentication
are refused, never served in plaintext. memroute runs with its default flags
(no -v), so the warnings checked are the ones an operator sees.

Run alone with: python3 -m pytest tests/test_flags.py -q
"""

import pytest

from conftest import run_memroute_expect_failure, wait_until


def refused(*args, code=2):
    """Runs memroute with ``args``, expecting it to refuse to start with
    exit status ``code`` (2: a bad command line; 1: a file it cannot use)."""
    proc = run_memroute_expect_failure(args)
    assert proc.returncode == code, "exit %s\n%s" % (proc.returncode, proc.stderr)
    return proc.stderr


def test_unknown_extended_option_stops_the_start():
    err = refused("-o", "proxy_config=/nonexistent.lua,frobnicate=3")
    assert "-o frobnicate=3" in err and "not an option memroute knows" in err, err


@pytest.mark.parametrize("opts", [
    "hashpower=20",
    "slab_reassign,slab_automove=1,lru_crawler,lru_maintainer,hot_lru_pct=20",
    "ext_path=/tmp/extstore:1G,ext_threads=4",
    "modern,maxconns_fast,read_buf_mem_limit=64",
])
def test_tuning_options_start_with_a_warning(memroute_factory, opts):
    mr = memroute_factory("-o", opts)
    with mr.client() as c:
        assert c.request(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    first = opts.split(",")[0]
    wait_until(lambda: first in mr.stderr_tail(), 5, what="a warning naming %s" % first)
    for opt in opts.split(","):
        assert "-o %s: memcached tuning option" % opt in mr.stderr_tail(), mr.stderr_tail()


@pytest.mark.parametrize("opt", [
    "ssl_chain_cert=/etc/cert.pem",
    "ssl_key=/etc/key.pem",
    "ssl_ca_cert=/etc/ca.pem",
    "ssl_verify_mode=2",
    "ssl_session_cache",
    "ssl_some_future_option=1",
])
def test_tls_options_stop_the_start(opt):
    # Without -Z, TLS settings never start a plaintext listener; options
    # memroute's TLS does not implement are refused even with -Z.
    err = refused("-o", "hashpower=20," + opt)
    assert "-o %s" % opt in err, err
    assert "need -Z" in err or "does not implement" in err, err


@pytest.mark.parametrize("args, says, code", [
    (["-Z"], "needs a certificate", 2),
    (["-S"], "password database", 2),
    (["-Y", "/etc/memcached-auth"], "cannot read password file /etc/memcached-auth", 1),
])
def test_tls_and_auth_switches_without_their_files_stop_the_start(args, says, code):
    err = refused(*args, code=code)
    assert says in err, err


@pytest.mark.parametrize("opt", ["no_maxconns_fast", "drop_privileges", "sock_cookie_id=3"])
def test_options_memroute_cannot_honour_stop_the_start(opt):
    err = refused("-o", opt)
    assert "-o %s: memroute cannot" % opt in err, err


@pytest.mark.parametrize("args, says", [
    (["-o", "idle_timeout=abc"], "-o idle_timeout=abc"),
    (["-o", "idle_timeout"], "-o idle_timeout: needs SECS"),
    (["--idle-timeout", "abc"], "--idle-timeout"),
    (["--idle-timeout", "5", "-o", "idle_timeout=6"], "disagree"),
])
def test_malformed_idle_timeout_stops_the_start(args, says):
    err = refused(*args)
    assert says in err, err


def test_idle_timeout_is_accepted(memroute_factory):
    mr = memroute_factory("-o", "idle_timeout=600", "--idle-timeout", "600")
    with mr.client() as c:
        c.assert_alive()
    assert "idle_timeout" not in mr.stderr_tail(), mr.stderr_tail()


def test_client_buffer_limit_below_twice_the_item_size_stops_the_start():
    err = refused("-I", "2m", "--client-buffer-limit", "3m")
    assert "--client-buffer-limit" in err and "twice" in err, err
    err = refused("--client-buffer-limit", "lots")
    assert "--client-buffer-limit" in err, err


def test_client_buffer_limit_is_accepted(memroute_factory):
    mr = memroute_factory("-I", "2m", "--client-buffer-limit", "4m")
    with mr.client() as c:
        c.assert_alive()

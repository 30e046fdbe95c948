"""Fleet agreement, end to end: `stats` config_digest / membership_digest
and `memroute fleet-check` over real memcached backends and real memroute
proxies running examples/single-pool.lua.

* two proxies with the same backends agree (exit 0);
* a third with another backend list: exit 1, and the diff names that proxy
  and the backends that differ;
* a proxy that sees a stopped backend bad: exit 3, membership differs;
* an unreachable address: exit 4.

Every wait is bounded; every process is ours and stopped by pid.
"""

from __future__ import annotations

import re
import subprocess

from conftest import REPO_ROOT, _require_memroute, free_port, stats_dict, wait_until

SINGLE_POOL = str(REPO_ROOT / "examples" / "single-pool.lua")

# fleet-check's exit codes (docs/operations.md, "Fleet agreement").
AGREE, CONFIG_DIFFERS, MEMBERSHIP_DIFFERS, UNREACHABLE = 0, 1, 3, 4


def proxy(memroute_factory, backends):
    """memroute running single-pool.lua over `backends`, one worker."""
    arg = ",".join(b.addr for b in backends)
    return memroute_factory("--config", SINGLE_POOL, "--config-arg", arg, "-t", "1")


def fleet_check(*addrs: str, timeout: str = "2") -> subprocess.CompletedProcess:
    argv = [str(_require_memroute()), "fleet-check", "--timeout", timeout] + list(addrs)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=30)


def general(handle) -> dict:
    with handle.client() as c:
        return stats_dict(c)


def test_stats_fields(backends, memroute_factory, memroute):
    b1, b2 = backends(2)
    p1 = proxy(memroute_factory, [b1, b2])
    p2 = proxy(memroute_factory, [b1, b2])
    s1, s2 = general(p1), general(p2)
    assert re.fullmatch(r"[0-9a-f]{16}", s1["config_digest"]), s1["config_digest"]
    assert s1["config_digest"] == s2["config_digest"]
    assert s1["membership_digest"] == s2["membership_digest"]
    assert s1["backends_healthy"] == s1["backends_total"] == "2"
    # Another backend list, same file: another digest.
    p3 = proxy(memroute_factory, [b2, b1])
    assert general(p3)["config_digest"] != s1["config_digest"]
    # Without a startfile: no configuration, no membership.
    plain = general(memroute)
    assert plain["config_digest"] == "none"
    assert "membership_digest" not in plain


def test_fleet_check_agrees_then_names_the_odd_proxy(backends, memroute_factory):
    b1, b2, b3 = backends(3)
    p1 = proxy(memroute_factory, [b1, b2])
    p2 = proxy(memroute_factory, [b1, b2])
    done = fleet_check(p1.addr, p2.addr)
    assert done.returncode == AGREE, done.stdout + done.stderr
    assert p1.addr in done.stdout and p2.addr in done.stdout
    assert "all 2 proxies agree" in done.stdout

    # The third proxy's second backend is b3, not b2.
    p3 = proxy(memroute_factory, [b1, b3])
    done = fleet_check(p1.addr, p2.addr, p3.addr)
    assert done.returncode == CONFIG_DIFFERS, done.stdout + done.stderr
    diff = done.stdout.split("configuration differs", 1)[1]
    assert p3.addr in diff, done.stdout
    assert "b2/%s" % b3.addr in diff, done.stdout  # only on p3
    assert "b2/%s" % b2.addr in diff, done.stdout  # missing on p3
    assert "  %s: config_digest" % p3.addr in diff
    assert "  %s: config_digest" % p2.addr not in diff


def test_stopped_backend_is_a_membership_difference(backends, memroute_factory):
    b1, b2 = backends(2)
    p1 = proxy(memroute_factory, [b1, b2])
    p2 = proxy(memroute_factory, [b1, b2])
    assert fleet_check(p1.addr, p2.addr).returncode == AGREE
    with p1.client() as c:
        for i in range(20):
            c.request(b"set k%d 0 0 1\r\nx\r\n" % i)
    b2.stop()

    # Only p1 carries traffic, so only p1 notices that b2 is gone.
    def p1_sees_b2_bad():
        with p1.client() as c:
            for i in range(20):
                c.request(b"touch k%d 0\r\n" % i)
            return stats_dict(c)["backends_healthy"] == "1"
    wait_until(p1_sees_b2_bad, 10, what="p1 to see b2 bad")
    s1, s2 = general(p1), general(p2)
    assert s1["config_digest"] == s2["config_digest"]
    assert s1["membership_digest"] != s2["membership_digest"]
    assert s1["backends_total"] == "2"

    # One against one: the proxy that sees more backends healthy is the
    # reference, whichever comes first.
    done = fleet_check(p1.addr, p2.addr)
    assert done.returncode == MEMBERSHIP_DIFFERS, done.stdout + done.stderr
    diff = done.stdout.split("membership differs", 1)[1]
    assert "  %s: membership_digest" % p1.addr in diff, done.stdout
    assert "b2/%s (bad)" % b2.addr in diff, done.stdout
    assert "configuration differs" not in done.stdout


def test_unreachable_proxy(backends, memroute_factory):
    b1, = backends(1)
    p1 = proxy(memroute_factory, [b1])
    nobody = "127.0.0.1:%d" % free_port()
    done = fleet_check(p1.addr, nobody, timeout="1")
    assert done.returncode == UNREACHABLE, done.stdout + done.stderr
    assert nobody in done.stdout and "UNREACHABLE" in done.stdout
    # A bad command line is clap's exit code 2, not one of the check's.
    assert fleet_check().returncode == 2

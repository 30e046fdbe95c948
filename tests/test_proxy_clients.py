"""Real clients against memroute in proxy mode, in front of real memcached:

* libmemcached's ``memccapable -a`` through examples/single-pool.lua;
* PHP memcached (libmemcached) in libketama-compatible mode writing keys
  straight to two memcached servers, read back through memroute ketama
  pools with no miss: the placement is libmemcached's, key for key.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from conftest import CLIENTS_DIR, EXAMPLES_DIR, write_startfile
from test_clients import assert_memccapable_passes

pytestmark = pytest.mark.clients


# --------------------------------------------------------------------------
# memccapable through a routing proxy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ascii", "binary"])
def test_memccapable_through_single_pool(backends, memroute_factory, mode):
    bs = backends(2)
    mr = memroute_factory("--config", str(EXAMPLES_DIR / "single-pool.lua"),
                          "--config-arg", ",".join(b.addr for b in bs))
    assert_memccapable_passes(mr.host, mr.port, mode)
    # the commands really went through the pool: the backends saw sets
    for b in bs:
        with b.client() as c:
            c.send(b"stats\r\n")
            stats = c.read_until(b"END\r\n")
        m = re.search(rb"STAT cmd_set (\d+)", stats)
        assert m and int(m.group(1)) > 0, "backend %s got no sets" % b.addr


# --------------------------------------------------------------------------
# ketama placement identical to libmemcached's
# --------------------------------------------------------------------------

KETAMA_POOLS = {
    # memcached proxy style
    "mcp_dist_ring_hash_ketama":
        'mcp.pool(bs, { dist = mcp.dist_ring_hash, omode = "ketama", '
        'hash = mcp.dist_ring_hash.hash })',
    # memroute's name for libmemcached's continuum
    "dist_name_ketama": 'mcp.pool(bs, { dist = "ketama" })',
    "mcp_dist_ketama": 'mcp.pool(bs, { dist = mcp.dist_ketama, hash = mcp.hash_md5 })',
}

KETAMA_STARTFILE = """
function mcp_config_pools()
    local bs = {}
    for hp in string.gmatch(mcp.start_arg, "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(bs, mcp.backend("b" .. (#bs + 1), host, tonumber(port)))
    end
    return { main = POOL }
end

function mcp_config_routes(pools)
    local main = pools.main
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return main(r) end)
end
"""

PHP_KEYS = 600


def php_write_keys(prefix: str, servers) -> None:
    proc = subprocess.run(["php", str(CLIENTS_DIR / "php_ketama.php"), prefix, str(PHP_KEYS)]
                          + [s.addr for s in servers], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "set %d" % PHP_KEYS


def misses_through(mr, prefix: str) -> list:
    """Keys written by php_write_keys that memroute cannot read back."""
    missing = []
    keys = ["%s%d" % (prefix, i) for i in range(PHP_KEYS)]
    with mr.client() as c:
        for start in range(0, len(keys), 100):
            batch = keys[start:start + 100]
            c.send(b"get " + " ".join(batch).encode() + b"\r\n")
            reply = c.read_until(b"END\r\n")
            found = dict(re.findall(rb"VALUE (\S+) \d+ \d+\r\n([^\r]*)\r\n", reply))
            for k in batch:
                if found.get(k.encode()) != b"v-" + k.encode():
                    missing.append(k)
    return missing


def per_server_counts(servers) -> list:
    counts = []
    for s in servers:
        with s.client() as c:
            c.send(b"stats\r\n")
            stats = c.read_until(b"END\r\n")
        counts.append(int(re.search(rb"STAT curr_items (\d+)", stats).group(1)))
    return counts


@pytest.mark.parametrize("style", sorted(KETAMA_POOLS))
def test_ketama_pool_matches_libmemcached(style, php_memcached, backends, memroute_factory,
                                          startfile_dir):
    bs = backends(2)
    prefix = "ketama:%s:" % uuid.uuid4().hex[:6]
    php_write_keys(prefix, bs)
    counts = per_server_counts(bs)
    # the test means something only if both servers got a fair share
    assert min(counts) > PHP_KEYS // 5, counts
    path = write_startfile(startfile_dir, "ketama.lua",
                           KETAMA_STARTFILE.replace("POOL", KETAMA_POOLS[style]))
    mr = memroute_factory("--config", str(path), "--config-arg", ",".join(b.addr for b in bs))
    missing = misses_through(mr, prefix)
    assert not missing, "%d of %d keys placed differently from libmemcached ketama, e.g. %s" % (
        len(missing), PHP_KEYS, missing[:5])


def test_jump_pool_does_not_match_libmemcached(php_memcached, backends, memroute_factory,
                                               startfile_dir):
    """Control: the default distribution (jump) misses many of those keys,
    so the ketama test above really checks the placement."""
    bs = backends(2)
    prefix = "jump:%s:" % uuid.uuid4().hex[:6]
    php_write_keys(prefix, bs)
    path = write_startfile(startfile_dir, "jump.lua",
                           KETAMA_STARTFILE.replace("POOL", "mcp.pool(bs)"))
    mr = memroute_factory("--config", str(path), "--config-arg", ",".join(b.addr for b in bs))
    missing = misses_through(mr, prefix)
    assert len(missing) > PHP_KEYS // 10, len(missing)

"""mcp.dynamo_pool's spool options: every mistake stops the startfile with a
clear error before memroute listens (and before any DynamoDB call: the
endpoint below has nothing behind it)."""

from __future__ import annotations

import re

import pytest

from conftest import run_memroute_expect_failure, write_startfile

POOL = 'table = "%s", endpoint = "http://127.0.0.1:9", region = "us-east-1"'


def expect_failure(startfile_dir, pools: str, *patterns):
    text = """
        function mcp_config_pools()
            return { %s }
        end
        function mcp_config_routes(p) end
    """ % pools
    path = write_startfile(startfile_dir, "spool.lua", text)
    proc = run_memroute_expect_failure(["--config", str(path)])
    assert proc.returncode != 0, proc
    for pattern in patterns:
        assert re.search(pattern, proc.stderr), "%r not in stderr:\n%s" % (pattern, proc.stderr)


@pytest.mark.parametrize("opts,message", [
    ('spool = "{dir}"', r'spool needs write = \\?"behind\\?"'),
    ('write = "through", spool = "{dir}"', r'spool needs write = \\?"behind\\?"'),
    ('write = "behind", spool_fsync = "always"', r'spool_fsync needs spool = '),
    ('write = "behind", spool_max_bytes = 1073741824', r'spool_max_bytes needs spool = '),
    ('write = "behind", spool = ""', r"spool must name a directory"),
    ('write = "behind", spool = 5', r"spool must be a string"),
    ('write = "behind", spool = "{dir}", spool_fsync = "sometimes"',
     r'spool_fsync must be \\?"always\\?", \\?"never\\?" or a number of milliseconds'),
    ('write = "behind", spool = "{dir}", spool_fsync = 0', r"spool_fsync must be"),
    ('write = "behind", spool = "{dir}", spool_fsync = 60001', r"spool_fsync must be"),
    ('write = "behind", spool = "{dir}", spool_max_bytes = 1000',
     r"spool_max_bytes must be at least 1048576"),
    ('write = "behind", spool = "{dir}", spool_max_bytes = -1',
     r"spool_max_bytes must be a positive integer"),
    ('write = "behind", spool = "{file}"', r"spool path .* is not a directory"),
    ('write = "behind", spool = "/proc/memroute-spool/x"', r"cannot create spool directory"),
])
def test_bad_spool_options_fail_at_start(opts, message, startfile_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    opts = opts.format(dir=tmp_path / "spool", file=tmp_path / "a-file")
    expect_failure(startfile_dir, "t = mcp.dynamo_pool{ %s, %s }" % (POOL % "tbl", opts),
                   r"mcp\.dynamo_pool", message)


def test_two_pools_on_one_spool_directory(startfile_dir, tmp_path):
    spool = tmp_path / "shared"
    pools = ", ".join("%s = mcp.dynamo_pool{ %s, write = \"behind\", spool = \"%s\" }"
                      % (name, POOL % name, spool) for name in ("one", "two"))
    expect_failure(startfile_dir, pools,
                   r"spool directory .*shared is already used by the DynamoDB pool of table")


def test_spool_locked_by_a_running_process(startfile_dir, tmp_path):
    """A LOCK naming a live process (pid 1, with its start time) keeps the
    spool from a second memroute."""
    spool = tmp_path / "locked"
    spool.mkdir()
    stat = open("/proc/1/stat").read()
    started = stat[stat.rindex(")") + 1:].split()[19]
    (spool / "LOCK").write_text("1 %s\n" % started)
    expect_failure(startfile_dir,
                   't = mcp.dynamo_pool{ %s, write = "behind", spool = "%s" }'
                   % (POOL % "tbl", spool),
                   r"spool directory .*locked is in use by process 1")

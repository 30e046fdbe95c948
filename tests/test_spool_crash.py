"""Issue 16: kill -9 under write-behind load, against a real DynamoDB Local.

With the spool, every acknowledged write reaches the table after a restart,
at its last acknowledged state (see tests/spool_crash.py for the scenario);
without it, the writes queued at the kill are lost (the trade-off the spool
removes, asserted here as documentation).

Run alone with: python3 -m pytest tests/test_spool_crash.py -q -s
(-s prints the figures quoted in docs/reliability.md).
"""

import random
import shutil

import pytest

from conftest import memroute_bin, missing
from ddb_local import DynamoLocal
from spool_crash import crash_cycle, fast_db_path


@pytest.fixture
def persistent_ddb(tmp_path):
    """A DynamoDB Local that keeps its tables across a kill (on tmpfs when
    possible: see fast_db_path)."""
    if memroute_bin() is None:
        missing("memroute binary not found (cargo build)")
    db_path = fast_db_path(tmp_path / "db")
    try:
        ddb = DynamoLocal(tmp_path / "ddb", db_path=db_path).start()
    except RuntimeError as e:
        shutil.rmtree(db_path, ignore_errors=True)
        missing(str(e))
    yield ddb
    ddb.stop()
    shutil.rmtree(db_path, ignore_errors=True)


def table() -> str:
    return "crash%d" % random.randrange(1 << 30)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("fsync", ["always", "never"])
def test_kill_9_with_spool_loses_no_acknowledged_write(persistent_ddb, tmp_path, fsync):
    o = crash_cycle(persistent_ddb, table(), tmp_path, tmp_path / "spool", fsync)
    print("\n" + o.summary())
    assert not o.errors, o.errors[:5]
    assert o.acked > 10000, o.summary()
    assert o.replayed > 0, o.summary()
    assert not o.lost, "keys not at their last acknowledged state: %s" % o.lost[:20]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill_9_without_spool_loses_queued_writes(persistent_ddb, tmp_path):
    """The same crash without a spool: the acknowledged writes still queued
    are gone (issue 16's loss)."""
    o = crash_cycle(persistent_ddb, table(), tmp_path, None)
    print("\n" + o.summary())
    assert not o.errors, o.errors[:5]
    assert len(o.lost) > 100, o.summary()

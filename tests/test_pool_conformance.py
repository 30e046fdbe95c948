"""One conformance suite for every pool kind.

The conversation table of tests/test_conversation.py (every command, every
error) runs against memroute routing every command with a key, and
flush_all, to one pool of each kind:

* ``mc_attached``: a memcached pool (one real memcached 1.6.18) attached
  directly, ``mcp.attach(cmd, pool)``: no Lua per request;
* ``mc_route``: the same pool behind a Lua route, ``function(r) return
  pool(r) end``;
* ``ddb_through`` and ``ddb_behind``: a DynamoDB pool (``mcp.dynamo_pool``)
  on a real DynamoDB Local, written through and written behind;
* ``internal``: the embedded cache as a route, ``function(r) return
  mcp.internal(r) end``.

A row must pass exactly as memroute answers it in embedded mode, unless
``DIFFERENCES`` lists it for that kind. An entry says why and gives what the
kind answers instead, and the row must then answer exactly that: if the
difference goes away or changes, the row fails and the entry must be
revisited. Entries marked ``BUG`` are memroute's faults, to fix, not the
backend's limits.

Commands a proxy does not route (``version``, ``verbosity``, ``stats``,
``mn``, ``quit``, ``shutdown``) and requests memroute's parser refuses are
answered by memroute itself, so those rows hold for every kind as they are.

The five memroutes run side by side for the whole module, before one real
memcached and one DynamoDB Local. Before each row the kind's store is
emptied behind memroute's back where it can be: the memcached backend with
its own ``flush_all``, the DynamoDB table by scanning and deleting every
item once the write-behind queue is empty (the embedded cache only through
memroute, with ``flush_all``). The rows that sleep run for every kind in
one test, the kinds' sleeps overlapping, to keep the file near a minute.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pytest

from conftest import server_factory, stats_dict, wait_until, write_startfile
from ddb_local import DynamoLocal, dynamo_env
from test_conversation import (ROWS, Conv, Re, Sleep, as_memcached_1_6_18, as_memroute,
                               run_conversation)


# --------------------------------------------------------------------------
# the pool kinds
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolKind:
    name: str
    # The pool mcp_config_pools returns, as Lua; {backend} and {endpoint},
    # {table} are filled in by the fixture.
    pool: str
    # The route attached for every command with a key and for flush_all;
    # `p` is the pool.
    route: str
    # What holds the items: "memcached", "dynamo" or "embedded".
    store: str
    # Seconds a single read may take (DynamoDB Local is slow to answer a
    # 500-key get, which memroute sends as one GetItem per key).
    min_timeout: float = 0.0


MC_POOL = "mcp.pool({{ mcp.backend('b1', '127.0.0.1', {backend}) }})"
DDB_POOL = ("mcp.dynamo_pool{{ table = '{table}', endpoint = '{endpoint}', region = 'us-east-1', "
            "write = '%s', create_table = true }}")

KINDS = {k.name: k for k in (
    PoolKind("mc_attached", MC_POOL, "p", "memcached"),
    PoolKind("mc_route", MC_POOL, "function(r) return p(r) end", "memcached"),
    PoolKind("ddb_through", DDB_POOL % "through", "p", "dynamo", 15.0),
    PoolKind("ddb_behind", DDB_POOL % "behind", "p", "dynamo", 15.0),
    PoolKind("internal", "nil", "function(r) return mcp.internal(r) end", "embedded"),
)}

MEMCACHED = ("mc_attached", "mc_route")
DYNAMO = ("ddb_through", "ddb_behind")

STARTFILE = """
function mcp_config_pools()
    return {{ p = {pool} }}
end

function mcp_config_routes(pools)
    local p = pools.p
    local route = {route}
    mcp.attach(mcp.CMD_ANY_STORAGE, route)
    mcp.attach(mcp.CMD_FLUSH_ALL, route)
end
"""


# --------------------------------------------------------------------------
# documented differences
# --------------------------------------------------------------------------

@dataclass
class Differs:
    """How ``kinds`` answer a row instead, and why: other ``replies`` at
    some steps (step index -> reply), or, ``as_1_6_18``, the row's own
    memcached 1.6.18 answer (what a memcached 1.6.18 backend gives for a
    request memroute forwards as it came)."""
    kinds: Tuple[str, ...]
    why: str
    replies: Optional[dict] = None
    as_1_6_18: bool = False
    # memroute's fault rather than a limit of the backend.
    bug: bool = False

    def apply(self, conv: Conv) -> Conv:
        if self.as_1_6_18:
            return as_memcached_1_6_18(conv)
        steps = list(as_memroute(conv).steps)
        for i, reply in self.replies.items():
            assert not isinstance(steps[i], Sleep), "step %d of %s is a sleep" % (i, conv.id)
            steps[i] = (steps[i][0], reply)
        return Conv(conv.id, steps, conv.after, conv.slow)


def BUG(kinds, why, **kw) -> Differs:
    """A difference that is memroute's fault (see docs/testing.md)."""
    return Differs(kinds, why, bug=True, **kw)


UNSUPPORTED = b"CLIENT_ERROR unsupported by the DynamoDB pool\r\n"
NO_FLUSH = b"SERVER_ERROR flush_all is not supported by the DynamoDB pool\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
A_IS_X = b"VALUE a 0 1\r\nx\r\nEND\r\n"
MISS = b"END\r\n"

# Why each kind differs, once.
BACKEND_1_6_18 = ("the backend is memcached 1.6.18 and memroute forwards the request as the client "
                  "wrote it, so the backend answers by its own (older) rules; a 1.6.45 backend "
                  "would answer as the row")
DDB_400KB = ("DynamoDB's item size limit is 400 KB (attribute names included): a larger value is "
             "refused before anything is written")
DDB_NO_FLUSH = ("flush_all never empties a table (no scan-and-delete by accident): the pool "
                "answers SERVER_ERROR and the items stay (docs/dynamodb.md)")
DDB_NO_FLUSH_QUIET = DDB_NO_FLUSH + "; noreply hides the refusal"
DDB_NO_LRU = ("a table has no LRU: mg h (hit before) and l (last access) are refused as "
              "unsupported rather than answered wrongly")
DDB_NO_STALE = ("a table keeps no stale/win state: mg N and R (vivify, recache), ms and md I "
                "(invalidate) are refused as unsupported, so the item stays as it was")
DDB_NO_EXPLICIT_CAS = ("a DynamoDB pool makes its own CAS versions (they order its writes): "
                       "E (explicit CAS) is refused")
DDB_NO_X = "md x (remove the value, keep the item) has no table equivalent: refused"
DDB_NO_ME = "me (memcached's item debug dump: slab class, LRU time) has no table equivalent"
PROXY_QUIET_MA = ("every request goes to its pool without q (each must get exactly one reply), "
                  "and the pool's reply to an ma does not say whether it created the item: the "
                  "proxy hides it as it hides an ma on an item that was there "
                  "(docs/compatibility.md)")

DIFFERENCES: Dict[str, list] = {
    # ------------------------------------------ memcached 1.6.18 backends
    "set_length_lone_minus_is_zero": [
        Differs(MEMCACHED, BACKEND_1_6_18,
                {0: b"CLIENT_ERROR bad command line format\r\n", 1: MISS})],
    **{row: [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True)] for row in (
        "incr_too_many_tokens", "touch_too_many_tokens")},
    "flush_all_too_many_tokens": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True),
                                  Differs(DYNAMO, DDB_NO_FLUSH, {0: NO_FLUSH})],
    "mg_E_flag_not_in_1_6_18": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True),
                                Differs(DYNAMO, DDB_NO_EXPLICIT_CAS, {0: UNSUPPORTED})],
    "ms_E_flag_not_in_1_6_18": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True),
                                Differs(DYNAMO, DDB_NO_EXPLICIT_CAS, {0: UNSUPPORTED,
                                                                     1: b"EN\r\n"})],
    "md_x_not_in_1_6_18": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True),
                           Differs(DYNAMO, DDB_NO_X, {0: UNSUPPORTED})],
    "ms_mode_append_N_does_not_vivify": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True)],
    "me_base64": [Differs(MEMCACHED, BACKEND_1_6_18, as_1_6_18=True),
                  Differs(DYNAMO, DDB_NO_ME, {1: UNSUPPORTED, 2: UNSUPPORTED})],

    # ---------------------------------------------------------- DynamoDB
    "object_of_1000000_bytes_ok": [Differs(DYNAMO, DDB_400KB, {0: TOO_LARGE, 1: MISS})],
    "flush_all": [Differs(DYNAMO, DDB_NO_FLUSH, {
        2: NO_FLUSH, 3: b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\nx\r\nEND\r\n"})],
    **{row: [Differs(DYNAMO, DDB_NO_FLUSH, {1: NO_FLUSH, 2: A_IS_X})]
       for row in ("flush_all_zero", "flush_all_negative_is_immediate")},
    **{row: [Differs(DYNAMO, DDB_NO_FLUSH_QUIET, {2: A_IS_X})]
       for row in ("flush_all_noreply", "flush_all_zero_noreply")},
    "flush_all_third_token_not_noreply_still_replies": [
        Differs(DYNAMO, DDB_NO_FLUSH, {0: NO_FLUSH})],
    "flush_all_items_set_after_flush_survive": [Differs(DYNAMO, DDB_NO_FLUSH, {1: NO_FLUSH})],
    "flush_all_delayed": [Differs(DYNAMO, DDB_NO_FLUSH, {1: NO_FLUSH, 4: A_IS_X})],
    "flush_all_delayed_noreply": [Differs(DYNAMO, DDB_NO_FLUSH_QUIET, {4: A_IS_X})],
    "mg_h_and_l": [Differs(DYNAMO, DDB_NO_LRU, {1: UNSUPPORTED, 2: UNSUPPORTED})],
    "mg_N_vivify_on_miss": [Differs(DYNAMO, DDB_NO_STALE, {
        0: UNSUPPORTED, 1: UNSUPPORTED, 2: b"EN\r\n"})],
    "mg_N_on_hit_is_plain_hit": [Differs(DYNAMO, DDB_NO_STALE, {1: UNSUPPORTED})],
    "mg_R_recache_win": [Differs(DYNAMO, DDB_NO_STALE, {
        1: UNSUPPORTED, 2: UNSUPPORTED, 3: UNSUPPORTED, 4: b"VA 1\r\nx\r\n"})],
    "ms_invalidate_with_older_cas_marks_stale": [Differs(DYNAMO, DDB_NO_STALE, {
        1: UNSUPPORTED, 2: Re(rb"VA 1 c[0-9]+\r\nx\r\n"), 3: b"VA 1\r\nx\r\n",
        4: UNSUPPORTED, 5: b"VA 1\r\nx\r\n"})],
    "md_invalidate": [Differs(DYNAMO, DDB_NO_STALE, {
        1: UNSUPPORTED, 2: Re(rb"VA 1 c[0-9]+ t-1\r\nx\r\n"), 3: Re(rb"VA 1 c[0-9]+\r\nx\r\n")})],
    "me_miss": [Differs(DYNAMO, DDB_NO_ME, {0: UNSUPPORTED})],
    "me_hit": [Differs(DYNAMO, DDB_NO_ME, {1: UNSUPPORTED, 3: UNSUPPORTED})],
    "me_with_ttl": [Differs(DYNAMO, DDB_NO_ME, {1: UNSUPPORTED})],

    # ------------------------------------------------------ every proxy kind
    "ma_quiet_shows_the_item_it_created": [
        Differs(MEMCACHED + DYNAMO + ("internal",), PROXY_QUIET_MA,
                {0: b"MN\r\n", 2: b"MN\r\n"})],
}


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def targets(memcached, server_workdir, tmp_path_factory):
    """One memroute per pool kind, all running for the whole module, before
    one real memcached and one DynamoDB Local (a table per DynamoDB kind)."""
    ddb = DynamoLocal(tmp_path_factory.mktemp("ddb-conformance")).start()
    startfiles = tmp_path_factory.mktemp("startfiles")
    factory = server_factory("memroute", server_workdir)
    try:
        out = {}
        for kind in KINDS.values():
            table = "conf_%s_%d" % (kind.name, random.randrange(1 << 30))
            pool = kind.pool.format(backend=memcached.port, endpoint=ddb.endpoint, table=table)
            path = write_startfile(startfiles, kind.name + ".lua",
                                   STARTFILE.format(pool=pool, route=kind.route))
            server = factory("--config", str(path), env=dynamo_env(ddb, table))
            out[kind.name] = Target(kind, server, memcached, ddb, table)
        yield out
    finally:
        factory.stop_all()
        ddb.stop()


@dataclass
class Target:
    """One kind's memroute and the store behind it."""
    kind: PoolKind
    server: object
    backend: object
    ddb: DynamoLocal
    table: str

    def empty(self) -> None:
        """Empties the store the next row talks to."""
        if self.kind.store == "memcached":
            with self.backend.client() as c:
                assert c.request(b"flush_all\r\n") == b"OK\r\n"
        elif self.kind.store == "embedded":
            with self.server.client() as c:
                assert c.request(b"flush_all\r\n") == b"OK\r\n"
        else:
            self._empty_table()

    def _empty_table(self) -> None:
        # Writes still queued would land after the scan: wait them out.
        def queue_empty():
            with self.server.client() as c:
                stats = stats_dict(c)
            gauges = [v for k, v in stats.items()
                      if k.startswith("dynamo_") and k.endswith(("_queue_depth", "_in_flight"))]
            assert gauges, "no write-behind gauges in stats"
            return all(v == "0" for v in gauges)
        wait_until(queue_empty, 15.0, what="the write-behind queue to empty")
        start = None
        while True:
            body = {"TableName": self.table, "ProjectionExpression": "id"}
            if start:
                body["ExclusiveStartKey"] = start
            page = self.ddb.call("Scan", body)
            for item in page.get("Items", []):
                self.ddb.call("DeleteItem", {"TableName": self.table, "Key": {"id": item["id"]}})
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def run(self, conv: Conv) -> None:
        """Runs the row as this kind must answer it, on an emptied store."""
        want = expected(self.kind.name, conv)
        self.empty()
        run_conversation(self.server.host, self.server.port, want, self.kind.min_timeout)
        assert self.server.is_running(), "memroute died during the conversation"


# --------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------


def expected(kind: str, conv: Conv) -> Conv:
    """The conversation ``kind`` must hold for the row: memroute's own,
    or the documented difference for the kind."""
    for d in DIFFERENCES.get(conv.id, []):
        if kind in d.kinds:
            return d.apply(conv)
    return as_memroute(conv)


@pytest.mark.parametrize("conv", [pytest.param(c, id=c.id) for c in ROWS if not c.slow])
@pytest.mark.parametrize("kind", list(KINDS))
def test_pool_conformance(targets, kind, conv):
    targets[kind].run(conv)


@pytest.mark.slow
@pytest.mark.parametrize("conv", [pytest.param(c, id=c.id) for c in ROWS if c.slow])
def test_pool_conformance_with_sleeps(targets, conv):
    """The rows that sleep (expiry, delayed flush_all), for every kind at
    once: kinds with stores of their own run side by side, so the sleeps
    overlap; the memcached kinds share their backend and take turns."""
    by_store: Dict[str, list] = {}
    for kind, target in targets.items():
        store = target.table if target.kind.store == "dynamo" else target.kind.store
        by_store.setdefault(store, []).append(target)

    def run_all(group):
        failures = []
        for target in group:
            try:
                target.run(conv)
            except BaseException as e:  # a failed assertion or pytest.fail
                failures.append("%s: %s" % (target.kind.name, e))
        return failures

    with ThreadPoolExecutor(len(by_store)) as pool:
        failures = [f for fs in pool.map(run_all, by_store.values()) for f in fs]
    assert not failures, "\n".join(failures)


def test_differences_are_well_formed():
    """Every entry names a row and kinds that exist, gives a reason, and
    really differs from what the row expects of memroute."""
    rows = {conv.id: conv for conv in ROWS}
    for row_id, entries in DIFFERENCES.items():
        assert row_id in rows, "DIFFERENCES names no row %r" % row_id
        seen = set()
        for d in entries:
            assert d.why.strip(), "%s: a difference needs a reason" % row_id
            unknown = set(d.kinds) - set(KINDS)
            assert not unknown, "%s: unknown kinds %s" % (row_id, unknown)
            assert not seen & set(d.kinds), "%s: two entries for one kind" % row_id
            seen |= set(d.kinds)
            assert (d.replies is None) == d.as_1_6_18, \
                "%s: give replies or as_1_6_18, one of them" % row_id
            assert not d.bug or "crates/" in d.why, \
                "%s: a bug's reason names the file and function at fault" % row_id
            conv = rows[row_id]
            changed = d.apply(conv)
            mine = as_memroute(conv)
            assert (changed.steps, changed.after) != (mine.steps, mine.after), \
                "%s: the documented difference is no difference" % row_id

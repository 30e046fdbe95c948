"""kill -9 under write-behind load, with and without the spool.

One cycle: memroute (target/debug/memroute, default flags) serves a
write-behind DynamoDB pool; writers send acknowledged sets (and, once
DynamoDB Local is stopped, deletes) as fast as they can; DynamoDB Local is
killed so the queue gets deep; memroute is killed with SIGKILL while the
writers are still sending; DynamoDB Local and memroute are restarted; once
the queue has drained, the table must hold, for every key, its last
acknowledged state (a value, or no item after an acknowledged delete), or
the state of a command sent after it whose reply the kill cut off. Never an
older state: nothing lost, nothing reordered.

Used by tests/test_spool_crash.py and, repeated, by
scripts/spool-crash-soak.sh (``python3 tests/spool_crash.py --cycles N``).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import memroute_bin, start_server, stats_dict  # noqa: E402
from ddb_local import DynamoLocal, dynamo_env  # noqa: E402

STARTFILE = """\
function mcp_config_pools()
    local fsync = os.getenv("SPOOL_FSYNC")
    if fsync and tonumber(fsync) then fsync = tonumber(fsync) end
    return {
        t = mcp.dynamo_pool{
            table = os.getenv("DDB_TABLE"),
            region = "us-east-1",
            endpoint = os.getenv("DDB_ENDPOINT"),
            write = "behind",
            create_table = true,
            name = "crash",
            spool = os.getenv("SPOOL_DIR"),
            spool_fsync = os.getenv("SPOOL_DIR") and fsync or nil,
        },
    }
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_ANY_STORAGE, pools.t)
end
"""

WINDOW = 64  # commands in flight per connection


class Writer(threading.Thread):
    """One connection sending pipelined windows of sets (and deletes of
    keys written since the outage) over its own keys, recording what was
    acknowledged. Keys are disjoint between writers, so each key's commands
    are ordered by one connection."""

    def __init__(self, port: int, keys: List[str], tag: str, outage: threading.Event,
                 stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.keys, self.tag = port, keys, tag
        self.outage, self.stop = outage, stop
        # Last acknowledged state per key: bytes, or None after a delete.
        self.acked: Dict[str, Optional[bytes]] = {}
        # States sent after the last acknowledged one, whose replies the
        # kill cut off.
        self.in_doubt: Dict[str, List[Optional[bytes]]] = {}
        self.sets = 0
        self.deletes = 0
        self.errors: List[str] = []
        self.seq = 0

    def run(self) -> None:
        rnd = random.Random(self.tag)
        written_since_outage = set()
        window: list = []
        answered = 0
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while not self.stop.is_set():
                window, answered = [], 0
                out = []
                for _ in range(WINDOW):
                    key = rnd.choice(self.keys)
                    if self.outage.is_set() and key in written_since_outage and rnd.random() < 0.1:
                        window.append((key, None))
                        out.append(b"delete %s\r\n" % key.encode())
                        continue
                    self.seq += 1
                    value = b"%s:%s:%d:%s" % (key.encode(), self.tag.encode(), self.seq,
                                              b"v" * rnd.randrange(0, 64))
                    window.append((key, value))
                    out.append(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))
                    if self.outage.is_set():
                        written_since_outage.add(key)
                sock.sendall(b"".join(out))
                while answered < len(window):
                    while b"\r\n" not in buf:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionResetError("EOF")
                        buf += chunk
                    line, buf = buf.split(b"\r\n", 1)
                    key, state = window[answered]
                    answered += 1
                    if state is not None and line == b"STORED":
                        self.sets += 1
                    elif state is None and line in (b"DELETED", b"NOT_FOUND"):
                        self.deletes += 1
                    else:
                        # Not acknowledged: its effect is unknown.
                        self.errors.append("%s: %r" % (key, line))
                        self.in_doubt.setdefault(key, []).append(state)
                        continue
                    self.acked[key] = state
                    self.in_doubt.pop(key, None)
        except OSError:
            # memroute was killed: what was sent and not answered is in
            # doubt (it may or may not have been taken).
            for key, state in window[answered:]:
                self.in_doubt.setdefault(key, []).append(state)
        finally:
            sock.close()


@dataclass
class Outcome:
    spool: bool
    fsync: str
    sets: int = 0
    deletes: int = 0
    keys: int = 0
    in_doubt_keys: int = 0
    lost: List[str] = field(default_factory=list)
    replayed: int = 0
    errors: List[str] = field(default_factory=list)
    seconds_writing: float = 0.0
    drain_seconds: float = 0.0

    @property
    def acked(self) -> int:
        return self.sets + self.deletes

    def summary(self) -> str:
        return ("%s: %d acknowledged writes (%d sets, %d deletes, %.0f/s) over %d keys; "
                "%d keys with replies cut off by the kill; replayed %d; keys not at their "
                "last acknowledged state: %d; drained in %.1f s"
                % ("spool fsync=%s" % self.fsync if self.spool else "no spool", self.acked,
                   self.sets, self.deletes, self.acked / max(self.seconds_writing, 0.001),
                   self.keys, self.in_doubt_keys, self.replayed, len(self.lost),
                   self.drain_seconds))


def fast_db_path(fallback: Path) -> Path:
    """Where a persistent DynamoDB Local keeps its tables: on tmpfs when
    there is one. DynamoDB Local's SQLite syncs every write, which on a disk
    makes it drain a deep queue at a few dozen writes a second; the spool
    under test stays on the disk. The caller removes the directory."""
    import tempfile
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path(tempfile.mkdtemp(prefix="memroute-ddb-", dir="/dev/shm"))
    return fallback


def scan(ddb: DynamoLocal, table: str) -> Dict[str, Optional[bytes]]:
    items: Dict[str, Optional[bytes]] = {}
    start = None
    while True:
        body = {"TableName": table, "ConsistentRead": True}
        if start:
            body["ExclusiveStartKey"] = start
        page = ddb.call("Scan", body)
        for item in page.get("Items", []):
            items[item["id"]["S"]] = base64.b64decode(item["value"]["B"])
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def stat(handle, field_name: str) -> int:
    with handle.client() as c:
        return int(stats_dict(c).get("crash_" + field_name, "0"))


def start_memroute(startfile: Path, ddb: DynamoLocal, table: str, workdir: Path,
                   spool_dir: Optional[Path], fsync: str):
    binary = memroute_bin()
    if binary is None:
        raise RuntimeError("memroute binary not found (cargo build)")
    extra = {"SPOOL_FSYNC": fsync}
    if spool_dir is not None:
        extra["SPOOL_DIR"] = str(spool_dir)
    env = dynamo_env(ddb, table, **extra)
    if spool_dir is None:
        env.pop("SPOOL_DIR", None)
    # Default flags: no -v.
    return start_server("memroute", str(binary), ["--config", str(startfile), "-t", "2"],
                        workdir, env=env, ready_timeout=30)


def crash_cycle(ddb: DynamoLocal, table: str, workdir: Path, spool_dir: Optional[Path],
                fsync: str = "always", writers: int = 4, keys_per_writer: int = 150,
                before_outage: float = 1.0, during_outage: float = 3.0,
                drain_timeout: float = 40.0, expected: Optional[dict] = None) -> Outcome:
    """One kill -9 cycle. ``ddb`` must be persistent (db_path) and running;
    it is killed and restarted. ``expected`` (key -> allowed states) carries
    what earlier cycles acknowledged, for keys this cycle does not touch."""
    startfile = workdir / "spool-crash.lua"
    startfile.write_text(STARTFILE)
    outcome = Outcome(spool=spool_dir is not None, fsync=fsync)
    mr = start_memroute(startfile, ddb, table, workdir, spool_dir, fsync)
    outage, stop = threading.Event(), threading.Event()
    ws = [Writer(mr.port, ["k%d_%d" % (w, i) for i in range(keys_per_writer)],
                 "%s-%d-%d" % (table, w, random.randrange(1 << 30)), outage, stop)
          for w in range(writers)]
    t0 = time.monotonic()
    try:
        for w in ws:
            w.start()
        time.sleep(before_outage)
        ddb.kill()  # the table goes away: acknowledged writes pile up
        outage.set()
        time.sleep(during_outage)
        os.kill(mr.pid, signal.SIGKILL)  # while the writers are still sending
        mr.proc.wait(10)
        outcome.seconds_writing = time.monotonic() - t0
        for w in ws:
            w.join(30)
    finally:
        stop.set()
        if mr.proc.poll() is None:
            mr.proc.kill()
            mr.proc.wait(10)
    ddb.start()  # same port, same files
    mr2 = start_memroute(startfile, ddb, table, workdir, spool_dir, fsync)
    try:
        t1 = time.monotonic()
        deadline = t1 + drain_timeout
        while stat(mr2, "queue_depth") > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        outcome.drain_seconds = time.monotonic() - t1
        if spool_dir is not None:
            outcome.replayed = stat(mr2, "spool_replayed")
        assert stat(mr2, "queue_depth") == 0, "the queue did not drain in %.0f s" % drain_timeout
    finally:
        mr2.stop(expect_clean=False)
    table_now = scan(ddb, table)
    allowed = dict(expected or {})
    for w in ws:
        outcome.sets += w.sets
        outcome.deletes += w.deletes
        outcome.errors += w.errors
        for key in set(w.acked) | set(w.in_doubt):
            states = [w.acked[key]] if key in w.acked else list(allowed.get(key, [None]))
            states += w.in_doubt.get(key, [])
            allowed[key] = states
            if w.in_doubt.get(key):
                outcome.in_doubt_keys += 1
    outcome.keys = len(allowed)
    for key, states in sorted(allowed.items()):
        if table_now.get(key) not in states:
            outcome.lost.append(key)
    if expected is not None:
        # Next cycle: what is in the table now is what was acknowledged
        # (or one of the cut-off states, now settled).
        expected.clear()
        expected.update({k: [table_now.get(k)] for k in allowed})
    return outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--fsync", default="always")
    ap.add_argument("--no-spool", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import tempfile
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="spool-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = fast_db_path(workdir / "db")
    ddb = DynamoLocal(workdir / "ddb", db_path=db_path).start()
    spool_dir = None if args.no_spool else workdir / "spool"
    table = "soak%d" % random.randrange(1 << 30)
    expected: dict = {}
    totals = Outcome(spool=spool_dir is not None, fsync=args.fsync)
    failed = 0
    try:
        for cycle in range(1, args.cycles + 1):
            o = crash_cycle(ddb, table, workdir, spool_dir, args.fsync, expected=expected)
            print("cycle %d: %s" % (cycle, o.summary()), flush=True)
            if o.lost:
                failed += 1
                print("  lost: %s" % o.lost[:10], flush=True)
            totals.sets += o.sets
            totals.deletes += o.deletes
            totals.lost += o.lost
            totals.replayed += o.replayed
            totals.seconds_writing += o.seconds_writing
    finally:
        ddb.stop()
        shutil.rmtree(db_path, ignore_errors=True)
    print("spool and logs in %s" % workdir)
    print("total over %d cycles: %d acknowledged writes, %d replayed, %d keys lost "
          "(%d cycles with loss)" % (args.cycles, totals.acked, totals.replayed,
                                     len(totals.lost), failed))
    return 1 if failed and not args.no_spool else 0


if __name__ == "__main__":
    sys.exit(main())

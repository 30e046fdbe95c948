"""memroute's error lines are memcached's: the one table of them
(``crates/memroute-proto/src/errors.rs``, ``ErrorReply``) is read here, and
each line it marks as memcached's is provoked from the real memcached and
from memroute, which must both answer with exactly the table's text.

A line memcached 1.6.18 (the reference server here) cannot be made to send
is listed with why and where memcached's source has it; every variant of the
table must be in one list or the other, so a new entry cannot go untested.

Run alone with: python3 -m pytest tests/test_error_texts.py -q
"""

import re
from pathlib import Path

import pytest

TABLE = Path(__file__).resolve().parent.parent / "crates/memroute-proto/src/errors.rs"

ENTRY = re.compile(r'^\s*(\w+) = "((?:[^"\\]|\\.)*)", (true|false);$', re.M)


def table():
    """{variant: (text, from_memcached)} as errors.rs declares them."""
    entries = {m.group(1): (m.group(2), m.group(3) == "true")
               for m in ENTRY.finditer(TABLE.read_text())}
    assert len(entries) > 20, "the table's format changed: %s" % TABLE
    return entries


KEY_OF_41 = b"O" + b"1" * 40

# variant -> (setup sent first, its replies ignored; the request; bytes of
# data following the request that memcached swallows with it)
PROVOKE = {
    "Error": (b"", b"bogus\r\n"),
    "BadFormat": (b"", b"set a 0 0 -1\r\n"),
    "BadChunk": (b"", b"set a 0 0 1\r\nxy\r\n"),
    "BadExptime": (b"", b"touch a abc\r\n"),
    "BadDelta": (b"", b"incr a abc\r\n"),
    "NonNumeric": (b"set n 0 0 1\r\nx\r\n", b"incr n 1\r\n"),
    "DuplicateFlag": (b"", b"mg a v O12 O13\r\n"),
    "InvalidFlag": (b"", b"mg a zz\r\n"),
    "InvalidOrDuplicateFlag": (b"", b"md a zz\r\n"),
    "BadToken": (b"", b"mg a Tabc\r\n"),
    # Flag errors of `ma` and `md` all read "invalid or duplicate flag";
    # `mg` and `ms` name the problem.
    "BadModeLength": (b"", b"mg a MII\r\n"),
    "BadInitial": (b"", b"mg a Jx\r\n"),
    "BadDeltaValue": (b"", b"mg a Dx\r\n"),
    "OpaqueTooLong": (b"", b"mg a " + KEY_OF_41 + b"\r\n"),
    "BadSetMode": (b"", b"ms a 2 MX\r\nhi\r\n"),
    "BadArithMode": (b"", b"ma a MX\r\n"),
    "KeyDecode": (b"", b"mg !!!! b\r\n"),
    "GetOptionsTooLong": (b"", b"mg a" + b" v" * 18 + b"\r\n"),
    "OptionsTooLong": (b"", b"md a" + b" q" * 18 + b"\r\n"),
    "TooLarge": (b"", b"set big 0 0 %d\r\n%s\r\n" % (2 << 20, b"x" * (2 << 20))),
    "DeleteUsage": (b"", b"delete a 5\r\n"),
    "Shutdown": (b"", b"shutdown\r\n"),
}

# Lines memroute sends as memcached 1.6.45 does, where 1.6.18 (the
# reference server here) still said something else: what 1.6.18 answers,
# and where 1.6.45's source has the table's text.
CHANGED_IN_1645 = {
    "Shutdown": (b"ERROR: shutdown not enabled\r\n", "proto_text.c: process_shutdown_command"),
}

# memcached's own lines this test cannot make 1.6.18 send, and why.
NOT_PROVOKED = {
    "NoMemoryStoring": "needs memcached's slab memory exhausted (do_store_item, "
                       "out_of_memory in proto_text.c)",
    "NoMemory": "needs memcached's memory exhausted for incr, or its proxy's "
                "buffer memory limit (proxy_request.c)",
    "ActiveLimit": "memcached's proxy (proxy_request.c), which 1.6.18 here runs without",
    "NoMemoryForReply": "needs memcached unable to allocate a get response "
                        "(proto_text.c: process_get_command)",
    "LuaFailure": "memcached's proxy (proxy_lua.c), which 1.6.18 here runs without",
}


def test_every_memcached_line_is_provoked_or_explained():
    ours = {name for name, (_, from_memcached) in table().items() if from_memcached}
    covered = set(PROVOKE) | set(NOT_PROVOKED)
    assert ours == covered, "untested: %s; stale: %s" % (ours - covered, covered - ours)


@pytest.mark.parametrize("variant", sorted(PROVOKE))
def test_memcached_sends_the_tables_text(server, variant):
    text, from_memcached = table()[variant]
    assert from_memcached
    setup, request = PROVOKE[variant]
    with server.client() as c:
        if setup:
            c.send(setup)
            c.read_available()
        c.send(request)
        line = c.read_line()
    if server.kind == "memcached" and variant in CHANGED_IN_1645:
        assert line == CHANGED_IN_1645[variant][0], line
        return
    assert line == text.encode() + b"\r\n", "%s answered %r" % (server.kind, line)

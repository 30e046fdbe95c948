"""Table-driven protocol conversations, run against real memcached 1.6.18 AND
memroute (embedded cache mode): every row must pass on both, which proves
byte-for-byte compatibility of the text and meta protocols.

A row is ``Conv(id, steps, after)``:

* ``steps`` is a list of ``(send_bytes, expected_reply)`` tuples sent in order
  on ONE fresh connection.  ``expected_reply`` is either exact ``bytes``
  (``b""`` = the server must send nothing, checked by the trailing liveness
  probe) or ``Re(pattern)`` for replies with variable content (cas values,
  version, stats, remaining TTLs).  Named groups of a ``Re`` are captured and
  substituted as ``{name}`` into later steps (both the bytes sent and the
  expected patterns), e.g. a cas unique read by ``gets`` and then used by
  ``cas``.  A step may also be ``Sleep(seconds)``.
* ``after`` records whether memcached keeps the connection open after the
  last step: ``OPEN`` (the test then sends ``mn`` and requires exactly
  ``MN``, which also proves no stray bytes were sent) or ``CLOSED`` (the test
  requires EOF, or RST, with no further bytes).

Before each row the server is emptied with ``flush_all`` on another
connection.  All expected bytes were taken from memcached 1.6.18 (Debian 12,
``memcached -U 0 -l 127.0.0.1 -p PORT``); run with
``MEMROUTE_TEST_SERVERS=memcached`` to re-verify the table alone.

Rows made with ``N(...)`` are marked ``differs_from_1_6_18``: memcached
1.6.45 answers them differently from 1.6.18, memroute follows 1.6.45, and
the row's steps are 1.6.45's.  No 1.6.45 server runs here, so such a row runs
against memroute only; its ``source`` names the memcached 1.6.45 source file
that shows the behaviour, and its ``was`` steps (1.6.18's answer) run against
the reference memcached in ``test_recorded_1_6_18_answer`` so each marked
difference is shown to be real.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from typing import Optional, List, Tuple, Union

import pytest

from conftest import Closed, RawClient, ReadTimeout

OPEN = "open"
CLOSED = "closed"


class Re:
    """Expected reply with variable content: a bytes regex (DOTALL).

    The reply is read until a prefix of the stream that ends at a newline
    fully matches the pattern."""

    def __init__(self, pattern: bytes):
        self.pattern = pattern

    def __repr__(self):
        return "Re(%r)" % self.pattern


@dataclass
class Sleep:
    seconds: float


Step = Union[Tuple[bytes, Union[bytes, Re]], Sleep]


@dataclass
class Conv:
    id: str
    steps: List[Step]
    after: str = OPEN
    slow: bool = False
    # Steps memroute must follow instead, where it deliberately differs
    # from memcached 1.6.18, and why (see docs/compatibility.md).
    memroute: Optional[List[Step]] = None
    why: str = ""
    # Set by N(): the steps are memcached 1.6.45's, which differ from
    # 1.6.18's; the row runs against memroute only.
    differs_from_1_6_18: Optional[Newer] = None


@dataclass
class Newer:
    """The 1.6.18 side of a row where memcached 1.6.45 differs."""
    source: str
    was: List[Step]
    was_after: str = OPEN


def D(id, memcached_steps, memroute_steps, why):
    """A row where memroute deliberately differs from memcached 1.6.18."""
    assert why, "a deliberate difference needs a reason"
    return Conv(id, memcached_steps, memroute=memroute_steps, why=why)


NEWER = "memroute implements this flag/mode as memcached >= 1.6.21 does; 1.6.18 lacks it"

# memcached 1.6.45 sources that show the behaviour of an N() row.
# process_request() and the _process_request_*() helpers: arity, length
# and noreply of every classic command, and the shortest line.
PARSER = "proto_parser.c: process_request"
# process_update_cmd_start(): key, flags, exptime and cas checks of a
# storage command; proto_text.c's process_update_command() then swallows the
# data block.
UPDATE = "proto_parser.c: process_update_cmd_start + proto_text.c: process_update_command"
# The handlers that read their arguments (and ignore later tokens).
HANDLERS = "proto_parser.c: process_arithmetic_cmd/process_touch_cmd"
TEXT = "proto_text.c: process_command_ascii and its text_cmd_entries handlers"


def N(id, steps, was, source, after=OPEN, was_after=None):
    """A row where memcached 1.6.45 differs from 1.6.18: ``steps`` are what
    1.6.45 (and memroute) answer, per ``source``; ``was`` is what 1.6.18
    answers on the same input."""
    assert source
    return Conv(id, steps, after,
                differs_from_1_6_18=Newer(source, was, was_after or after))


def C(id, send, expect=None, after=OPEN, slow=False):
    """Shorthand: C(id, send, expect) for one step, C(id, [steps]) for many."""
    if expect is None and isinstance(send, list):
        return Conv(id, send, after, slow)
    return Conv(id, [(send, expect)], after, slow)


K250 = b"k" * 250
K251 = b"k" * 251
MIB = 1024 * 1024
BIG = 2 * MIB  # certainly larger than memcached's default 1 MiB item limit
CAS = rb"(?P<cas>[0-9]+)"  # capture a cas unique
NUM = rb"[0-9]+"


def b64(key: bytes) -> bytes:
    return base64.b64encode(key)


def _set(key=b"a", value=b"x", flags=b"0"):
    """A set step that must answer STORED."""
    return (b"set %s %s 0 %d\r\n%s\r\n" % (key, flags, len(value), value), b"STORED\r\n")


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------

ROWS: List[Conv] = [
    # ---------------------------------------------------------------- basics
    C("version", b"version\r\n", Re(rb"VERSION [^\r\n]+\r\n")),
    C("version_extra_token", b"version x\r\n", Re(rb"VERSION [^\r\n]+\r\n")),
    C("unknown_command", b"bogus\r\n", b"ERROR\r\n"),
    C("unknown_command_with_args", b"bogus a b c\r\n", b"ERROR\r\n"),
    C("uppercase_command_is_unknown", b"GET a\r\n", b"ERROR\r\n"),
    N("empty_line", [(b"\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"\r\n", b"ERROR\r\n")], PARSER),
    # memcached 1.6.45 refuses any line under 4 bytes with its newline.
    N("line_under_4_bytes", [(b"xy\n", b"CLIENT_ERROR bad command line format\r\n"),
                             (b"x\r\n", b"CLIENT_ERROR bad command line format\r\n"),
                             (b"xy\r\n", b"ERROR\r\n")],
      [(b"xy\n", b"ERROR\r\n"), (b"x\r\n", b"ERROR\r\n"), (b"xy\r\n", b"ERROR\r\n")], PARSER),
    C("bare_lf_line_endings", [
        (b"set n 0 0 1\nx\r\nget n\n", b"STORED\r\nVALUE n 0 1\r\nx\r\nEND\r\n"),
    ]),
    C("leading_and_repeated_spaces", [
        (b"set  a  0  0  1\r\nx\r\n", b"STORED\r\n"),
        (b" get a \r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
    ]),
    N("tab_is_not_a_separator",
      [(b"set a\t0 0 1\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      [(b"set a\t0 0 1\r\nxx\r\n", b"ERROR\r\nERROR\r\n")], PARSER),
    C("cr_before_crlf_is_part_of_key", [
        _set(b"a"),
        (b"get a\r\r\n", b"END\r\n"),
    ]),
    # memcaslap's keys start with eight 0x10 bytes: control characters in
    # keys are accepted, as memcached accepts them.
    C("control_characters_in_key", [
        (b"set \x10\x10k 0 0 1\r\nx\r\n", b"STORED\r\n"),
        (b"get \x10\x10k\r\n", b"VALUE \x10\x10k 0 1\r\nx\r\nEND\r\n"),
    ]),
    # memcached 1.6.18 reads a command line as a C string, cut at a NUL
    # (so `set a<NUL>b 0 0 1` is `set a` and its data the next command);
    # 1.6.45 reads it by length. memroute refuses the line, as a bad key.
    D("nul_byte_in_a_command_line", [
        _set(b"a"),
        (b"set a\x00b 0 0 1\r\n", b"ERROR\r\n"),
        (b"x\r\n", b"ERROR\r\n"),
        (b"get a\x00b c\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
        (b"mg a\x00b v\r\n", b"HD\r\n"),
        (b"delete a\x00zz noreply\r\n", b"DELETED\r\n"),
        (b"get a\r\n", b"END\r\n"),
    ], [
        _set(b"a"),
        (b"set a\x00b 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"get a\x00b c\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"mg a\x00b v\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"delete a\x00zz noreply\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
    ], "a proxy cannot know whether its backend cuts the line at the NUL (1.6.18) or "
       "not (1.6.45); one that does would answer two requests where one was sent, and "
       "the second reply would go to another client (docs/reliability.md)"),
    C("stats", b"stats\r\n", Re(rb"(STAT [^\r\n]+\r\n)+END\r\n")),
    C("quit", b"quit\r\n", b"", after=CLOSED),
    C("quit_with_argument", b"quit x\r\n", b"", after=CLOSED),
    C("quit_pipelined_rest_ignored", b"set q 0 0 1\r\nx\r\nquit\r\nget q\r\n", b"STORED\r\n",
      after=CLOSED),

    # --------------------------------------------------------- HTTP guard
    # memcached hangs up, with no reply, on an unknown command whose last
    # token starts with HTTP/ (a browser's request line): 1.6.45 as 1.6.18
    # (proto_text.c, process_command_ascii, in both).
    C("http_get_closes_silently", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"",
      after=CLOSED),
    C("http_post_closes_silently", b"POST /x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"",
      after=CLOSED),
    C("http_delete_closes_silently", b"DELETE HTTP/1.1\r\n", b"", after=CLOSED),
    C("http_rest_of_pipeline_ignored", b"PUT /a/b HTTP/1.1\r\nmn\r\n", b"", after=CLOSED),
    C("http_lowercase_get_is_a_get", b"get / HTTP/1.1\r\n", b"END\r\n"),
    C("http_version_not_last_is_unknown", b"GET HTTP/1.1 /\r\n", b"ERROR\r\n"),
    C("http_lowercase_version_is_unknown", b"GET / http/1.1\r\n", b"ERROR\r\n"),
    # 1.6.45 checks any command its parser does not know (1.6.18 only those
    # not starting with one of its command letters) and needs two tokens.
    N("http_unknown_command_with_known_first_letter_closes", [(b"gxx / HTTP/1.1\r\n", b"")],
      [(b"gxx / HTTP/1.1\r\n", b"ERROR\r\n")], TEXT, after=CLOSED, was_after=OPEN),
    N("http_unknown_two_letter_m_command_closes", [(b"mx / HTTP/1.1\r\n", b"")],
      [(b"mx / HTTP/1.1\r\n", b"ERROR\r\n")], TEXT, after=CLOSED, was_after=OPEN),
    N("http_version_alone_is_unknown", [(b"HTTP/1.1\r\n", b"ERROR\r\n")],
      [(b"HTTP/1.1\r\n", b"")], TEXT, after=OPEN, was_after=CLOSED),

    # ------------------------------------------------------------ get / gets
    C("get_miss", b"get a\r\n", b"END\r\n"),
    C("get_hit", [_set(b"a", b"hello", b"5"), (b"get a\r\n", b"VALUE a 5 5\r\nhello\r\nEND\r\n")]),
    N("get_no_key", [(b"get\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"get\r\n", b"ERROR\r\n")], PARSER),
    N("gets_no_key", [(b"gets\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"gets\r\n", b"ERROR\r\n")], PARSER),
    C("multiget_hits_and_misses_in_order", [
        _set(b"a", b"1"), _set(b"c", b"333", b"3"),
        (b"get a b c a d\r\n",
         b"VALUE a 0 1\r\n1\r\nVALUE c 3 3\r\n333\r\nVALUE a 0 1\r\n1\r\nEND\r\n"),
    ]),
    C("multiget_all_miss", b"get x y z\r\n", b"END\r\n"),
    C("multiget_more_than_24_tokens", [
        _set(b"a"),
        (b"get" + b" a" * 30 + b"\r\n", b"VALUE a 0 1\r\nx\r\n" * 30 + b"END\r\n"),
    ]),
    C("multiget_line_longer_than_2048", [
        _set(b"k7", b"seven"), _set(b"k499", b"last"),
        (b"get " + b" ".join(b"k%d" % i for i in range(500)) + b"\r\n",
         b"VALUE k7 0 5\r\nseven\r\nVALUE k499 0 4\r\nlast\r\nEND\r\n"),
    ]),
    C("multiget_long_line_split_across_writes", [
        _set(b"k1"),
        (b"get " + b" ".join(b"k%d" % i for i in range(600)), b""),
        (b" k1\r\n", b"VALUE k1 0 1\r\nx\r\nVALUE k1 0 1\r\nx\r\nEND\r\n"),
    ]),
    C("gets_returns_cas", [
        _set(b"a"),
        (b"gets a\r\n", Re(rb"VALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"gets a b a\r\n", b"VALUE a 0 1 {cas}\r\nx\r\nVALUE a 0 1 {cas}\r\nx\r\nEND\r\n"),
    ]),
    C("get_key_250_ok", [_set(K250), (b"get " + K250 + b"\r\n",
                                      b"VALUE " + K250 + b" 0 1\r\nx\r\nEND\r\n")]),
    C("get_key_251_too_long", b"get " + K251 + b"\r\n",
      b"CLIENT_ERROR bad command line format\r\n"),
    C("multiget_with_too_long_key_drops_earlier_hits", [
        _set(b"a"),
        (b"get a " + K251 + b" a\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    ]),
    C("get_empty_value", [(b"set e 0 0 0\r\n\r\n", b"STORED\r\n"),
                          (b"get e\r\n", b"VALUE e 0 0\r\n\r\nEND\r\n")]),
    C("get_binary_value_with_crlf_and_nul", [
        (b"set bin 0 0 6\r\n\r\n\x00\xff\r\n\r\n", b"STORED\r\n"),
        (b"get bin\r\n", b"VALUE bin 0 6\r\n\r\n\x00\xff\r\n\r\nEND\r\n"),
    ]),

    # --------------------------------------------------------------- storage
    C("set_stored", b"set a 0 0 1\r\nx\r\n", b"STORED\r\n"),
    C("set_overwrites", [_set(b"a", b"x"), _set(b"a", b"yy", b"9"),
                         (b"get a\r\n", b"VALUE a 9 2\r\nyy\r\nEND\r\n")]),
    C("set_max_flags", [_set(b"a", b"x", b"4294967295"),
                        (b"get a\r\n", b"VALUE a 4294967295 1\r\nx\r\nEND\r\n")]),
    C("set_flags_2_pow_32_wraps_to_0", [_set(b"a", b"x", b"4294967296"),
                                         (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n")]),
    C("set_sixth_token_not_noreply_still_replies", b"set a 0 0 1 2\r\nx\r\n", b"STORED\r\n"),
    # A line with too few tokens or a refused length: 1.6.45's parser
    # answers before reading the rest, shows the error even with noreply,
    # and swallows nothing (1.6.18: ERROR for the token count).
    N("set_too_few_tokens", [(b"set a 0 0\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"set a 0 0\r\n", b"ERROR\r\n")], PARSER),
    N("storage_commands_without_arguments", [
        (b"%s\r\n" % cmd, b"CLIENT_ERROR bad command line format\r\n")
        for cmd in (b"set", b"add", b"replace", b"append", b"prepend", b"cas")
    ], [(b"%s\r\n" % cmd, b"ERROR\r\n")
        for cmd in (b"set", b"add", b"replace", b"append", b"prepend", b"cas")], PARSER),
    # Tokens after the arguments are ignored; noreply is the last token.
    N("set_too_many_tokens", [(b"set a 0 0 1 noreply extra\r\nx\r\n", b"STORED\r\n")],
      [(b"set a 0 0 1 noreply extra\r\nx\r\n", b"ERROR\r\nERROR\r\n")], PARSER),
    N("set_noreply_is_the_last_token", [(b"set a 0 0 1 x y noreply\r\nx\r\n", b""),
                                        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n")],
      [(b"set a 0 0 1 x y noreply\r\nx\r\n", b"ERROR\r\nERROR\r\n")], PARSER),
    # A bad key, flags or exptime: the data block is swallowed.
    N("set_negative_flags", [(b"set a -1 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"set a -1 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    N("set_non_numeric_flags", [(b"set a abc 0 2\r\nxx\r\n",
                                 b"CLIENT_ERROR bad command line format\r\n")],
      [(b"set a abc 0 2\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    N("set_non_numeric_exptime", [(b"add a 0 abc 2\r\nxx\r\n",
                                   b"CLIENT_ERROR bad command line format\r\n")],
      [(b"add a 0 abc 2\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    N("set_bad_token_swallows_data_that_looks_like_a_command", [
        (b"set a 0x1 0 5\r\nmn\r\nx\r\nmn\r\n", b"CLIENT_ERROR bad command line format\r\nMN\r\n"),
    ], [
        (b"set a 0x1 0 5\r\nmn\r\nx\r\nmn\r\n",
         b"CLIENT_ERROR bad command line format\r\nMN\r\nERROR\r\nMN\r\n"),
    ], UPDATE),
    C("set_non_numeric_length", b"set a 0 0 abc\r\nxx\r\n",
      b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    C("set_negative_length", b"set a 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("set_length_over_int_max_minus_2", b"set a 0 0 2147483646\r\n",
      b"CLIENT_ERROR bad command line format\r\n"),
    # 1.6.45 reads the length as a whole token: no +, no wrapping past
    # 32 bits, at most 11 bytes.
    N("set_length_with_plus_sign", [(b"set a 0 0 +2\r\nxx\r\n",
                                     b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      [(b"set a 0 0 +2\r\nxx\r\n", b"STORED\r\n")], PARSER),
    N("set_length_2_pow_32_plus_2", [(b"set a 0 0 4294967298\r\nxx\r\n",
                                      b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      [(b"set a 0 0 4294967298\r\nxx\r\n", b"STORED\r\n")], PARSER),
    N("set_length_over_11_bytes", [(b"set a 0 0 000000000002\r\nxx\r\n",
                                    b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      [(b"set a 0 0 000000000002\r\nxx\r\n", b"STORED\r\n")], PARSER),
    N("set_length_lone_minus_is_zero", [(b"set a 0 0 -\r\n\r\n", b"STORED\r\n"),
                                        (b"get a\r\n", b"VALUE a 0 0\r\n\r\nEND\r\n")],
      [(b"set a 0 0 -\r\n\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      PARSER),
    C("set_key_250_ok", b"set " + K250 + b" 0 0 1\r\nx\r\n", b"STORED\r\n"),
    N("set_key_251_too_long_swallows_data", [(b"set " + K251 + b" 0 0 1\r\nx\r\n",
                                              b"CLIENT_ERROR bad command line format\r\n")],
      [(b"set " + K251 + b" 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    N("set_length_with_trailing_cr", [(b"set a 0 0 2\r\r\nxx\r\n",
                                       b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      [(b"set a 0 0 2\r\r\nxx\r\n", b"STORED\r\n")], PARSER),
    C("bad_data_chunk_data_longer_than_declared", [
        (b"set a 0 0 1\r\nxyzzy\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        (b"get a\r\n", b"END\r\n"),
    ]),
    N("bad_data_chunk_rest_is_an_empty_line", [
        (b"set a 0 0 1\r\nxyz\r\n",
         b"CLIENT_ERROR bad data chunk\r\nCLIENT_ERROR bad command line format\r\n"),
    ], [
        (b"set a 0 0 1\r\nxyz\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    ], PARSER),
    C("bad_data_chunk_data_shorter_than_declared", [
        (b"set a 0 0 5\r\nx\r\nget ab\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    ]),
    C("bad_data_chunk_lf_only_terminator", [
        (b"set n 0 0 1\r\nx\nget n\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    ]),
    C("object_too_large_swallowed", [
        (b"set big 0 0 %d\r\n" % BIG + b"a" * BIG + b"\r\n",
         b"SERVER_ERROR object too large for cache\r\n"),
        (b"get big\r\n", b"END\r\n"),
    ]),
    C("object_of_exactly_1mib_too_large", [
        (b"set big 0 0 %d\r\n" % MIB + b"a" * MIB + b"\r\n",
         b"SERVER_ERROR object too large for cache\r\n"),
    ]),
    C("object_of_1000000_bytes_ok", [
        (b"set big 0 0 1000000\r\n" + b"b" * 1000000 + b"\r\n", b"STORED\r\n"),
        (b"get big\r\n", b"VALUE big 0 1000000\r\n" + b"b" * 1000000 + b"\r\nEND\r\n"),
    ]),
    C("object_too_large_set_removes_old_value", [
        _set(b"old"),
        (b"set old 0 0 %d\r\n" % BIG + b"a" * BIG + b"\r\n",
         b"SERVER_ERROR object too large for cache\r\n"),
        (b"get old\r\n", b"END\r\n"),
    ]),
    *[C("object_too_large_%s_keeps_old_value" % cmd.decode(), [
        _set(b"old"),
        (b"%s old 0 0 %d%s\r\n" % (cmd, BIG, b" 1" if cmd == b"cas" else b"") + b"a" * BIG + b"\r\n",
         b"SERVER_ERROR object too large for cache\r\n"),
        (b"get old\r\n", b"VALUE old 0 1\r\nx\r\nEND\r\n"),
    ]) for cmd in (b"add", b"replace", b"append", b"prepend", b"cas")],
    C("object_too_large_noreply_silent", [
        (b"set big 0 0 %d noreply\r\n" % BIG + b"a" * BIG + b"\r\n", b""),
    ]),
    C("object_too_large_value_also_malformed", [
        (b"set big 0 0 %d\r\n" % BIG + b"a" * BIG + b"XXXX\r\n",
         b"SERVER_ERROR object too large for cache\r\nERROR\r\n"),
    ]),
    C("add_new", [(b"add a 0 0 1\r\nx\r\n", b"STORED\r\n")]),
    C("add_existing", [_set(b"a"), (b"add a 0 0 1\r\ny\r\n", b"NOT_STORED\r\n"),
                       (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n")]),
    C("replace_missing", b"replace a 0 0 1\r\ny\r\n", b"NOT_STORED\r\n"),
    C("replace_existing", [_set(b"a"), (b"replace a 5 0 2\r\nyy\r\n", b"STORED\r\n"),
                           (b"get a\r\n", b"VALUE a 5 2\r\nyy\r\nEND\r\n")]),
    C("append_missing", b"append a 0 0 1\r\ny\r\n", b"NOT_STORED\r\n"),
    C("prepend_missing", b"prepend a 0 0 1\r\ny\r\n", b"NOT_STORED\r\n"),
    C("append_prepend_keep_flags", [
        _set(b"d", b"yy", b"5"),
        (b"append d 9 0 1\r\nA\r\n", b"STORED\r\n"),
        (b"prepend d 9 0 1\r\nP\r\n", b"STORED\r\n"),
        (b"get d\r\n", b"VALUE d 5 4\r\nPyyA\r\nEND\r\n"),
    ]),
    C("cas_missing", b"cas a 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n"),
    C("cas_mismatch_then_match", [
        _set(b"a"),
        (b"gets a\r\n", Re(rb"VALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"set a 0 0 1\r\ny\r\n", b"STORED\r\n"),
        (b"cas a 0 0 1 {cas}\r\nz\r\n", b"EXISTS\r\n"),
        (b"gets a\r\n", Re(rb"VALUE a 0 1 " + CAS + rb"\r\ny\r\nEND\r\n")),
        (b"cas a 7 0 1 {cas}\r\nz\r\n", b"STORED\r\n"),
        (b"get a\r\n", b"VALUE a 7 1\r\nz\r\nEND\r\n"),
        (b"cas a 0 0 1 {cas}\r\nw\r\n", b"EXISTS\r\n"),
    ]),
    C("cas_after_delete_not_found", [
        _set(b"a"),
        (b"gets a\r\n", Re(rb"VALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"delete a\r\n", b"DELETED\r\n"),
        (b"cas a 0 0 1 {cas}\r\nz\r\n", b"NOT_FOUND\r\n"),
    ]),
    # cas without its compare value is parsed as far as the length, so the
    # data block is swallowed; so is a refused compare value.
    N("cas_missing_unique", [(b"cas a 0 0 2\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"cas a 0 0 2\r\nxx\r\n", b"ERROR\r\nERROR\r\n")], UPDATE),
    N("cas_missing_unique_and_length", [(b"cas a 0 0\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"cas a 0 0\r\n", b"ERROR\r\n")], PARSER),
    N("cas_missing_unique_noreply", [(b"cas a 0 0 2 noreply\r\nxx\r\n", b"")],
      [(b"cas a 0 0 2 noreply\r\nxx\r\n", b"ERROR\r\n")], UPDATE),
    N("cas_non_numeric_unique", [(b"cas a 0 0 2 abc\r\nxx\r\n",
                                  b"CLIENT_ERROR bad command line format\r\n")],
      [(b"cas a 0 0 2 abc\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    N("cas_negative_unique", [(b"cas a 0 0 2 -1\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"cas a 0 0 2 -1\r\nxx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")],
      UPDATE),
    # 1.6.45 reads the compare value as a whole token of digits.
    N("cas_unique_with_plus_sign", [(b"cas a 0 0 2 +1\r\nxx\r\n",
                                     b"CLIENT_ERROR bad command line format\r\n")],
      [(b"cas a 0 0 2 +1\r\nxx\r\n", b"NOT_FOUND\r\n")], UPDATE),
    C("cas_seventh_token_not_noreply_still_replies", b"cas a 0 0 1 1 2\r\nx\r\n",
      b"NOT_FOUND\r\n"),

    # ---------------------------------------------------------------- noreply
    C("set_noreply", [(b"set a 0 0 1 noreply\r\nx\r\n", b""),
                      (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n")]),
    C("add_noreply_success_and_failure", [
        (b"add a 0 0 1 noreply\r\nx\r\n", b""),
        (b"add a 0 0 1 noreply\r\ny\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
    ]),
    C("replace_noreply_success_and_failure", [
        (b"replace a 0 0 1 noreply\r\nx\r\n", b""),
        _set(b"a"),
        (b"replace a 0 0 1 noreply\r\ny\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 1\r\ny\r\nEND\r\n"),
    ]),
    C("append_prepend_noreply", [
        (b"append a 0 0 1 noreply\r\nx\r\n", b""),
        _set(b"a", b"m"),
        (b"append a 0 0 1 noreply\r\nz\r\nprepend a 0 0 1 noreply\r\na\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 3\r\namz\r\nEND\r\n"),
    ]),
    C("cas_noreply", [
        (b"cas a 0 0 1 1 noreply\r\nx\r\n", b""),
        _set(b"a"),
        (b"gets a\r\n", Re(rb"VALUE a 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"cas a 0 0 1 {cas} noreply\r\ny\r\n", b""),
        (b"cas a 0 0 1 {cas} noreply\r\nz\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 1\r\ny\r\nEND\r\n"),
    ]),
    C("noreply_suppresses_client_errors", [
        (b"incr a abc noreply\r\n", b""),
        (b"touch a abc noreply\r\n", b""),
        (b"flush_all abc noreply\r\n", b""),
        (b"verbosity abc noreply\r\n", b""),
    ]),
    # 1.6.45 reads noreply only after the length: a refused length is shown.
    N("noreply_does_not_hide_a_refused_length", [
        (b"set a 0 0 -1 noreply\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"set a 0 0 abc noreply\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    ], [
        (b"set a 0 0 -1 noreply\r\n", b""),
        (b"set a 0 0 abc noreply\r\n", b""),
    ], PARSER),
    N("noreply_hides_a_bad_key_and_swallows_the_data", [
        (b"set " + K251 + b" 0 0 1 noreply\r\nx\r\n", b""),
        (b"cas a 0 0 2 abc noreply\r\nxx\r\n", b""),
    ], [
        (b"set " + K251 + b" 0 0 1 noreply\r\nx\r\n", b"ERROR\r\n"),
        (b"cas a 0 0 2 abc noreply\r\nxx\r\n", b"ERROR\r\n"),
    ], UPDATE),
    C("noreply_bad_data_chunk_suppressed_but_rest_parsed", [
        (b"set a 0 0 1 noreply\r\nxyzzy\r\n", b"ERROR\r\n"),
    ]),
    C("noreply_pipelined_then_get", [
        (b"set a 0 0 1 noreply\r\n1\r\nset b 0 0 1 noreply\r\n2\r\nincr a 5 noreply\r\n"
         b"delete b noreply\r\nget a b\r\n", b"VALUE a 0 1\r\n6\r\nEND\r\n"),
    ]),

    # -------------------------------------------------------------- expiry
    C("exptime_negative_is_expired", [(b"set e 0 -1 1\r\nx\r\n", b"STORED\r\n"),
                                      (b"get e\r\n", b"END\r\n")]),
    C("exptime_30_days_is_relative", [(b"set e 0 2592000 1\r\nx\r\n", b"STORED\r\n"),
                                      (b"get e\r\n", b"VALUE e 0 1\r\nx\r\nEND\r\n")]),
    C("exptime_over_30_days_is_absolute_past", [(b"set e 0 2592001 1\r\nx\r\n", b"STORED\r\n"),
                                                (b"get e\r\n", b"END\r\n")]),
    C("exptime_absolute_future", [
        (b"set e 0 %d 1\r\nx\r\n" % (int(time.time()) + 3600), b"STORED\r\n"),
        (b"get e\r\n", b"VALUE e 0 1\r\nx\r\nEND\r\n"),
    ]),
    C("exptime_1s_expires", [
        (b"set e 0 1 1\r\nx\r\n", b"STORED\r\n"),
        (b"get e\r\n", b"VALUE e 0 1\r\nx\r\nEND\r\n"),
        Sleep(2.2),
        (b"get e\r\n", b"END\r\n"),
    ], slow=True),

    # ------------------------------------------------------------ incr/decr
    C("incr_miss", b"incr a 1\r\n", b"NOT_FOUND\r\n"),
    C("decr_miss", b"decr a 1\r\n", b"NOT_FOUND\r\n"),
    C("incr_decr", [
        _set(b"n", b"10"),
        (b"incr n 5\r\n", b"15\r\n"),
        (b"decr n 3\r\n", b"12\r\n"),
        (b"get n\r\n", b"VALUE n 0 2\r\n12\r\nEND\r\n"),
    ]),
    C("incr_grows_length", [_set(b"n", b"99"), (b"incr n 1\r\n", b"100\r\n"),
                            (b"get n\r\n", b"VALUE n 0 3\r\n100\r\nEND\r\n")]),
    C("decr_shrink_pads_with_spaces", [
        _set(b"n", b"100"), (b"decr n 1\r\n", b"99\r\n"),
        (b"get n\r\n", b"VALUE n 0 3\r\n99 \r\nEND\r\n"),
        (b"incr n 1\r\n", b"100\r\n"),
    ]),
    C("decr_below_zero_clamps", [_set(b"n", b"5"), (b"decr n 100\r\n", b"0\r\n")]),
    C("incr_wraps_at_2_pow_64", [_set(b"n", b"18446744073709551615"), (b"incr n 1\r\n", b"0\r\n")]),
    C("incr_max_delta", [_set(b"n", b"0"),
                         (b"incr n 18446744073709551615\r\n", b"18446744073709551615\r\n")]),
    C("incr_delta_2_pow_64_invalid", [_set(b"n", b"0"), (b"incr n 18446744073709551616\r\n",
                                      b"CLIENT_ERROR invalid numeric delta argument\r\n")]),
    C("incr_negative_delta_invalid", [_set(b"n", b"1"), (b"incr n -1\r\n",
                                      b"CLIENT_ERROR invalid numeric delta argument\r\n")]),
    C("decr_non_numeric_delta_invalid", [_set(b"n", b"1"), (b"decr n abc\r\n",
                                         b"CLIENT_ERROR invalid numeric delta argument\r\n")]),
    C("incr_invalid_delta_on_missing_key", b"incr zz abc\r\n",
      b"CLIENT_ERROR invalid numeric delta argument\r\n"),
    C("incr_non_numeric_value", [_set(b"n", b"ab"), (b"incr n 1\r\n",
                                 b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")]),
    C("incr_value_with_trailing_garbage", [_set(b"n", b"12a"), (b"incr n 1\r\n",
                                           b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")]),
    C("incr_negative_value_non_numeric", [_set(b"n", b"-5"), (b"incr n 1\r\n",
                                          b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")]),
    C("incr_empty_value_non_numeric", [_set(b"n", b""), (b"incr n 1\r\n",
                                       b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")]),
    C("incr_value_with_leading_space", [_set(b"n", b" 12"), (b"incr n 1\r\n", b"13\r\n")]),
    C("decr_value_with_trailing_space", [_set(b"n", b"100 "), (b"decr n 1\r\n", b"99\r\n"),
                                         (b"get n\r\n", b"VALUE n 0 4\r\n99  \r\nEND\r\n")]),
    C("incr_keeps_flags", [_set(b"n", b"1", b"42"), (b"incr n 1\r\n", b"2\r\n"),
                           (b"get n\r\n", b"VALUE n 42 1\r\n2\r\nEND\r\n")]),
    N("incr_missing_delta", [(b"incr n\r\n", b"CLIENT_ERROR bad command line format\r\n"),
                             (b"decr\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"incr n\r\n", b"ERROR\r\n"), (b"decr\r\n", b"ERROR\r\n")], PARSER),
    C("incr_noreply", [_set(b"n", b"1"), (b"incr n 1 noreply\r\ndecr n 5 noreply\r\n", b""),
                       (b"get n\r\n", b"VALUE n 0 1\r\n0\r\nEND\r\n")]),
    C("incr_fourth_token_not_noreply_still_replies", [_set(b"n", b"1"), (b"incr n 1 2\r\n", b"2\r\n")]),
    N("incr_too_many_tokens", [_set(b"n", b"1"), (b"incr n 1 noreply x\r\n", b"2\r\n")],
      [_set(b"n", b"1"), (b"incr n 1 noreply x\r\n", b"ERROR\r\n")], HANDLERS),
    C("incr_key_too_long", b"incr " + K251 + b" 1\r\n", b"CLIENT_ERROR bad command line format\r\n"),

    # ------------------------------------------------------------- touch/gat
    C("touch_miss", b"touch a 10\r\n", b"NOT_FOUND\r\n"),
    C("touch_hit", [_set(b"t"), (b"touch t 10\r\n", b"TOUCHED\r\n")]),
    C("touch_negative_expires", [_set(b"t"), (b"touch t -1\r\n", b"TOUCHED\r\n"),
                                 (b"get t\r\n", b"END\r\n")]),
    N("touch_missing_exptime", [(b"touch t\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"touch t\r\n", b"ERROR\r\n")], PARSER),
    C("touch_invalid_exptime", b"touch t abc\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
    C("touch_noreply", [_set(b"t"), (b"touch t 10 noreply\r\ntouch zz 10 noreply\r\n", b"")]),
    C("touch_fourth_token_not_noreply_still_replies", [_set(b"t"), (b"touch t 10 x\r\n",
                                                                    b"TOUCHED\r\n")]),
    N("touch_too_many_tokens", [_set(b"t"), (b"touch t 10 noreply x\r\n", b"TOUCHED\r\n")],
      [_set(b"t"), (b"touch t 10 noreply x\r\n", b"ERROR\r\n")], HANDLERS),
    C("touch_key_too_long", b"touch " + K251 + b" 10\r\n",
      b"CLIENT_ERROR bad command line format\r\n"),
    C("touch_expires_after_1s", [
        _set(b"t"), (b"touch t 1\r\n", b"TOUCHED\r\n"),
        Sleep(2.2), (b"get t\r\n", b"END\r\n"),
    ], slow=True),
    C("gat_miss", b"gat 100 a\r\n", b"END\r\n"),
    C("gat_hit_keeps_flags", [_set(b"g", b"x", b"3"),
                              (b"gat 100 g zz g\r\n",
                               b"VALUE g 3 1\r\nx\r\nVALUE g 3 1\r\nx\r\nEND\r\n")]),
    C("gats_hit_returns_cas", [
        _set(b"g"),
        (b"gets g\r\n", Re(rb"VALUE g 0 1 " + CAS + rb"\r\nx\r\nEND\r\n")),
        (b"gats 100 g\r\n", b"VALUE g 0 1 {cas}\r\nx\r\nEND\r\n"),
    ]),
    C("gat_negative_returns_then_expires", [
        _set(b"g"), (b"gat -1 g\r\n", b"VALUE g 0 1\r\nx\r\nEND\r\n"),
        (b"get g\r\n", b"END\r\n"),
    ]),
    C("gat_invalid_exptime", b"gat abc a\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
    N("gat_missing_exptime", [(b"gat a\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"gat a\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")], PARSER),
    N("gat_no_args", [(b"gat\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"gat\r\n", b"ERROR\r\n")], PARSER),
    N("gats_no_args", [(b"gats\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"gats\r\n", b"ERROR\r\n")], PARSER),
    N("gat_exptime_but_no_key", [(b"gat 10\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"gat 10\r\n", b"END\r\n")], PARSER),
    # 1.6.45 reads gat's exptime as a whole 32-bit token (1.6.18 wraps it).
    N("gat_exptime_over_32_bits", [(b"gat 4294967296 a\r\n",
                                    b"CLIENT_ERROR invalid exptime argument\r\n")],
      [(b"gat 4294967296 a\r\n", b"END\r\n")], "proto_text.c: process_get_command"),
    C("gat_key_too_long", b"gat 10 " + K251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("gat_expires_after_1s", [
        _set(b"g"), (b"gat 1 g\r\n", b"VALUE g 0 1\r\nx\r\nEND\r\n"),
        Sleep(2.2), (b"get g\r\n", b"END\r\n"),
    ], slow=True),

    # ---------------------------------------------------------------- delete
    C("delete_miss", b"delete a\r\n", b"NOT_FOUND\r\n"),
    C("delete_hit", [_set(b"a"), (b"delete a\r\n", b"DELETED\r\n"), (b"get a\r\n", b"END\r\n")]),
    C("delete_with_zero_time", [_set(b"a"), (b"delete a 0\r\n", b"DELETED\r\n")]),
    # memcached 1.6.45 ignores the tokens after the key (delete a 5 deletes
    # a); memroute deliberately keeps 1.6.18's checks, which libmemcached's
    # memccapable requires (docs/compatibility.md).
    C("delete_with_nonzero_time", [_set(b"a"), (b"delete a 5\r\n",
      b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n")]),
    C("delete_with_garbage_token", b"delete a x\r\n",
      b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
    C("delete_noreply", [_set(b"a"), (b"delete a noreply\r\ndelete a noreply\r\n", b""),
                         (b"get a\r\n", b"END\r\n")]),
    C("delete_zero_noreply", [_set(b"a"), (b"delete a 0 noreply\r\n", b""),
                              (b"get a\r\n", b"END\r\n")]),
    N("delete_no_key", [(b"delete\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"delete\r\n", b"ERROR\r\n")], PARSER),
    C("delete_too_many_tokens", b"delete a 0 noreply x\r\n", b"ERROR\r\n"),
    C("delete_five_arguments_refused", b"delete a b c d e\r\n", b"ERROR\r\n"),
    C("delete_key_too_long", b"delete " + K251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),

    # ------------------------------------------------------------- flush_all
    C("flush_all", [_set(b"a"), _set(b"b"), (b"flush_all\r\n", b"OK\r\n"),
                    (b"get a b\r\n", b"END\r\n")]),
    C("flush_all_zero", [_set(b"a"), (b"flush_all 0\r\n", b"OK\r\n"), (b"get a\r\n", b"END\r\n")]),
    C("flush_all_negative_is_immediate", [_set(b"a"), (b"flush_all -1\r\n", b"OK\r\n"),
                                          (b"get a\r\n", b"END\r\n")]),
    C("flush_all_noreply", [_set(b"a"), (b"flush_all noreply\r\n", b""), (b"get a\r\n", b"END\r\n")]),
    C("flush_all_zero_noreply", [_set(b"a"), (b"flush_all 0 noreply\r\n", b""),
                                 (b"get a\r\n", b"END\r\n")]),
    C("flush_all_invalid_delay", b"flush_all abc\r\n", b"CLIENT_ERROR invalid exptime argument\r\n"),
    C("flush_all_third_token_not_noreply_still_replies", b"flush_all 0 2\r\n", b"OK\r\n"),
    N("flush_all_too_many_tokens", [(b"flush_all 0 noreply x\r\n", b"OK\r\n")],
      [(b"flush_all 0 noreply x\r\n", b"ERROR\r\n")], TEXT),
    N("flush_all_delay_over_32_bits", [(b"flush_all 4294967296\r\n",
                                        b"CLIENT_ERROR invalid exptime argument\r\n")],
      [(b"flush_all 4294967296\r\n", b"OK\r\n")], TEXT),
    C("flush_all_items_set_after_flush_survive", [
        _set(b"a"), (b"flush_all\r\n", b"OK\r\n"), _set(b"a", b"new"),
        (b"get a\r\n", b"VALUE a 0 3\r\nnew\r\nEND\r\n"),
    ]),
    C("flush_all_delayed", [
        _set(b"a"), (b"flush_all 2\r\n", b"OK\r\n"),
        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
        Sleep(2.5),
        (b"get a\r\n", b"END\r\n"),
    ], slow=True),
    C("flush_all_delayed_noreply", [
        _set(b"a"), (b"flush_all 2 noreply\r\n", b""),
        (b"get a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
        Sleep(2.5),
        (b"get a\r\n", b"END\r\n"),
    ], slow=True),

    # ------------------------------------------------------------- verbosity
    C("verbosity", b"verbosity 1\r\nverbosity 0\r\n", b"OK\r\nOK\r\n"),
    C("verbosity_noreply", b"verbosity 0 noreply\r\n", b""),
    N("verbosity_no_level", [(b"verbosity\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"verbosity\r\n", b"ERROR\r\n")], TEXT),
    N("verbosity_level_over_32_bits", [(b"verbosity 4294967296\r\n",
                                        b"CLIENT_ERROR bad command line format\r\n")],
      [(b"verbosity 4294967296\r\n", b"OK\r\n")], TEXT),
    C("verbosity_non_numeric", b"verbosity abc\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("verbosity_third_token_not_noreply_still_replies", b"verbosity 0 2\r\n", b"OK\r\n"),
    N("verbosity_too_many_tokens", [(b"verbosity 0 noreply x\r\n", b"OK\r\n")],
      [(b"verbosity 0 noreply x\r\n", b"ERROR\r\n")], TEXT),
    N("shutdown_not_enabled", [(b"shutdown\r\n", b"SERVER_ERROR: shutdown not enabled\r\n")],
      [(b"shutdown\r\n", b"ERROR: shutdown not enabled\r\n")], TEXT),

    # ------------------------------------------------------------ line limits
    C("line_over_2048_without_newline_closes_silently", b"x" * 4096, b"", after=CLOSED),
    C("set_line_over_2048_without_newline_closes", b"set a 0 0 1" + b" " * 4000, b"", after=CLOSED),
    C("line_over_2048_with_newline_is_parsed", b"x" * 3000 + b"\r\n", b"ERROR\r\n"),
    C("set_command_line_over_2048_with_newline_ok", [
        (b"set a 0 0 1" + b" " * 3000 + b"\r\nx\r\n", b"STORED\r\n"),
    ]),
    C("line_under_2048_without_newline_waits", [
        (b"x" * 1000, b""),
        (b"\r\n", b"ERROR\r\n"),
    ]),

    # ==================================================================== meta
    # ------------------------------------------------------------------- mn
    C("mn", b"mn\r\n", b"MN\r\n"),
    C("mn_with_argument", b"mn x\r\n", b"MN\r\n"),
    N("mn_bare_lf", [(b"mn\n", b"CLIENT_ERROR bad command line format\r\n"),
                     (b"mn \n", b"MN\r\n")],
      [(b"mn\n", b"MN\r\n"), (b"mn \n", b"MN\r\n")], PARSER),
    C("mn_pipelined", b"mn\r\nmn\r\n", b"MN\r\nMN\r\n"),

    # ------------------------------------------------------------------- mg
    N("mg_no_key", [(b"mg\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"mg\r\n", b"ERROR\r\n")], PARSER),
    C("mg_miss", b"mg zz\r\n", b"EN\r\n"),
    C("mg_miss_with_v", b"mg zz v\r\n", b"EN\r\n"),
    C("mg_miss_echoes_k_and_O", b"mg zz k O2 v\r\n", b"EN kzz O2\r\n"),
    C("mg_miss_quiet", b"mg zz q v\r\nmg zz k q O1\r\n", b""),
    C("mg_hit_no_flags_is_HD", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"), (b"mg m\r\n", b"HD\r\n")]),
    C("mg_hit_v", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"), (b"mg m v\r\n", b"VA 2\r\nhi\r\n")]),
    C("mg_flags_in_request_order", [
        (b"ms m 2 F7\r\nhi\r\n", b"HD\r\n"),
        (b"mg m s v f t k\r\n", b"VA 2 s2 f7 t-1 km\r\nhi\r\n"),
        (b"mg m k f s\r\n", b"HD km f7 s2\r\n"),
    ]),
    C("mg_c_matches_gets", [
        (b"ms m 2\r\nhi\r\n", b"HD\r\n"),
        (b"gets m\r\n", Re(rb"VALUE m 0 2 " + CAS + rb"\r\nhi\r\nEND\r\n")),
        (b"mg m c v\r\n", b"VA 2 c{cas}\r\nhi\r\n"),
    ]),
    C("mg_opaque", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"),
                    (b"mg m O123 v\r\nmg m Oabc\r\nmg m O\r\n",
                     b"VA 2 O123\r\nhi\r\nHD Oabc\r\nHD O\r\n")]),
    C("mg_opaque_32_chars_ok", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"),
                                (b"mg m O" + b"1" * 31 + b"\r\n", b"HD O" + b"1" * 31 + b"\r\n")]),
    C("mg_opaque_too_long", b"mg m O" + b"1" * 32 + b" v\r\n",
      b"CLIENT_ERROR opaque token too long\r\n"),
    C("mg_quiet_hit_still_returned", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"),
                                      (b"mg m q v\r\nmg m q\r\n", b"VA 2\r\nhi\r\nHD\r\n")]),
    C("mg_quiet_pipeline_with_mn", [
        _set(b"a", b"1"), _set(b"c", b"3"),
        (b"mg a k q v\r\nmg b k q v\r\nmg c k q v\r\nmn\r\n",
         b"VA 1 ka\r\n1\r\nVA 1 kc\r\n3\r\nMN\r\n"),
    ]),
    C("mg_h_and_l", [
        (b"ms h 1\r\nx\r\n", b"HD\r\n"),
        (b"mg h h l\r\n", Re(rb"HD h0 l[0-9]+\r\n")),
        (b"mg h h l\r\n", Re(rb"HD h1 l[0-9]+\r\n")),
    ]),
    C("mg_ttl_and_flags_from_ms", [
        (b"ms m 2 T100 F7\r\nhi\r\n", b"HD\r\n"),
        (b"mg m t f v\r\n", Re(rb"VA 2 t(99|100) f7\r\nhi\r\n")),
    ]),
    C("mg_T_updates_ttl_flag_order_matters", [
        (b"ms m 2\r\nhi\r\n", b"HD\r\n"),
        (b"mg m t v T100\r\n", b"VA 2 t-1\r\nhi\r\n"),
        (b"mg m T200 t v\r\n", Re(rb"VA 2 t(199|200)\r\nhi\r\n")),
    ]),
    C("mg_u_no_bump", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"), (b"mg m u v\r\n", b"VA 2\r\nhi\r\n")]),
    C("mg_N_vivify_on_miss", [
        (b"mg viv N30 v c t\r\n", Re(rb"VA 0 c[0-9]+ t(29|30) W\r\n\r\n")),
        (b"mg viv N30 v t\r\n", Re(rb"VA 0 t(29|30) Z\r\n\r\n")),
        (b"mg viv v\r\n", b"VA 0 Z\r\n\r\n"),
        (b"ms viv 1 T30\r\nx\r\n", b"HD\r\n"),
        (b"mg viv v\r\n", b"VA 1\r\nx\r\n"),
    ]),
    C("mg_N_on_hit_is_plain_hit", [(b"ms m 2\r\nhi\r\n", b"HD\r\n"),
                                   (b"mg m N30 v\r\n", b"VA 2\r\nhi\r\n")]),
    C("mg_R_recache_win", [
        (b"ms r 1 T30\r\nx\r\n", b"HD\r\n"),
        (b"mg r R30 v\r\n", b"VA 1\r\nx\r\n"),
        (b"mg r R40 v t\r\n", Re(rb"VA 1 t(29|30) W\r\nx\r\n")),
        (b"mg r R40 v\r\n", b"VA 1 Z\r\nx\r\n"),
        (b"mg r v\r\n", b"VA 1 Z\r\nx\r\n"),
    ]),
    C("mg_base64_key", [
        (b"ms " + b64(b"rand") + b" 2 b\r\nhi\r\n", b"HD\r\n"),
        (b"mg rand v\r\n", b"VA 2\r\nhi\r\n"),
        (b"mg " + b64(b"rand") + b" b k v\r\n", b"VA 2 k" + b64(b"rand") + b" b\r\nhi\r\n"),
    ]),
    C("mg_base64_key_miss", b"mg cmFuZA== b k v\r\n", b"EN kcmFuZA== b\r\n"),
    C("mg_base64_binary_key", [
        (b"ms " + b64(b"\x00\x01 \r\n\xff") + b" 1 b\r\nx\r\n", b"HD\r\n"),
        (b"mg " + b64(b"\x00\x01 \r\n\xff") + b" b v k\r\n",
         b"VA 1 k" + b64(b"\x00\x01 \r\n\xff") + b" b\r\nx\r\n"),
    ]),
    C("mg_base64_invalid", b"mg !!!! b v\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    C("mg_base64_bad_length", b"mg abc b v\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    C("mg_invalid_flag", b"mg m zz\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    D("mg_E_flag_not_in_1_6_18",
      [(b"mg m E5 v\r\n", b"CLIENT_ERROR invalid flag\r\n")],
      [(b"mg m E5 v\r\n", b"EN\r\n")], NEWER),
    C("mg_duplicate_flag", b"mg m v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    C("mg_duplicate_opaque", b"mg m v O1 O2\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    C("mg_N_without_token", b"mg m N\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("mg_N_non_numeric", b"mg m Nabc\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("mg_T_without_token", b"mg m T\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("mg_T_non_numeric", b"mg m Tabc v\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("mg_R_without_token", b"mg m R\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("mg_key_too_long", b"mg " + K251 + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("mg_key_250_ok", [(b"ms " + K250 + b" 1\r\nx\r\n", b"HD\r\n"),
                        (b"mg " + K250 + b" v\r\n", b"VA 1\r\nx\r\n")]),
    C("mg_too_many_flags", b"mg m" + b" v" * 30 + b"\r\n",
      b"CLIENT_ERROR options flags are too long\r\n"),

    # ------------------------------------------------------------------- ms
    C("ms_stored", b"ms s 2\r\nhi\r\n", b"HD\r\n"),
    N("ms_no_key", [(b"ms\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"ms\r\n", b"ERROR\r\n")], PARSER),
    C("ms_missing_length", b"ms s\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("ms_non_numeric_length_not_swallowed", b"ms s abc\r\nxx\r\n",
      b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    C("ms_negative_length", b"ms s -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("ms_key_too_long_not_swallowed", b"ms " + K251 + b" 1\r\nxx\r\n",
      b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    C("ms_c_returns_cas", [
        (b"ms s 2 c\r\nhi\r\n", Re(rb"HD c" + CAS + rb"\r\n")),
        (b"mg s c\r\n", b"HD c{cas}\r\n"),
        (b"gets s\r\n", b"VALUE s 0 2 {cas}\r\nhi\r\nEND\r\n"),
    ]),
    C("ms_k_O_b", b"ms czE= 2 k O5 b\r\nhi\r\n", b"HD kczE= b O5\r\n"),
    C("ms_base64_stores_decoded_key", [
        (b"ms czE= 2 b\r\nhi\r\n", b"HD\r\n"),
        (b"get s1\r\n", b"VALUE s1 0 2\r\nhi\r\nEND\r\n"),
    ]),
    C("ms_base64_invalid_swallows_value", b"ms s 2 k O5 b\r\nhi\r\n",
      b"CLIENT_ERROR error decoding key\r\n"),
    C("ms_quiet_success_silent", b"ms s 2 q\r\nhi\r\n", b""),
    C("ms_quiet_failure_shown", [_set(b"s"), (b"ms s 1 q C1\r\nx\r\nms s 1 q MR\r\nx\r\n",
                                              b"EX\r\n")]),
    C("ms_flags_and_ttl", [(b"ms s 2 F5 T0\r\nhi\r\n", b"HD\r\n"),
                           (b"get s\r\n", b"VALUE s 5 2\r\nhi\r\nEND\r\n")]),
    C("ms_F_2_pow_32_wraps", [(b"ms s 1 F4294967296\r\nx\r\n", b"HD\r\n"),
                              (b"mg s f\r\n", b"HD f0\r\n")]),
    C("ms_F_negative", b"ms s 1 F-1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("ms_F_non_numeric", b"ms s 1 Fabc\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("ms_T_without_token_swallows_value", b"ms s 2 T\r\nhi\r\n",
      b"CLIENT_ERROR bad token in command line format\r\n"),
    C("ms_C_without_token", b"ms s 1 C\r\nx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("ms_C_non_numeric", b"ms s 1 Cabc\r\nx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    C("ms_invalid_flag_swallows_value", b"ms s 1 S1\r\nx\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    D("ms_E_flag_not_in_1_6_18",
      [(b"ms s 1 E100\r\nx\r\n", b"CLIENT_ERROR invalid flag\r\n")],
      [(b"ms s 1 E100\r\nx\r\n", b"HD\r\n"), (b"mg s c v\r\n", b"VA 1 c100\r\nx\r\n")],
      NEWER),
    C("ms_duplicate_flag", b"ms s 1 k k\r\nx\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    C("ms_duplicate_mode", b"ms s 1 MS MA\r\nx\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    C("ms_ignored_retrieval_flags", b"ms s 1 s f v h t N30\r\nx\r\n", b"HD\r\n"),
    C("ms_compare_and_swap", [
        (b"ms s 2 c\r\nhi\r\n", Re(rb"HD c" + CAS + rb"\r\n")),
        (b"ms s 2 C1\r\nno\r\n", b"EX\r\n"),
        (b"ms s 2 C{cas}\r\nok\r\n", b"HD\r\n"),
        (b"ms s 2 C{cas}\r\nno\r\n", b"EX\r\n"),
        (b"mg s v\r\n", b"VA 2\r\nok\r\n"),
    ]),
    C("ms_C_on_missing_key", b"ms s 1 C5\r\nx\r\n", b"NF\r\n"),
    C("ms_mode_append_prepend", [
        (b"ms s 2\r\nhi\r\n", b"HD\r\n"),
        (b"ms s 2 MA\r\n!!\r\n", b"HD\r\n"),
        (b"ms s 2 MP\r\n<<\r\n", b"HD\r\n"),
        (b"mg s v\r\n", b"VA 6\r\n<<hi!!\r\n"),
    ]),
    C("ms_mode_append_prepend_miss", b"ms s 2 MA\r\nAA\r\nms s 2 MP\r\nPP\r\n", b"NS\r\nNS\r\n"),
    D("ms_mode_append_N_does_not_vivify",
      [(b"ms s 2 MA N30\r\nAA\r\n", b"NS\r\n"), (b"mg s v\r\n", b"EN\r\n")],
      [(b"ms s 2 MA N30\r\nAA\r\n", b"HD\r\n"), (b"mg s v\r\n", b"VA 2\r\nAA\r\n")],
      NEWER),
    C("ms_mode_append_quiet_miss_shown", b"ms s 3 MA q\r\nabc\r\n", b"NS\r\n"),
    C("ms_mode_replace", [(b"ms s 2 MR\r\nRR\r\n", b"NS\r\n"), _set(b"s"),
                          (b"ms s 2 MR\r\nRR\r\n", b"HD\r\n")]),
    C("ms_mode_add", [(b"ms s 2 ME\r\nEE\r\n", b"HD\r\n"), (b"ms s 2 ME\r\nFF\r\n", b"NS\r\n"),
                      (b"mg s v\r\n", b"VA 2\r\nEE\r\n")]),
    C("ms_mode_set", [_set(b"s"), (b"ms s 2 MS\r\nSS\r\n", b"HD\r\n"),
                      (b"mg s v\r\n", b"VA 2\r\nSS\r\n")]),
    C("ms_mode_lowercase_invalid", b"ms s 2 Ms\r\nss\r\nms s 2 Ma\r\naa\r\n",
      b"CLIENT_ERROR invalid mode for ms M token\r\nCLIENT_ERROR invalid mode for ms M token\r\n"),
    C("ms_mode_unknown", b"ms s 2 MX\r\nXX\r\n", b"CLIENT_ERROR invalid mode for ms M token\r\n"),
    C("ms_mode_without_token", b"ms s 2 M\r\nXX\r\n", b"CLIENT_ERROR incorrect length for M token\r\n"),
    C("ms_invalidate_with_older_cas_marks_stale", [
        (b"ms i 1\r\nx\r\n", b"HD\r\n"),
        (b"ms i 1 I C1\r\ny\r\n", b"HD\r\n"),
        (b"mg i v c\r\n", Re(rb"VA 1 c[0-9]+ X W\r\ny\r\n")),
        (b"mg i v\r\n", b"VA 1 Z X\r\ny\r\n"),
        (b"ms i 1 I\r\nz\r\n", b"HD\r\n"),
        (b"mg i v\r\n", b"VA 1\r\nz\r\n"),
    ]),
    C("ms_bad_data_chunk", b"ms s 1\r\nxyzzy\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    C("ms_quiet_bad_data_chunk_shown", b"ms s 1 q\r\nxyzzy\r\n",
      b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
    C("ms_too_large", [
        _set(b"old"),
        (b"ms old %d\r\n" % BIG + b"a" * BIG + b"\r\n", b"SERVER_ERROR object too large for cache\r\n"),
        (b"get old\r\n", b"END\r\n"),
    ]),
    C("ms_too_large_quiet_shown", [
        (b"ms big %d q\r\n" % BIG + b"a" * BIG + b"\r\n", b"SERVER_ERROR object too large for cache\r\n"),
    ]),
    C("ms_too_many_flags", b"ms s 1" + b" T1" * 30 + b"\r\nxx\r\n",
      b"CLIENT_ERROR options flags too long\r\nERROR\r\n"),

    # ------------------------------------------------------------------- md
    N("md_no_key", [(b"md\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"md\r\n", b"ERROR\r\n")], PARSER),
    C("md_miss", b"md zz\r\n", b"NF\r\n"),
    C("md_miss_quiet_still_NF", b"md zz q\r\n", b"NF\r\n"),
    C("md_hit", [(b"ms d 1\r\nx\r\n", b"HD\r\n"), (b"md d\r\n", b"HD\r\n"), (b"mg d v\r\n", b"EN\r\n")]),
    C("md_hit_quiet_silent", [(b"ms d 1\r\nx\r\n", b"HD\r\n"), (b"md d q\r\n", b""),
                              (b"mg d v\r\n", b"EN\r\n")]),
    C("md_k_O", [(b"ms d 1\r\nx\r\n", b"HD\r\n"), (b"md d k O7\r\n", b"HD kd O7\r\n")]),
    C("md_cas", [
        (b"ms d 1 c\r\nx\r\n", Re(rb"HD c" + CAS + rb"\r\n")),
        (b"md d C1\r\n", b"EX\r\n"),
        (b"md d q C1\r\n", b"EX\r\n"),
        (b"md d C{cas}\r\n", b"HD\r\n"),
        (b"mg d v\r\n", b"EN\r\n"),
    ]),
    C("md_invalidate", [
        (b"ms d 1 T0\r\nx\r\n", b"HD\r\n"),
        (b"md d I T30\r\n", b"HD\r\n"),
        (b"mg d v c t\r\n", Re(rb"VA 1 c[0-9]+ t(29|30) X W\r\nx\r\n")),
        (b"mg d v c\r\n", Re(rb"VA 1 c[0-9]+ Z X\r\nx\r\n")),
    ]),
    C("md_base64", [(b"ms d 1\r\nx\r\n", b"HD\r\n"), (b"md ZA== b k\r\n", b"HD kZA== b\r\n"),
                    (b"md ZA== b\r\n", b"NF\r\n")]),
    C("md_ignores_v", [(b"ms d 1\r\nx\r\n", b"HD\r\n"), (b"md d v\r\n", b"HD\r\n")]),
    D("md_x_not_in_1_6_18",
      [(b"md d x\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n")],
      [(b"md d x\r\n", b"NF\r\n")], NEWER),
    C("md_C_non_numeric", b"md d Cabc\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("md_invalid_flag", b"md d zz\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("md_duplicate_flag", b"md d k k\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("md_key_too_long", b"md " + K251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),

    # ------------------------------------------------------------------- ma
    N("ma_no_key", [(b"ma\r\n", b"CLIENT_ERROR bad command line format\r\n")],
      [(b"ma\r\n", b"ERROR\r\n")], PARSER),
    C("ma_miss", b"ma zz\r\n", b"NF\r\n"),
    C("ma_miss_quiet_still_NF", b"ma zz q\r\n", b"NF\r\n"),
    C("ma_vivify_with_initial", [
        (b"ma zz N0 J13\r\n", b"HD\r\n"),
        (b"ma zz v\r\n", b"VA 2\r\n14\r\n"),
        (b"get zz\r\n", b"VALUE zz 0 2\r\n14\r\nEND\r\n"),
    ]),
    # `q` hides an `ma` on an item that was there, not one it created.
    C("ma_quiet_shows_the_item_it_created", [
        (b"ma vq v N0 J7 q\r\nmn\r\n", b"VA 1\r\n7\r\nMN\r\n"),
        (b"ma vq v q\r\nmn\r\n", b"MN\r\n"),
        (b"ma vq2 N0 J7 q\r\nmn\r\n", b"HD\r\nMN\r\n"),
        (b"ma vq2 q\r\nmn\r\n", b"MN\r\n"),
    ]),
    C("ma_vivify_default_initial_and_ttl", [
        (b"ma new N30 v t\r\n", Re(rb"VA 1 t(29|30)\r\n0\r\n")),
        (b"ma new T90 v t\r\n", Re(rb"VA 1 t(89|90)\r\n1\r\n")),
        (b"ma new N30 T0 v t\r\n", b"VA 1 t-1\r\n2\r\n"),
    ]),
    C("ma_modes", [
        _set(b"n", b"10"),
        (b"ma n v\r\n", b"VA 2\r\n11\r\n"),
        (b"ma n MI D5 v\r\n", b"VA 2\r\n16\r\n"),
        (b"ma n M+ v\r\n", b"VA 2\r\n17\r\n"),
        (b"ma n MD D100 v\r\n", b"VA 1\r\n0\r\n"),
        (b"ma n M+ D2 v\r\n", b"VA 1\r\n2\r\n"),
        (b"ma n M- v\r\n", b"VA 1\r\n1\r\n"),
    ]),
    C("ma_wraps", [_set(b"n", b"18446744073709551615"), (b"ma n v\r\n", b"VA 1\r\n0\r\n")]),
    C("ma_t_c_flags", [
        _set(b"n", b"1"),
        (b"ma n v t c\r\n", Re(rb"VA 1 t-1 c" + CAS + rb"\r\n2\r\n")),
        (b"mg n c\r\n", b"HD c{cas}\r\n"),
    ]),
    C("ma_quiet_success_silent", [_set(b"n", b"1"), (b"ma n q v\r\nma n q\r\n", b""),
                                  (b"get n\r\n", b"VALUE n 0 1\r\n3\r\nEND\r\n")]),
    C("ma_k_O", [_set(b"n", b"1"), (b"ma n k O4 v\r\n", b"VA 1 kn O4\r\n2\r\n")]),
    C("ma_cas", [
        (b"ms n 1 c\r\n5\r\n", Re(rb"HD c" + CAS + rb"\r\n")),
        (b"ma n C1 v\r\n", b"EX\r\n"),
        (b"ma n C{cas} v\r\n", b"VA 1\r\n6\r\n"),
    ]),
    C("ma_base64_key_reencoded", b"ma ZZ== b k v\r\n", b"NF kZQ== b\r\n"),
    C("ma_non_numeric", [(b"ms nn 2\r\nab\r\n", b"HD\r\n"),
                         (b"ma nn\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")]),
    C("ma_ignored_flags", [_set(b"n", b"1"), (b"ma n f\r\nma n s\r\n", b"HD\r\nHD\r\n")]),
    C("ma_invalid_mode", b"ma n Mi v\r\nma n MX v\r\n",
      b"CLIENT_ERROR invalid mode for ma M token\r\nCLIENT_ERROR invalid mode for ma M token\r\n"),
    C("ma_M_without_token", b"ma n M\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_duplicate_mode", b"ma n MI MD\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_D_without_token", b"ma n D\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_D_non_numeric", b"ma n Dabc v\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_D_negative", b"ma n D-1 v\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_D_2_pow_64", b"ma n D18446744073709551616 v\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_J_without_token", b"ma n J\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_N_without_token", b"ma n N\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    C("ma_key_too_long", b"ma " + K251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),

    # ------------------------------------------------------------------- me
    C("me_no_key", b"me\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("me_miss", b"me zz\r\n", b"EN\r\n"),
    C("me_hit", [
        (b"ms e 1\r\nx\r\n", b"HD\r\n"),
        (b"me e\r\n", Re(rb"ME e exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
        (b"get e\r\n", b"VALUE e 0 1\r\nx\r\nEND\r\n"),
        (b"me e x\r\n", Re(rb"ME e exp=-1 la=[0-9]+ cas=[0-9]+ fetch=yes cls=[0-9]+ size=[0-9]+\r\n")),
    ]),
    # 1.6.18 prints exp with the sign inverted (exp=-30 for a 30 s TTL): the
    # regex accepts either sign so the row stays meaningful for a fixed server.
    C("me_with_ttl", [
        (b"ms e 1 T30\r\nx\r\n", b"HD\r\n"),
        (b"me e\r\n", Re(rb"ME e exp=-?(29|30) la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
    ]),
    D("me_base64", [
        (b"ms e 1\r\nx\r\n", b"HD\r\n"),
        (b"me ZQ== b\r\n", Re(rb"ME e exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
        (b"ms ZQ== 1 b\r\nx\r\n", b"HD\r\n"),
        (b"me ZQ== b\r\n", Re(rb"ME ZQ== exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
        (b"me e\r\n", Re(rb"ME ZQ== exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
    ], [
        (b"ms e 1\r\nx\r\n", b"HD\r\n"),
        (b"me ZQ== b\r\n", Re(rb"ME ZQ== exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
        (b"me e\r\n", Re(rb"ME e exp=-1 la=[0-9]+ cas=[0-9]+ fetch=no cls=[0-9]+ size=[0-9]+\r\n")),
    ], "me (a debugging aid) prints the key as the client wrote it; memroute keeps no per-item "
       "binary-key flag"),
    C("me_base64_invalid", b"me e b\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    C("me_key_too_long", b"me " + K251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),

    # ------------------------------------------------------------ pipelining
    C("pipelined_classic", [
        (b"set a 0 0 1\r\n1\r\nset b 0 0 2\r\n22\r\nget a b\r\nincr a 9\r\ndelete b\r\n"
         b"get a b\r\nversion\r\n",
         Re(rb"STORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 2\r\n22\r\nEND\r\n10\r\n"
            rb"DELETED\r\nVALUE a 0 2\r\n10\r\nEND\r\nVERSION [^\r\n]+\r\n")),
    ]),
    C("pipelined_meta_and_classic_mixed", [
        (b"ms a 1 T0\r\n1\r\nmg a v k\r\nget a\r\nma a v\r\nmd a q\r\nmg a v\r\nmn\r\n",
         b"HD\r\nVA 1 ka\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\nVA 1\r\n2\r\nEN\r\nMN\r\n"),
    ]),
    C("pipelined_errors_do_not_desync", [
        (b"bogus\r\nset a 0 0 1\r\nx\r\nincr a x\r\nmg a zz\r\nget a\r\n",
         b"ERROR\r\nSTORED\r\nCLIENT_ERROR invalid numeric delta argument\r\n"
         b"CLIENT_ERROR invalid flag\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),
    ]),
    C("pipelined_value_split_across_writes", [
        (b"set a 0 0 10\r\n01234", b""),
        (b"56789\r", b""),
        (b"\nget a\r\n", b"STORED\r\nVALUE a 0 10\r\n0123456789\r\nEND\r\n"),
    ]),
]


# --------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------


def _subst(data: bytes, caps: dict) -> bytes:
    for name, value in caps.items():
        data = data.replace(b"{%s}" % name.encode(), value)
    return data


def _timeout_for(send: bytes) -> float:
    return 15.0 if len(send) > 100_000 else 3.0


def run_conversation(host: str, port: int, conv: Conv, min_timeout: float = 0.0) -> None:
    """Runs ``conv`` on a fresh connection; ``min_timeout`` raises the
    per-read timeout for a server that answers slowly (a DynamoDB pool)."""
    caps: dict = {}
    with RawClient(host, port) as c:
        for i, step in enumerate(conv.steps):
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                continue
            send, expect = step
            send = _subst(send, caps)
            where = "step %d (sent %r)" % (i, send[:120])
            c.send(send)
            tmo = max(_timeout_for(send), min_timeout)
            try:
                if isinstance(expect, Re):
                    pattern = re.compile(_subst(expect.pattern, caps), re.S)
                    got, m = c.read_match(pattern, tmo)
                    caps.update({k: v for k, v in m.groupdict().items() if v is not None})
                elif expect:
                    expect = _subst(expect, caps)
                    got = c.read_exact(len(expect), tmo)
                    if got != expect:
                        got += c.read_available(0.3, 1.0)  # show the whole reply
                    assert got == expect, "%s: reply differs\nexpected %r\n     got %r" % (
                        where, expect[:400], got[:400])
            except (Closed, ReadTimeout) as e:
                pytest.fail("%s: expected %r: %s" % (where, getattr(expect, "pattern", expect)[:300], e))
        if conv.after == OPEN:
            try:
                c.assert_alive()
            except (Closed, ReadTimeout) as e:
                pytest.fail("connection should stay open after the last step: %s" % e)
        else:
            try:
                rest = c.wait_closed(3.0)
            except ReadTimeout as e:
                pytest.fail("server should have closed the connection: %s" % e)
            assert rest == b"", "unexpected bytes before close: %r" % rest[:300]


def as_memroute(conv: Conv) -> Conv:
    """The row as memroute must answer it: its deliberate alternative
    (``D``) if it has one; an ``N`` row's steps are memroute's already."""
    if conv.memroute is None:
        return conv
    return Conv(conv.id, conv.memroute, conv.after, conv.slow)


def as_memcached_1_6_18(conv: Conv) -> Conv:
    """The row as memcached 1.6.18 answers it: an ``N`` row's recorded
    1.6.18 answer, else the row's own steps."""
    newer = conv.differs_from_1_6_18
    if newer is None:
        return Conv(conv.id, conv.steps, conv.after, conv.slow)
    return Conv(conv.id, newer.was, newer.was_after, conv.slow)


def _params():
    seen = set()
    for conv in ROWS:
        assert conv.id not in seen, "duplicate row id %s" % conv.id
        seen.add(conv.id)
        marks = [pytest.mark.slow] if conv.slow else []
        yield pytest.param(conv, id=conv.id, marks=marks)


def _flush(server) -> None:
    # Empty the cache on a separate connection so each row starts clean.
    with server.client() as admin:
        assert admin.request(b"flush_all\r\n") == b"OK\r\n"


@pytest.mark.parametrize("conv", list(_params()))
def test_conversation(server, conv):
    if conv.differs_from_1_6_18 is not None and server.kind != "memroute":
        # The steps are memcached 1.6.45's (see the row's source); the
        # reference memcached is 1.6.18.  test_recorded_1_6_18_answer
        # checks what 1.6.18 answers instead.
        pytest.skip("memcached 1.6.45 behaviour (%s); the reference server is 1.6.18"
                    % conv.differs_from_1_6_18.source)
    _flush(server)
    if server.kind == "memroute":
        conv = as_memroute(conv)
    run_conversation(server.host, server.port, conv)
    assert server.is_running(), "%s died during the conversation" % server.kind


@pytest.mark.parametrize("conv", [p for p in _params()
                                  if p.values[0].differs_from_1_6_18 is not None])
def test_recorded_1_6_18_answer(server, conv):
    """A row marked differs_from_1_6_18 records what 1.6.18 answers instead:
    the reference memcached must answer exactly that, so the marked
    difference is real (and the row's 1.6.45 steps are not 1.6.18's)."""
    if server.kind != "memcached":
        pytest.skip("the recorded answer is memcached 1.6.18's")
    _flush(server)
    run_conversation(server.host, server.port, as_memcached_1_6_18(conv))
    assert server.is_running(), "memcached died during the conversation"


def test_table_covers_every_command():
    """Guard against the table silently losing a command."""
    text = b"\n".join(
        s[0] for conv in ROWS for s in conv.steps if not isinstance(s, Sleep))
    commands = [b"get", b"gets", b"gat", b"gats", b"set", b"add", b"replace", b"append",
                b"prepend", b"cas", b"delete", b"incr", b"decr", b"touch", b"flush_all",
                b"version", b"verbosity", b"stats", b"quit", b"mg", b"ms", b"md", b"ma",
                b"mn", b"me"]
    missing = [c.decode() for c in commands
               if not re.search(rb"(^|\n)\s*" + re.escape(c) + rb"[ \r\n]", text, re.M)]
    assert not missing, "commands without a conversation row: %s" % missing

"""`stats items` and `stats slabs`: the embedded cache answers as one slab
class (class 1) with the fields it has a true value for. Every field name
it gives must be one that memcached (Debian's 1.6.18) gives for a server
holding items; the ones it leaves out are listed in docs/compatibility.md."""

from __future__ import annotations

import re

from conftest import stats_dict

# What memroute gives, in memcached's order (docs/compatibility.md).
ITEMS_FIELDS = ["number", "age", "mem_requested", "evicted", "outofmemory", "reclaimed",
                "expired_unfetched", "evicted_unfetched"]
SLABS_FIELDS = ["chunk_size", "used_chunks", "get_hits", "cmd_set", "delete_hits",
                "incr_hits", "decr_hits", "cas_hits", "cas_badval", "touch_hits"]


def fill(client, run: str) -> None:
    for i in range(12):
        value = b"v" * (10 + 400 * i)  # sizes over several memcached classes
        client.send(b"set %s:%d 0 0 %d\r\n%s\r\n" % (run.encode(), i, len(value), value))
        assert client.read_line() == b"STORED\r\n"
    client.send(b"get %s:1\r\n" % run.encode())
    client.read_until(b"END\r\n")


def split(stats: dict, pattern: str) -> tuple:
    """({class: {field: value}}, {global field: value})."""
    classes, rest = {}, {}
    for name, value in stats.items():
        m = re.fullmatch(pattern, name)
        if m:
            classes.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            rest[name] = value
    return classes, rest


def test_field_names_are_memcacheds(memcached, memroute):
    names = {}
    for server in (memcached, memroute):
        with server.client() as c:
            fill(c, "slabs-%s" % server.kind)
            items, items_rest = split(stats_dict(c, b"items"), r"items:(\d+):(\w+)")
            slabs, slabs_rest = split(stats_dict(c, b"slabs"), r"(\d+):(\w+)")
            general = stats_dict(c)
        assert items and not items_rest, (server.kind, items_rest)
        assert slabs, server.kind
        names[server.kind] = (
            {f for fields in items.values() for f in fields},
            {f for fields in slabs.values() for f in fields},
            set(slabs_rest),
        )
        if server.kind == "memroute":
            # One class, holding every item.
            assert list(items) == [1] and list(slabs) == [1]
            assert list(items[1]) == ITEMS_FIELDS
            assert list(slabs[1]) == SLABS_FIELDS
            assert items[1]["number"] == general["curr_items"] == slabs[1]["used_chunks"]
            assert items[1]["mem_requested"] == general["bytes"]
            assert int(items[1]["age"]) >= 0
            assert slabs[1]["get_hits"] == general["get_hits"]
            assert slabs[1]["cmd_set"] == general["cmd_set"]
            assert slabs[1]["chunk_size"] == str(1024 * 1024)  # -I
            assert slabs_rest["active_slabs"] == "1"
            assert int(slabs_rest["total_malloced"]) >= int(general["bytes"])
    mc_items, mc_slabs, mc_rest = names["memcached"]
    mr_items, mr_slabs, mr_rest = names["memroute"]
    assert mr_items <= mc_items, mr_items - mc_items
    assert mr_slabs <= mc_slabs, mr_slabs - mc_slabs
    assert mr_rest == mc_rest == {"active_slabs", "total_malloced"}
    # What memroute leaves out (documented in docs/compatibility.md).
    assert mc_items - mr_items == {
        "number_hot", "number_warm", "number_cold", "age_hot", "age_warm",
        "evicted_nonzero", "evicted_time", "tailrepairs", "evicted_active",
        "crawler_reclaimed", "crawler_items_checked", "lrutail_reflocked",
        "moves_to_cold", "moves_to_warm", "moves_within_lru", "direct_reclaims",
        "hits_to_hot", "hits_to_warm", "hits_to_cold", "hits_to_temp"}
    assert mc_slabs - mr_slabs == {
        "chunks_per_page", "total_pages", "total_chunks", "free_chunks", "free_chunks_end"}


def test_empty_cache_lists_no_class(memroute_factory):
    mr = memroute_factory()
    with mr.client() as c:
        assert c.request(b"stats items\r\n", b"END\r\n") == b"END\r\n"
        slabs = stats_dict(c, b"slabs")
    assert slabs["active_slabs"] == "0" and set(slabs) == {"active_slabs", "total_malloced"}

#!/usr/bin/perl
# Exercise Cache::Memcached (Debian libcache-memcached-perl) against one
# server given as HOST:PORT.  Prints one "name: value" line per check; the
# python test (tests/test_clients.py) asserts the whole output.
use strict;
use warnings;
use Cache::Memcached;

my $server = shift @ARGV or die "usage: $0 HOST:PORT\n";
my $prefix = shift @ARGV // "perl:";
my $mc = Cache::Memcached->new({
    servers            => [$server],
    namespace          => $prefix,
    connect_timeout    => 2,
    select_timeout     => 2,
    compress_threshold => 1_000_000,
});
$| = 1;

sub show { my ($name, $v) = @_; print "$name: ", (defined $v ? $v : "<undef>"), "\n"; }

show("set", $mc->set("k1", "hello") ? 1 : 0);
show("get", $mc->get("k1"));
show("get_miss", $mc->get("nope"));
show("set_ref", $mc->set("ref", { a => 1, b => [2, 3] }) ? 1 : 0);
my $ref = $mc->get("ref");
show("get_ref", ref($ref) ? join(",", $ref->{a}, @{ $ref->{b} }) : "not-a-ref");
$mc->set("k2", "world");
$mc->set("k3", "x" x 1000);
my $multi = $mc->get_multi("k1", "k2", "missing", "k3");
show("get_multi", join(",", map { "$_=" . (ref $multi->{$_} ? "ref" : length($multi->{$_})) } sort keys %$multi));
show("add_existing", $mc->add("k1", "again") ? 1 : 0);
show("add_new", $mc->add("k4", "new") ? 1 : 0);
show("replace", $mc->replace("k4", "replaced") ? 1 : 0);
show("replace_missing", $mc->replace("k5", "x") ? 1 : 0);
show("get_replaced", $mc->get("k4"));
show("set_counter", $mc->set("counter", 10) ? 1 : 0);
show("incr", $mc->incr("counter"));
show("incr_5", $mc->incr("counter", 5));
show("decr_3", $mc->decr("counter", 3));
show("decr_100", $mc->decr("counter", 100));
show("incr_missing", $mc->incr("nocounter"));
if ($mc->can("append")) {
    show("append", $mc->append("k1", "!") ? 1 : 0);
    show("prepend", $mc->prepend("k1", ">") ? 1 : 0);
    show("get_appended", $mc->get("k1"));
} else {
    show("append", "unsupported");
}
show("delete", $mc->delete("k2") ? 1 : 0);
show("delete_missing", $mc->delete("k2") ? 1 : 0);
show("get_deleted", $mc->get("k2"));
my $stats = $mc->stats(["misc"]);
show("stats_has_hosts", (ref $stats eq "HASH" && ref $stats->{hosts} eq "HASH") ? 1 : 0);
show("flush_all", $mc->flush_all ? 1 : 0);
show("get_after_flush", $mc->get("k1"));
$mc->disconnect_all;
print "done\n";

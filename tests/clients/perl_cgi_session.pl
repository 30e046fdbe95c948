#!/usr/bin/perl
# A CGI request's session through CGI::Session's memcached driver (Debian
# libcgi-session-driver-memcached-perl) and Cache::Memcached, so tests can
# run real CGI::Session sessions through memroute (tests/test_sessions.py).
#
# Usage: perl perl_cgi_session.pl HOST:PORT ACTION [ARGS]
#   create JSON         a new session with the params of the JSON object
#                       (string values, stored as UTF-8); prints its id
#   read SID            load the session; prints its params as one JSON
#                       object, "missing" or "expired". Like any CGI
#                       request, the load updates the access time, so the
#                       session is written back at the end.
#   incr SID HOLD_MS [lock]
#                       load the session, add 1 to param n, wait HOLD_MS,
#                       write it; prints the new n. With "lock", first take
#                       the application's lock (add "lock.SID", below) and
#                       release it after the write. Writes "loaded" to
#                       stderr once it holds the loaded session.
#   set SID NAME VALUE  set one param (VALUE's bytes as they are); prints "ok"
#   expire SID SECS     $session->expire(SECS) (CGI::Session's own expiry,
#                       kept inside the data); prints "ok"
#   delete SID          $session->delete; prints "deleted"
#
# CGI_SESS_NAMESPACE in the environment is Cache::Memcached's namespace (the
# key prefix); none by default, as in the driver's synopsis.
#
# CGI::Session has no locking: two requests on one session each load it,
# and the last to write wins. An application that needs mutual exclusion
# takes a lock of its own; the memcached way, used here, is
# add("lock.SID", 1, EXPIRE) (retried until it succeeds) and delete to
# release it, the same keys and commands as php-memcached's session lock.
#
# Exits 1 with a message on stderr when something fails.
use strict;
use warnings;
use CGI::Session;
use Cache::Memcached;
use JSON::PP;
use Time::HiRes qw(sleep time);

my $LOCK_EXPIRE = 30;    # seconds: a crashed request frees its lock
my $LOCK_WAIT   = 20;    # seconds to wait for a lock before giving up

my ($server, $action, @args) = @ARGV;
die "usage: $0 HOST:PORT create|read|incr|set|expire|delete ...\n" unless $action;
$| = 1;

my $memd = Cache::Memcached->new({
    servers        => [$server],
    namespace      => $ENV{CGI_SESS_NAMESPACE} // '',
    connect_timeout => 2,
    select_timeout  => 5,
});
my @dsn = ("driver:memcached", { Memcached => $memd });

sub fail { print STDERR "@_\n"; exit 1 }

# The session SID, loaded as a CGI request loads it (dies if it is gone).
sub load_session {
    my ($sid) = @_;
    my $s = CGI::Session->load($dsn[0], $sid, $dsn[1])
        or fail("load: " . CGI::Session->errstr);
    fail("expired") if $s->is_expired;
    fail("missing") if $s->is_empty;
    return $s;
}

sub flush_session {
    my ($s) = @_;
    $s->flush or fail("flush: " . $s->errstr);
}

# Param values as UTF-8 bytes, as CGI.pm hands a form's text to an
# application.
sub utf8_bytes { my ($v) = @_; utf8::encode($v); return $v }

if ($action eq 'create') {
    my $params = JSON::PP->new->utf8->decode($args[0] // '{}');
    my $s = CGI::Session->new($dsn[0], undef, $dsn[1]) or fail("new: " . CGI::Session->errstr);
    $s->param($_, utf8_bytes($params->{$_})) for sort keys %$params;
    flush_session($s);
    print $s->id, "\n";
}
elsif ($action eq 'read') {
    my $s = CGI::Session->load($dsn[0], $args[0], $dsn[1])
        or fail("load: " . CGI::Session->errstr);
    if ($s->is_expired) { print "expired\n" }
    elsif ($s->is_empty) { print "missing\n" }
    else {
        my %p = map { $_ => scalar $s->param($_) } $s->param;
        # Bytes out as they came in (no decoding, no encoding).
        print JSON::PP->new->canonical->encode(\%p), "\n";
        flush_session($s);
    }
}
elsif ($action eq 'incr') {
    my ($sid, $hold_ms, $lock) = @args;
    my $lock_key = "lock.$sid";
    if (($lock // '') eq 'lock') {
        my $deadline = time() + $LOCK_WAIT;
        until ($memd->add($lock_key, 1, $LOCK_EXPIRE)) {
            fail("lock: not acquired within ${LOCK_WAIT}s") if time() > $deadline;
            sleep(0.02 + rand(0.03));
        }
    }
    my $s = load_session($sid);
    print STDERR "loaded\n";    # the test waits for this line
    $s->param('n', ($s->param('n') // 0) + 1);
    sleep(($hold_ms // 0) / 1000);
    flush_session($s);
    if (($lock // '') eq 'lock') {
        $memd->delete($lock_key) or fail("unlock: the lock was not held");
    }
    print $s->param('n'), "\n";
}
elsif ($action eq 'set') {
    my ($sid, $name, $value) = @args;
    my $s = load_session($sid);
    $s->param($name, $value);
    flush_session($s);
    print "ok\n";
}
elsif ($action eq 'expire') {
    my ($sid, $secs) = @args;
    my $s = load_session($sid);
    $s->expire($secs);
    flush_session($s);
    print "ok\n";
}
elsif ($action eq 'delete') {
    my $s = load_session($args[0]);
    $s->delete;
    flush_session($s);
    print "deleted\n";
}
else {
    fail("unknown action $action");
}

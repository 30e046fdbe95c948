<?php
// Writes keys with PHP memcached (libmemcached) in libketama-compatible
// mode straight to the given servers, so a test can check that a memroute
// ketama pool reads every one of them back from the same server.
//
// Usage: php php_ketama.php PREFIX COUNT HOST:PORT [HOST:PORT ...]
// Prints "set N" on success; exits 1 if any set fails.

if ($argc < 4) {
    fwrite(STDERR, "usage: php_ketama.php PREFIX COUNT HOST:PORT...\n");
    exit(2);
}
$prefix = $argv[1];
$count = (int)$argv[2];
$servers = [];
foreach (array_slice($argv, 3) as $hp) {
    $i = strrpos($hp, ':');
    $servers[] = [substr($hp, 0, $i), (int)substr($hp, $i + 1)];
}

$m = new Memcached();
$m->setOption(Memcached::OPT_LIBKETAMA_COMPATIBLE, true);
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, false);
if (!$m->addServers($servers)) {
    fwrite(STDERR, "addServers failed: " . $m->getResultMessage() . "\n");
    exit(1);
}
for ($i = 0; $i < $count; $i++) {
    $key = $prefix . $i;
    if (!$m->set($key, "v-" . $key)) {
        fwrite(STDERR, "set $key failed: " . $m->getResultMessage() . "\n");
        exit(1);
    }
}
echo "set $count\n";

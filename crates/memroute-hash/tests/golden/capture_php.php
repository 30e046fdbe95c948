<?php
// Captures golden vectors from libmemcached, driven through PHP's memcached
// extension (php-memcached 3.x on libmemcached 1.1).  No server is contacted:
// getServerByKey() only runs libmemcached's distribution code.
//
// Usage: php capture_php.php   (run from this directory; rewrites php_*.tsv)
//
// Output format (read by tests/golden.rs):
//   # comment lines (free text)
//   backend<TAB>name<TAB>weight     one line per server, in the order added
//   key<TAB>value                   value = backend index, or a hash value
//
// Keys come from keys.txt (one per line, UTF-8) and are written back escaped
// with rawurlencode() so that any byte survives a TSV round trip.

$keys = array_values(array_filter(
    explode("\n", file_get_contents(__DIR__ . "/keys.txt")),
    fn($k) => $k !== ""
));

function capture_info(): string {
    ob_start();
    phpinfo(INFO_MODULES);
    $info = ob_get_clean();
    preg_match('/libmemcached library version => (\S+)/', $info, $m);
    return "# captured by capture_php.php: libmemcached " . ($m[1] ?? "?") . ", php-memcached "
        . phpversion("memcached") . ", PHP " . PHP_VERSION . "\n";
}

function new_client(array $options): Memcached {
    $m = new Memcached();
    foreach ($options as $opt => $val) {
        if (!$m->setOption($opt, $val)) {
            fwrite(STDERR, "setOption($opt) failed: " . $m->getResultMessage() . "\n");
            exit(1);
        }
    }
    return $m;
}

function placement(string $file, string $title, array $options, array $servers, array $keys): void {
    $m = new_client($options);
    foreach ($servers as [$host, $port, $weight]) {
        if (!$m->addServer($host, $port, $weight)) {
            fwrite(STDERR, "addServer failed\n");
            exit(1);
        }
    }
    $index = [];
    $out = "# $title\n";
    $out .= capture_info();
    foreach ($servers as $i => [$host, $port, $weight]) {
        $index["$host:$port"] = $i;
        $out .= "backend\t$host:$port\t$weight\n";
    }
    foreach ($keys as $key) {
        $s = $m->getServerByKey($key);
        $id = $s["host"] . ":" . $s["port"];
        if (!isset($index[$id])) {
            fwrite(STDERR, "unknown server $id\n");
            exit(1);
        }
        $out .= rawurlencode($key) . "\t" . $index[$id] . "\n";
    }
    file_put_contents(__DIR__ . "/$file", $out);
    echo "wrote $file\n";
}

// Recover libmemcached's raw 32-bit key hash: with DISTRIBUTION_MODULA a key
// lands on server (hash % n).  Asking with n = 7, 11, ..., 31 servers gives the
// residues modulo eight primes whose product exceeds 2^32, and the Chinese
// remainder theorem gives the hash back exactly.
function raw_hashes(string $file, string $name, int $hash, array $keys): void {
    $moduli = [7, 11, 13, 17, 19, 23, 29, 31];
    $residues = [];
    foreach ($moduli as $n) {
        $m = new_client([
            Memcached::OPT_DISTRIBUTION => Memcached::DISTRIBUTION_MODULA,
            Memcached::OPT_HASH => $hash,
        ]);
        for ($i = 0; $i < $n; $i++) {
            $m->addServer("10.9.0." . ($i + 1), 11211);
        }
        foreach ($keys as $k => $key) {
            $s = $m->getServerByKey($key);
            $residues[$k][$n] = intval(substr($s["host"], strlen("10.9.0."))) - 1;
        }
    }
    $out = "# libmemcached key hash '$name' (32-bit), recovered by CRT from modula placement\n";
    $out .= capture_info();
    foreach ($keys as $k => $key) {
        // Incremental CRT: x = r (mod M) extended one modulus at a time.
        $x = 0;
        $mod = 1;
        foreach ($moduli as $n) {
            while ($x % $n != $residues[$k][$n]) {
                $x += $mod;
            }
            $mod *= $n;
        }
        if ($x > 0xFFFFFFFF) {
            fwrite(STDERR, "CRT result out of range for $key\n");
            exit(1);
        }
        $out .= rawurlencode($key) . "\t$x\n";
    }
    file_put_contents(__DIR__ . "/$file", $out);
    echo "wrote $file\n";
}

$ketama = [Memcached::OPT_LIBKETAMA_COMPATIBLE => true];

placement("php_ketama_4.tsv", "libmemcached ketama, OPT_LIBKETAMA_COMPATIBLE, 4 servers, default weight",
    $ketama,
    [["127.0.0.1", 11211, 0], ["127.0.0.1", 11212, 0], ["10.0.0.5", 11211, 0], ["10.0.0.6", 22122, 0]],
    $keys);

placement("php_ketama_weighted.tsv", "libmemcached ketama, OPT_LIBKETAMA_COMPATIBLE, weights 1,2,3,5",
    $ketama,
    [["10.0.0.1", 11211, 1], ["10.0.0.2", 11211, 2], ["10.0.0.3", 11212, 3], ["cache-4.example", 11211, 5]],
    $keys);

// Only non-default ports: the libmemcached identity is then "host:port",
// the same string memcached proxy's ring_hash omode "ketama" hashes.
placement("php_ketama_ports.tsv", "libmemcached ketama, OPT_LIBKETAMA_COMPATIBLE, 5 servers on non-default ports",
    $ketama,
    [["127.0.0.1", 21001, 1], ["127.0.0.1", 21002, 1], ["127.0.0.1", 21003, 1], ["127.0.0.1", 21004, 1], ["127.0.0.1", 21005, 1]],
    $keys);

$nine = [];
for ($i = 1; $i <= 9; $i++) {
    $nine[] = ["10.1.0.$i", 11211 + ($i % 2), 1];
}
placement("php_ketama_9.tsv", "libmemcached ketama, OPT_LIBKETAMA_COMPATIBLE, 9 servers weight 1",
    $ketama, $nine, $keys);

placement("php_modula_crc.tsv", "libmemcached modula, OPT_HASH=HASH_CRC, 3 servers",
    [Memcached::OPT_DISTRIBUTION => Memcached::DISTRIBUTION_MODULA, Memcached::OPT_HASH => Memcached::HASH_CRC],
    [["127.0.0.1", 11211, 0], ["127.0.0.1", 11212, 0], ["127.0.0.1", 11213, 0]],
    $keys);

placement("php_modula_default.tsv", "libmemcached modula, OPT_HASH=HASH_DEFAULT (one_at_a_time), 5 servers",
    [Memcached::OPT_DISTRIBUTION => Memcached::DISTRIBUTION_MODULA, Memcached::OPT_HASH => Memcached::HASH_DEFAULT],
    [["10.0.0.1", 11211, 0], ["10.0.0.2", 11211, 0], ["10.0.0.3", 11211, 0], ["10.0.0.4", 11211, 0], ["10.0.0.5", 11211, 0]],
    $keys);

$hashes = [
    "one_at_a_time" => Memcached::HASH_DEFAULT,
    "md5" => Memcached::HASH_MD5,
    "crc32" => Memcached::HASH_CRC,
    "fnv1_64" => Memcached::HASH_FNV1_64,
    "fnv1a_64" => Memcached::HASH_FNV1A_64,
    "fnv1_32" => Memcached::HASH_FNV1_32,
    "fnv1a_32" => Memcached::HASH_FNV1A_32,
    "murmur" => Memcached::HASH_MURMUR,
    // HASH_HSIEH is not compiled into Debian's libhashkit (setOption fails);
    // hsieh is covered by the twemproxy vectors instead.
];
foreach ($hashes as $name => $h) {
    raw_hashes("php_hash_$name.tsv", $name, $h, $keys);
}

#!/usr/bin/env python3
"""Capture golden vectors from twemproxy (nutcracker) on loopback.

Starts four memcached instances and one nutcracker with one pool per scenario,
stores every key of keys.txt through each pool, then asks every memcached
which keys it holds.  The backend that holds a key is where twemproxy routed
it.  Writes tw_*.tsv next to this file (same format as capture_php.php).

Usage: python3 capture_twemproxy.py     (needs /usr/bin/memcached and
/usr/sbin/nutcracker; binds 127.0.0.2:11211, 127.0.0.3:11211,
127.0.0.1:31211-31212 and 127.0.0.1:32300-32399; stops what it started.)
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
MEMCACHED = "/usr/bin/memcached"
NUTCRACKER = "/usr/sbin/nutcracker"

# Two backends on the default port (twemproxy then leaves ":11211" out of the
# ring identity, like libmemcached) and two on other ports.
BACKENDS = [("127.0.0.2", 11211), ("127.0.0.3", 11211), ("127.0.0.1", 31211), ("127.0.0.1", 31212)]

HASHES = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64",
          "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins"]


def scenarios():
    """(file, title, distribution, hash, [(backend idx, weight, name)], hash_tag)"""
    out = []
    four = [(i, 1, None) for i in range(4)]
    for h in HASHES:
        out.append((f"tw_ketama_{h}.tsv", f"twemproxy ketama, hash {h}, 4 servers weight 1",
                    "ketama", h, four, None))
    out.append(("tw_ketama_weighted.tsv", "twemproxy ketama, hash fnv1a_64, weights 1,2,3,5",
                "ketama", "fnv1a_64", [(0, 1, None), (1, 2, None), (2, 3, None), (3, 5, None)], None))
    out.append(("tw_ketama_named.tsv", "twemproxy ketama, hash md5, servers named alpha..delta",
                "ketama", "md5", [(0, 1, "alpha"), (1, 1, "beta"), (2, 1, "gamma"), (3, 1, "delta")], None))
    out.append(("tw_ketama_hashtag.tsv", "twemproxy ketama, hash fnv1a_64, hash_tag \"{}\"",
                "ketama", "fnv1a_64", four, "{}"))
    out.append(("tw_modula_fnv1a_64.tsv", "twemproxy modula, hash fnv1a_64, 3 servers weight 1",
                "modula", "fnv1a_64", [(0, 1, None), (1, 1, None), (2, 1, None)], None))
    out.append(("tw_modula_crc32a_weighted.tsv", "twemproxy modula, hash crc32a, weights 1,2,3,1",
                "modula", "crc32a", [(0, 1, None), (1, 2, None), (2, 3, None), (3, 1, None)], None))
    return out


def read_keys():
    with open(os.path.join(HERE, "keys.txt"), encoding="utf-8") as f:
        return [line.rstrip("\n").encode() for line in f if line.rstrip("\n")]


class Conn:
    def __init__(self, host, port):
        for _ in range(100):
            try:
                self.s = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"cannot connect to {host}:{port}")
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, data):
        self.s.sendall(data)
        return self.line()

    def has(self, key):
        self.s.sendall(b"get " + key + b"\r\n")
        first = self.line()
        if first == b"END":
            return False
        if not first.startswith(b"VALUE "):
            raise RuntimeError(f"unexpected {first!r}")
        self.line()  # data
        if self.line() != b"END":
            raise RuntimeError("expected END")
        return True


def main():
    keys = read_keys()
    procs = []
    tmp = tempfile.mkdtemp(prefix="memroute-tw-")
    try:
        for host, port in BACKENDS:
            procs.append(subprocess.Popen([MEMCACHED, "-l", host, "-p", str(port), "-U", "0",
                                           "-m", "16", "-t", "1"] + (["-u", "nobody"] if os.geteuid() == 0 else [])))
        scen = scenarios()
        conf = []
        for n, (_, _, dist, h, servers, tag) in enumerate(scen):
            conf.append(f"pool{n}:")
            conf.append(f"  listen: 127.0.0.1:{32300 + n}")
            conf.append(f"  hash: {h}")
            conf.append(f"  distribution: {dist}")
            if tag:
                conf.append(f"  hash_tag: \"{tag}\"")
            conf.append("  auto_eject_hosts: false")
            conf.append("  timeout: 2000")
            conf.append("  servers:")
            for idx, weight, name in servers:
                host, port = BACKENDS[idx]
                conf.append(f"   - {host}:{port}:{weight}" + (f" {name}" if name else ""))
        conf_path = os.path.join(tmp, "nutcracker.yml")
        with open(conf_path, "w") as f:
            f.write("\n".join(conf) + "\n")
        procs.append(subprocess.Popen([NUTCRACKER, "-c", conf_path, "-s", "32399",
                                       "-o", os.path.join(tmp, "nutcracker.log")]))
        backend_conns = [Conn(h, p) for h, p in BACKENDS]
        version = subprocess.run([NUTCRACKER, "--version"], capture_output=True, text=True)
        version = (version.stdout + version.stderr).strip().splitlines()[0]
        for n, (file, title, dist, h, servers, tag) in enumerate(scen):
            for c in backend_conns:
                assert c.cmd(b"flush_all\r\n") == b"OK"
            proxy = Conn("127.0.0.1", 32300 + n)
            for k in keys:
                r = proxy.cmd(b"set " + k + b" 0 0 1\r\nx\r\n")
                if r != b"STORED":
                    raise RuntimeError(f"set {k!r} via pool{n}: {r!r}")
            proxy.s.close()
            lines = [f"# {title}", f"# captured by capture_twemproxy.py: {version}, memcached backends on loopback"]
            if tag:
                lines.append(f"# hash_tag {tag}")
            for idx, weight, name in servers:
                host, port = BACKENDS[idx]
                lines.append(f"backend\t{name or f'{host}:{port}'}\t{weight}")
            for k in keys:
                holders = [pos for pos, (idx, _, _) in enumerate(servers) if backend_conns[idx].has(k)]
                if len(holders) != 1:
                    raise RuntimeError(f"{file}: key {k!r} held by {holders}")
                lines.append(f"{urllib.parse.quote(k, safe='')}\t{holders[0]}")
            with open(os.path.join(HERE, file), "w") as f:
                f.write("\n".join(lines) + "\n")
            print("wrote", file)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    sys.exit(main())

"""Clients of the real servers the tests and the bench checkpoint (no
pytest here: bench/runner.py imports it as it imports containers.py)."""
from __future__ import annotations

import socket


class Memcache:
    """memcached's text protocol over one connection."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.s.makefile("rb")

    def set_many(self, items: dict[str, bytes]) -> None:
        self.s.sendall(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)
                                for k, v in items.items()))
        for k in items:
            line = self.f.readline()
            if line != b"STORED\r\n":
                raise RuntimeError(f"memcached: set {k}: {line!r}")

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), 500):   # a request line under memcached's 2048 bytes
            self.s.sendall(b"get " + " ".join(keys[i:i + 500]).encode() + b"\r\n")
            while (line := self.f.readline()) != b"END\r\n":
                word, key, _, n = line.split()
                if word != b"VALUE":
                    raise RuntimeError(f"memcached: get: {line!r}")
                out[key.decode()] = self.f.read(int(n) + 2)[:-2]
        return out

    def stat(self, name: str) -> str:
        self.s.sendall(b"stats\r\n")
        value = ""
        while (line := self.f.readline()) != b"END\r\n":
            parts = line.decode().split()
            if parts[1] == name:
                value = parts[2]
        return value

    def close(self) -> None:
        self.f.close()
        self.s.close()

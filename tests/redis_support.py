"""Redis for the shared-state tests: a tiny RESP client (standard library only), a look at the
keys under a prefix, and a private ``redis-server`` the tests may stop and start.

The machine's Redis (``127.0.0.1:6379``) is shared: tests use it only under a key prefix of
their own (``unique_prefix()``) and delete their keys afterwards. Outages are played on a
``PrivateRedis`` (a ``redis-server`` subprocess on a free port, no persistence), never on the
machine's Redis.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MACHINE_REDIS = ("127.0.0.1", 6379)


class RedisError(Exception):
    pass


class Redis:
    """A synchronous RESP2 client over one connection (reconnects after an error)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, timeout: float = 3.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    # ---- connection ----------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._buf = b""
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    # ---- protocol ------------------------------------------------------------------------------
    @staticmethod
    def _encode(args) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def _fill(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self._buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")

    def cmd(self, *args):
        try:
            sock = self._connect()
            sock.sendall(self._encode(args))
            reply = self._reply()
        except OSError:
            self.close()
            raise
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def ping(self) -> bool:
        try:
            return self.cmd("PING") == "PONG"
        except (OSError, RedisError):
            return False

    # ---- helpers -------------------------------------------------------------------------------
    def scan(self, pattern: str) -> list[str]:
        keys, cursor = [], "0"
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys += batch
            if cursor == "0":
                return sorted(set(keys))

    def delete_matching(self, pattern: str) -> int:
        keys = self.scan(pattern)
        for i in range(0, len(keys), 500):
            self.cmd("DEL", *keys[i:i + 500])
        return len(keys)

    def describe(self, key: str) -> "KeyInfo":
        typ = self.cmd("TYPE", key)
        pttl = self.cmd("PTTL", key)
        if typ == "string":
            value = self.cmd("GET", key)
        elif typ == "hash":
            flat = self.cmd("HGETALL", key) or []
            value = dict(zip(flat[::2], flat[1::2]))
        elif typ == "zset":
            flat = self.cmd("ZRANGE", key, 0, -1, "WITHSCORES") or []
            value = list(zip(flat[::2], flat[1::2]))
        elif typ == "list":
            value = self.cmd("LRANGE", key, 0, -1)
        elif typ == "set":
            value = sorted(self.cmd("SMEMBERS", key) or [])
        else:
            value = None
        return KeyInfo(key, typ, value, pttl)

    def keys_under(self, pattern: str) -> list["KeyInfo"]:
        return [self.describe(k) for k in self.scan(pattern)]


@dataclass
class KeyInfo:
    key: str
    type: str       # string, hash, zset, list, set, none
    value: object
    pttl: int       # ms; -1: no expiry, -2: gone

    def count(self) -> int:
        """What the key counts, whatever its shape: an integer string's value, a rate window's
        current + previous counts, the sum of another hash's integer fields, the members of a
        sorted set, set or list."""
        if self.type == "string":
            try:
                return int(self.value)
            except (TypeError, ValueError):
                return 0
        if self.type == "hash" and {"s", "c", "w"} <= set(self.value):
            # The gateway's sliding rate window (start, current, previous, width).
            return int(self.value.get("c", 0)) + int(self.value.get("p", 0) or 0)
        if self.type == "hash":
            total = 0
            for v in self.value.values():
                try:
                    total += int(v)
                except ValueError:
                    pass
            return total
        if self.type in ("zset", "list", "set"):
            return len(self.value)
        return 0

    def __str__(self) -> str:
        v = self.value
        text = repr(v)
        if len(text) > 300:
            text = text[:300] + "..."
        return f"{self.key} [{self.type}, pttl={self.pttl}] = {text}"


def describe_keys(infos: list[KeyInfo]) -> str:
    return "\n".join(str(i) for i in infos) or "(no keys)"


def unique_prefix(tag: str = "t") -> str:
    return f"llmgw-test-{tag}-{uuid.uuid4().hex[:10]}"


def machine_redis_available() -> bool:
    r = Redis(*MACHINE_REDIS, timeout=1.0)
    try:
        return r.ping()
    finally:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of the test's own on ``port`` (a free one by default): no persistence,
    so a restart comes back empty. ``kill()`` (SIGKILL), ``pause()`` (SIGSTOP: connections
    hang), ``resume()``, ``start()`` again on the same port; ``close()`` at the end."""

    def __init__(self, workdir: str | os.PathLike, port: int | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> Redis:
        return Redis("127.0.0.1", self.port)

    def start(self, timeout: float = 10.0) -> "PrivateRedis":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed")
        self.starts += 1
        log = open(self.workdir / f"redis-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.time() + timeout
        r = self.client()
        try:
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
                if r.ping():
                    self.paused = False
                    return self
                time.sleep(0.05)
        finally:
            r.close()
        raise RuntimeError(f"redis-server on port {self.port} not answering after {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        p = self.workdir / f"redis-{self.starts}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False

    def pause(self) -> None:
        assert self.proc and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        self.kill()

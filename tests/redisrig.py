"""A real `redis-server` on a free loopback port, for tests that need a shared store.

`start_redis()` (or the `redis_server` fixture of a test module) runs the Debian
`redis-server` with no persistence, waits until it answers PING, and can be stopped,
killed and restarted on the same port, so a test sees the store vanish and come back.
Not specific to any feature: feedback claims use it, and so can anything else.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.procs import free_port
from tests.programs import require_program

INSTALL = "apt-get install redis-server"


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING on 127.0.0.1:port (RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`; restartable on the same port."""

    def __init__(self, program: str, workdir: Path, port: int | None = None) -> None:
        self.program = program
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.program,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(self.port):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} within {timeout}s; "
            f"log:\n{self.log.read_text(errors='replace')[-2000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: the store vanishes at once (no shutdown, connections reset)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        self._end(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung store)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def _end(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server must be able to exit
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ping(self.port, timeout=0.1):
            time.sleep(0.05)


@contextlib.contextmanager
def running_redis(workdir: Path, port: int | None = None) -> Iterator[RedisServer]:
    """A started RedisServer, always stopped afterwards; skips (or fails in CI) when
    redis-server is not installed."""
    server = RedisServer(require_program("redis-server", INSTALL), workdir, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()

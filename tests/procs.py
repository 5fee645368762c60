"""Real processes on loopback for the tests: simulators and the gateway itself.

Every process is started with `python -m gateway ...` exactly as a user would, waits
for its one "listening" line (bounded), and is always stopped by the fixture.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
_LISTEN_SIM = re.compile(r"switchyard-sim \S+ listening on (http://\S+)")
# The gRPC address comes last and only when the gateway serves gRPC.
_LISTEN_GW = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)(?: grpc (\S+))?")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (a server started soon after can take it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A child process whose output is collected in the background."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str] = field(default_factory=queue.Queue)
    _pump: threading.Thread | None = None

    def __post_init__(self) -> None:
        def pump() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                self.lines.append(line)
                self._q.put(line)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            m = pattern.search(line)
            if m:
                return m
        raise RuntimeError(
            f"process did not print {pattern.pattern!r} in {timeout}s; "
            f"exit={self.popen.poll()} output:\n{''.join(self.lines)[-4000:]}"
        )

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        # Its children (a supervisor's workers, a drift worker) hold the output pipe too:
        # whatever is left of its process group goes now, so the pipe reaches EOF.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self._pump is not None:
            self._pump.join(5)  # the pipe reaches EOF once the process is gone
        # Closing a pipe another thread still reads would block on its lock: only once
        # the pump is done (else the pipe goes with the test process).
        if self.popen.stdout is not None and (self._pump is None or not self._pump.is_alive()):
            self.popen.stdout.close()
        return self.popen.returncode


def spawn(args: list[str], env: dict[str, str] | None = None, module: str = "gateway") -> Proc:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        # Its own process group, so `stop` can take its children with it.
        start_new_session=True,
    )
    return Proc(popen)


@dataclass
class Simulator:
    proc: Proc
    url: str
    name: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, object]:
        result: dict[str, object] = httpx.get(f"{self.url}/sim/stats", timeout=5).json()
        return result


def start_simulator(name: str, *extra: str, kind: str = "openai", port: int = 0) -> Simulator:
    proc = spawn(["simulate", kind, "--port", str(port), "--name", name, *extra])
    m = proc.wait_for(_LISTEN_SIM)
    return Simulator(proc, m.group(1), name)


_LISTEN_SIM_GRPC = re.compile(r"switchyard-sim \S+ grpc listening on (\S+)")


@dataclass
class KServeSimulator(Simulator):
    """A `simulate kserve` process; `grpc` is its gRPC `host:port` ("" when off)."""

    grpc: str = ""

    @property
    def http_address(self) -> str:
        """`host:port` of the HTTP side, as tritonclient.http wants it."""
        return self.url.removeprefix("http://")


def start_kserve(name: str, *extra: str, grpc: bool = True) -> KServeSimulator:
    """Start `switchyard simulate kserve` (with gRPC on a free port unless `grpc` is
    False) and wait for its listening lines."""
    grpc_args = ["--grpc-port", "0"] if grpc else []
    # `python -m gateway.simulate` is the simulators' own entry point (the same commands
    # as `switchyard simulate`): it loads no gateway code, so these tests hold the
    # simulator alone.
    args = ["kserve", "--port", "0", "--name", name, *grpc_args, *extra]
    proc = spawn(args, module="gateway.simulate")
    try:
        url = proc.wait_for(_LISTEN_SIM, 60).group(1)
        address = proc.wait_for(_LISTEN_SIM_GRPC, 60).group(1) if grpc else ""
    except Exception:
        proc.stop()
        raise
    return KServeSimulator(proc, url, name, address)


@dataclass
class GatewayProc:
    proc: Proc
    url: str
    admin: str
    policy_dir: Path
    grpc: str = ""  # host:port of the gRPC front; "" unless started with --grpc-port

    def metrics(self) -> str:
        return httpx.get(f"{self.admin}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


def start_gateway(policy_dir: Path, *extra: str, env: dict[str, str] | None = None) -> GatewayProc:
    proc = spawn(
        [
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--policies",
            str(policy_dir),
            "--watch-interval",
            "0.2",
            # No gRPC unless a test asks (`--grpc-port 0` in extra wins, being later):
            # the default port 8082 would clash between gateways running side by side.
            "--grpc-port",
            "-1",
            *extra,
        ],
        env=env,
    )
    m = proc.wait_for(_LISTEN_GW)
    return GatewayProc(proc, m.group(1), m.group(2), policy_dir, m.group(3) or "")


def canary_policy(
    route: str, champion: str, challenger: str, weights: tuple[int, int] = (90, 10), extra: str = ""
) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - name: champion
    weight: {weights[0]}
    endpoints: [{champion}]
  - name: challenger
    weight: {weights[1]}
    endpoints: [{challenger}]
sticky: {{hash_on: "header:x-user-id"}}
overrides:
  - match: {{header: {{x-cohort: beta}}}}
    variant: challenger
fallback: [champion]
{extra}"""


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def poll(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """`check()` until it returns something truthy, which it returns; fails with `what`
    and the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")

"""Start the systems under test on loopback and always stop them again.

Every child gets its own session (so a Ctrl-C in the terminal reaches only the bench,
which then stops the children in order) and a parent-death signal (so a bench killed
with SIGKILL does not leave nginx or the gateway listening). Output goes to log files
in the temp directory, never to a pipe: a pipe nobody reads would block a chatty child
mid-benchmark.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

from benchlib import configs

REPO = Path(__file__).resolve().parents[2]

_LISTEN_GW = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)")
_COMPILED_FLOOR = """\
import sys
sys.path.insert(0, sys.argv.pop(1))
import floor
if not floor.__file__.endswith((".so", ".pyd")):
    sys.exit(f"floor is not compiled: {floor.__file__}")
sys.exit(floor.main(sys.argv[1:]))
"""
_LISTEN_FLOOR = re.compile(r"floor listening on (http://\S+)")
_LISTEN_SIM = re.compile(r"switchyard-sim \S+ listening on (http://\S+)")
_SINK_READY = re.compile(r"drift sink reading")
# The drift sink: binds the address the gateway sends drift samples to (a drift folder's,
# or a udp:// one; the gateway's own code resolves it) and reads datagrams until
# stopped, counting them for its log.
_DRIFT_SINK = """
import signal, sys
from gateway.drift.channel import receiver_socket, target
sock = receiver_socket(target(sys.argv[2] or None, sys.argv[1]))
sock.setblocking(True)
got = [0, 0]
def stop(*_):
    print(f"drift sink: {got[0]} datagrams, {got[1]} bytes", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("drift sink reading", flush=True)
while True:
    got[1] += len(sock.recv(1 << 20))
    got[0] += 1
"""
_PR_SET_PDEATHSIG = 1
_DIR_PREFIX = "switchyard-bench-"

ConfFactory: TypeAlias = Callable[[Path, int], str]
"""`(workdir, port) -> nginx.conf text`."""


class BenchError(Exception):
    """A problem the user can fix (missing tool, a system that did not start)."""


def find_tool(name: str, apt_package: str) -> str:
    """Path of an external program, or a BenchError that says how to install it."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name) if p.exists()),
        None,
    )
    if found is None:
        raise BenchError(
            f"{name} not found on PATH; install it with: apt-get install -y {apt_package}"
        )
    return found


def gateway_python() -> str:
    """The interpreter with the gateway's dependencies: the project venv if present."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else os.environ.get("SWITCHYARD_PYTHON", "python3")


def _remove_orphaned_dirs() -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*-*"):
        pid = path.name[len(_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A port that was free a moment ago (nginx needs a number, it cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """`preexec_fn`: the child gets SIGTERM when the bench dies, however it dies."""
    # Runs in the child between fork and exec; unsafe only with threads, and the
    # bench has none.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Service:
    """One started process tree (nginx master and worker, a gateway, a simulator)."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path
    admin_url: str | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            # SIGTERM: nginx does a fast shutdown, the gateway drains (nothing is in
            # flight once wrk has finished, so it exits at once).
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader is gone; its session may still hold a worker.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)


class Launcher:
    """Owns a temp directory and every process started in it; `with` cleans up both."""

    def __init__(self, keep: bool = False) -> None:
        _remove_orphaned_dirs()
        # The pid in the name lets a later run remove this dir if the bench is killed
        # (SIGKILL skips every cleanup; the children die with it, see die_with_parent).
        self.root = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        self.keep = keep
        self.services: list[Service] = []

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        # Front to back: proxies before the upstream they hold connections to.
        while self.services:
            self.services.pop().stop()
        if self.keep:
            print(f"bench: kept temp dir {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return popen, log

    def _track(self, service: Service) -> Service:
        self.services.append(service)
        return service

    # nginx --------------------------------------------------------------------------

    def start_nginx(self, name: str, conf_for: ConfFactory) -> Service:
        nginx = find_tool("nginx", "nginx")
        workdir = self.root / name
        workdir.mkdir()
        port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(conf_for(workdir, port))
        popen, log = self._spawn(
            name, [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
        )
        service = self._track(Service(name, popen, f"http://127.0.0.1:{port}", log))
        self._wait_http(service, workdir / "error.log")
        return service

    # The gateway and its simulator ----------------------------------------------------

    def start_gateway(
        self,
        policy: str,
        python: str,
        extra: list[str] | None = None,
        *,
        name: str = "gateway",
        compiled: str = "require",
        env: dict[str, str] | None = None,
        tree: Path = REPO,
    ) -> Service:
        """`switchyard serve` on `policy`; `compiled` is its SWITCHYARD_COMPILED: the
        compiled request path is required by default, so a stale build fails loudly
        instead of measuring the Python fallback. `tree` is the checkout whose code
        runs (`python -m gateway` imports the package from its working directory): the
        repository, or another commit's worktree for a before/after row."""
        policy_dir = self.root / ("policies" if name == "gateway" else f"policies-{name}")
        policy_dir.mkdir(exist_ok=True)
        (policy_dir / "bench.yaml").write_text(policy)
        (policy_dir / configs.DRIFT_REFERENCE_FILE).write_text(configs.DRIFT_REFERENCE)
        args = [python, "-m", "gateway", "serve", "--policies", str(policy_dir)]
        # The HTTP request path is what the bench measures: no gRPC listener (it would
        # also need port 8082 free, and grpcio adds ~10 MB to the RSS column).
        args += ["--port", "0", "--admin-port", "0", "--watch-interval", "0", "--grpc-port", "-1"]
        drift_dir = self.root / f"drift-{name}"
        extra = extra or []
        flag = "--drift-worker-address"
        udp = extra[extra.index(flag) + 1] if flag in extra else ""
        self.start_drift_sink(python, drift_dir, udp, name=f"{name}-drift-sink", tree=tree)
        args += ["--no-drift-worker", "--drift-dir", str(drift_dir)]
        args += ["--log-level", "warning", *(extra or [])]
        popen, log = self._spawn(
            name, args, env={**(env or {}), "SWITCHYARD_COMPILED": compiled}, cwd=tree
        )
        service = self._track(Service(name, popen, "", log))
        match = self._wait_line(service, _LISTEN_GW, 30.0)
        service.url, service.admin_url = match.group(1), match.group(2)
        return service

    def start_drift_sink(
        self,
        python: str,
        drift_dir: Path,
        udp: str = "",
        *,
        name: str = "drift-sink",
        tree: Path = REPO,
    ) -> Service:
        """A reader on the drift worker's address (of `drift_dir`, or `udp`) that
        discards what it reads: the gateway's samples leave as in production (sent, not held for a
        worker that is down), while Evidently's evaluation, another process's CPU in
        production too, stays out of the bench. Started before the gateway, stopped
        after it."""
        popen, log = self._spawn(name, [python, "-c", _DRIFT_SINK, str(drift_dir), udp], cwd=tree)
        service = self._track(Service(name, popen, "", log))
        self._wait_line(service, _SINK_READY, 30.0)
        return service

    def start_redis(self) -> Service:
        """A throwaway redis-server on loopback (no persistence)."""
        exe = find_tool("redis-server", "redis-server")
        port = free_port()
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.root)]
        popen, log = self._spawn("redis", args)
        service = self._track(Service("redis", popen, f"redis://127.0.0.1:{port}/0", log))
        self._wait_port(service, port)
        return service

    def start_prometheus(self, targets: list[str]) -> Service:
        """A Prometheus scraping `targets` (host:port of admin listeners) every 5 s."""
        exe = find_tool("prometheus", "prometheus")
        port = free_port()
        workdir = self.root / "prometheus"
        workdir.mkdir(exist_ok=True)
        conf = workdir / "prometheus.yml"
        conf.write_text(configs.prometheus_conf(targets))
        args = [exe, f"--config.file={conf}", f"--storage.tsdb.path={workdir / 'data'}"]
        args += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        popen, log = self._spawn("prometheus", args)
        service = self._track(Service("prometheus", popen, f"http://127.0.0.1:{port}", log))
        self._wait_port(service, port, timeout=30.0)
        return service

    def _wait_port(self, service: Service, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and service.alive():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.05)
        raise BenchError(f"{service.name} did not listen on port {port}:\n{service.log_tail()}")

    def start_floor(self, python: str, upstream_url: str, *, compiled: bool = False) -> Service:
        """The Python floor (floor.py): the least a proxy on this runtime does; with
        `compiled`, the same file built with mypyc (here, into the temp dir)."""
        floor = Path(__file__).resolve().parent / "floor.py"
        name = "floor-compiled" if compiled else "floor"
        args = [python, str(floor)]
        if compiled:
            build = self.root / "floor-compiled"
            build.mkdir()
            shutil.copyfile(floor, build / "floor.py")
            done = subprocess.run(
                [python, "-m", "mypyc", "floor.py"],
                cwd=build,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise BenchError(f"mypyc could not build floor.py:\n{done.stdout}{done.stderr}")
            # Run from the build, and refuse to measure floor.py interpreted by mistake.
            args = [python, "-c", _COMPILED_FLOOR, str(build)]
        popen, log = self._spawn(name, [*args, "--port", "0", "--upstream", upstream_url])
        service = self._track(Service(name, popen, "", log))
        service.url = self._wait_line(service, _LISTEN_FLOOR, 30.0).group(1)
        self._wait_http(service, log)  # listening is not answering: one real request
        return service

    def start_simulator(self, python: str, *options: str) -> Service:
        args = [python, "-m", "gateway", "simulate", "openai", "--port", "0"]
        popen, log = self._spawn("simulator", [*args, "--name", "bench-sim", *options])
        service = self._track(Service("simulator", popen, "", log))
        service.url = self._wait_line(service, _LISTEN_SIM, 30.0).group(1)
        return service

    # LiteLLM --------------------------------------------------------------------------

    def start_litellm(self, venv: Path, upstream_url: str) -> Service:
        exe = venv / "bin" / "litellm"
        if not exe.exists():
            raise BenchError(f"{exe} not found; create it with: loadtests/bench --install-litellm")
        config = self.root / "litellm.yaml"
        config.write_text(configs.litellm_config(upstream_url))
        port = free_port()
        args = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--num_workers", "1"]
        # Offline and quiet: no model-cost download, no telemetry, no per-request logs.
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "DISABLE_SCHEMA_UPDATE": "True",
            "LITELLM_MASTER_KEY": configs.API_KEY,
        }
        popen, log = self._spawn("litellm", args, env=env, cwd=self.root)
        service = self._track(Service("litellm", popen, f"http://127.0.0.1:{port}", log))
        # It imports for a long while and logs no reliable "ready" line: poll instead.
        self._wait_http(service, log, timeout=180.0)
        return service

    # Readiness ----------------------------------------------------------------------

    def _wait_line(
        self, service: Service, pattern: re.Pattern[str], timeout: float
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(service.log_tail(100_000))
            if match:
                return match
            if not service.alive():
                break
            time.sleep(0.05)
        raise BenchError(
            f"{service.name} did not start (exit status {service.popen.poll()}); "
            f"its output:\n{service.log_tail()}"
        )

    def _wait_http(self, service: Service, log: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not service.alive():
                break
            try:
                status, _, _ = post(service.url, configs.CHAT_PATH, configs.REQUEST_BODY)
            except OSError as exc:
                last = str(exc)
                time.sleep(0.05)
                continue
            if status == 200:
                return
            last = f"HTTP {status}"
            time.sleep(0.05)
        detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise BenchError(
            f"{service.name} is not answering POST {configs.CHAT_PATH}: {last}\n{detail}"
        )


def post(
    base_url: str, path: str, body: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One POST with the stdlib client: readiness probes and sanity checks only."""
    hostport = base_url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        all_headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {configs.API_KEY}",
            "x-user-id": "probe",
            **(headers or {}),
        }
        conn.request("POST", path, body=body.encode(), headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def get(base_url: str, path: str) -> tuple[int, bytes]:
    """One GET (the gateway's /metrics)."""
    hostport = base_url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()

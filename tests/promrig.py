"""A real Prometheus server on loopback for the tests: start, scrape, query, kill, restart.

`prometheus` (the Debian package's 2.x binary) runs with a config written into a temp
folder: one `switchyard` job scraping static targets (gateway admin ports) every
`scrape_interval`, plus any extra scrape configs a test wants. `start` returns once the
server is ready; `wait_up` once every target has been scraped successfully; `kill` and
`restart` simulate an outage on the same port and storage. Every wait is bounded.

    with running_prometheus(tmp_path, ["127.0.0.1:8081"]) as prom:
        prom.wait_up()
        prom.query('sum(switchyard_requests_total)')

`require_program` fails under CI (where .ci/run installs it) and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.procs import free_port
from tests.programs import require_program

INSTALL = "apt-get install prometheus (Debian 12 ships 2.42)"


def target_of(url_or_address: str) -> str:
    """`host:port` of an admin URL (`http://127.0.0.1:8081`) or of `host:port` itself."""
    text = url_or_address.split("://", 1)[-1]
    return text.split("/", 1)[0]


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass
class Prometheus:
    """One Prometheus server and its folder (config, storage, log)."""

    folder: Path
    targets: list[str]
    scrape_interval: float = 1.0
    extra_scrape_configs: list[dict[str, Any]] = field(default_factory=list)
    job: str = "switchyard"
    port: int = 0
    binary: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = self.binary or require_program("prometheus", INSTALL)
        self.port = self.port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.targets = [target_of(t) for t in self.targets]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.folder / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.folder / "prometheus.log"

    def config(self) -> dict[str, Any]:
        interval = _duration(self.scrape_interval)
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": list(self.targets)}],
                },
                *self.extra_scrape_configs,
            ],
        }

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def start(self, timeout: float = 30.0) -> Prometheus:
        """Start on `port` with the storage in `folder/data`; return once it is ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("prometheus is already running")
        self.write_config()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",  # POST /-/reload re-reads the targets
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not get ready in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: an outage as abrupt as it gets (the port refuses at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout: float = 30.0) -> Prometheus:
        """Stopped or killed: start again on the same port and storage."""
        self.stop()
        return self.start(timeout)

    def set_targets(self, targets: Sequence[str]) -> None:
        """Scrape these targets from now on (config rewritten and reloaded)."""
        self.targets = [target_of(t) for t in targets]
        self.write_config()
        if self.running():
            reply = httpx.post(f"{self.url}/-/reload", timeout=10)
            reply.raise_for_status()

    def active_targets(self) -> list[dict[str, Any]]:
        """The targets being scraped, as /api/v1/targets lists them (labels, health, ...)."""
        reply = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5)
        reply.raise_for_status()
        found: list[dict[str, Any]] = reply.json()["data"]["activeTargets"]
        return found

    def dropped_targets(self) -> list[dict[str, Any]]:
        """Discovered targets that relabeling dropped (their labels before relabeling)."""
        reply = httpx.get(f"{self.url}/api/v1/targets", params={"state": "dropped"}, timeout=5)
        reply.raise_for_status()
        found: list[dict[str, Any]] = reply.json()["data"]["droppedTargets"]
        return found

    def wait_up(self, timeout: float = 30.0) -> None:
        """Until every configured target of the `job` has been scraped successfully."""
        deadline = time.monotonic() + timeout
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                health = {
                    t["labels"]["instance"]: t["health"]
                    for t in self.active_targets()
                    if t["labels"].get("job") == self.job
                }
                if set(health) == set(self.targets) and all(h == "up" for h in health.values()):
                    return
            time.sleep(0.2)
        raise AssertionError(f"targets not all up in {timeout}s: {health} (want {self.targets})")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on an error answer)."""
        params = {"query": promql} if at is None else {"query": promql, "time": str(at)}
        reply = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = reply.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_scraped_since(self, since: float, timeout: float = 30.0) -> None:
        """Until every target has been scraped at or after unix time `since`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                seen = self.active_targets()
                stamps = [
                    _unix(t.get("lastScrape", ""))
                    for t in seen
                    if t["labels"].get("job") == self.job
                ]
                if len(stamps) == len(self.targets) and all(s >= since for s in stamps):
                    return
            time.sleep(0.1)
        raise AssertionError(f"targets not all scraped since {since} within {timeout}s")


def _unix(stamp: str) -> float:
    """RFC 3339 with nanoseconds (Prometheus' lastScrape) as unix time; 0 if unreadable."""
    from datetime import datetime

    if not stamp:
        return 0.0
    head, _, rest = stamp.partition(".")
    zone = rest.lstrip("0123456789") if rest else stamp[19:]
    fraction = rest[: len(rest) - len(zone)] if rest else ""
    try:
        base = datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    except ValueError:
        return 0.0
    return base.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


@contextlib.contextmanager
def running_prometheus(
    folder: Path,
    targets: Sequence[str],
    *,
    scrape_interval: float = 1.0,
    extra_scrape_configs: Sequence[dict[str, Any]] = (),
    port: int = 0,
) -> Iterator[Prometheus]:
    """A started Prometheus scraping `targets`, always stopped afterwards."""
    prom = Prometheus(
        folder,
        list(targets),
        scrape_interval=scrape_interval,
        extra_scrape_configs=list(extra_scrape_configs),
        port=port,
    )
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()

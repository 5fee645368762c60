"""The quick start's rollout demo (`switchyard demo --rollout`).

Adds route `assistant` (policies/rollout/), which follows model `assistant` in the
demo's registry: version 1 on :9101 is @champion, version 2 on :9102 is @challenger
(healthy), and version 3 on :9105 is @candidate, a simulator answering 5% of requests
with 500. A small traffic generator sends requests and outcome feedback, so the rollout
runs by itself: version 2 is stepped up and promoted; then
`switchyard registry promote assistant candidate --to challenger` makes version 3 the
challenger, and its rollout is rolled back at the first step.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

import httpx

from gateway.quickstart.mlflow_server import SeedModel, SeedVersion

ROLLOUT_POLICIES = "policies/rollout"
ROUTE = "assistant"
# (name, kind, port, options) of the simulators the rollout demo adds.
FAULTY = (
    "faulty",
    "openai",
    9105,
    ("--latency-ms", "8", "--tokens", "24", "--fault", "status=500:0.05", "--seed", "7"),
)


def _lineage(version: int) -> dict[str, str]:
    return {
        "training_run_id": f"demo-run-assistant-{version}",
        "training_dataset": f"s3://switchyard-demo/data/assistant/2026-{8 + version:02d}.parquet",
        "git_commit_sha": ("3f2c1a7", "9b41e0d", "c0ffee1")[version - 1],
    }


ROLLOUT_MODELS = (
    SeedModel(
        ROUTE,
        "Assistant model behind the quick start's progressive rollout (route `assistant`).",
        (
            SeedVersion(
                "s3://switchyard-demo/models/assistant/1",
                "http://127.0.0.1:9101",
                ("champion",),
                _lineage(1),
            ),
            SeedVersion(
                "s3://switchyard-demo/models/assistant/2",
                "http://127.0.0.1:9102",
                ("challenger",),
                _lineage(2),
            ),
            SeedVersion(
                "s3://switchyard-demo/models/assistant/3",
                "http://127.0.0.1:9105",
                ("candidate",),
                _lineage(3),
            ),
        ),
    ),
)


class DemoTraffic:
    """A background thread sending ~`rate` chat requests per second to the rollout route,
    with outcome feedback (the challenger converts a little better), until stopped."""

    def __init__(
        self,
        base_url: str,
        *,
        rate: float = 40.0,
        conversion: tuple[float, float] = (0.10, 0.14),
        seed: int = 7,
    ) -> None:
        self.base_url = base_url
        self.rate = rate
        self.conversion = {"champion": conversion[0], "challenger": conversion[1]}
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        body = {"model": ROUTE, "messages": [{"role": "user", "content": "hello"}]}
        gap = 1.0 / self.rate
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                user = f"user-{self._rng.randrange(100_000)}"
                # The gateway may not be listening yet, or be draining: try again later.
                with contextlib.suppress(httpx.HTTPError):
                    reply = client.post(
                        "/v1/chat/completions", json=body, headers={"x-user-id": user}
                    )
                    variant = reply.headers.get("x-switchyard-variant", "")
                    if reply.status_code == 200 and variant in self.conversion:
                        outcome = self._rng.random() < self.conversion[variant]
                        client.post(
                            "/v1/feedback",
                            json={"request_id": reply.headers["x-request-id"], "outcome": outcome},
                        )
                self._stop.wait(max(0.0, gap - (time.monotonic() - started)))


def try_it(base: str, admin: str, registry: str) -> list[str]:
    """The quick start's instructions for the rollout demo."""
    return [
        f"Progressive rollout (route {ROUTE}; demo traffic and feedback already flowing):",
        f"  switchyard rollout status {ROUTE} --admin {admin}   # steps 10 -> 25 -> 50 -> 100%",
        f"  switchyard registry describe {ROUTE} --registry-uri {registry}  # @champion -> 2",
        f"  switchyard registry promote {ROUTE} candidate --to challenger --registry-uri "
        f"{registry}",
        "      # version 3 (5% errors) becomes the challenger: rolled back at its first step",
        f"  curl -s {admin}/admin/experiments/{ROUTE}   # conversion per variant, z-test",
        f"  curl -s {admin}/metrics | grep switchyard_rollout",
    ]

"""Progressive rollout and A/B feedback against real simulators and a real gateway.

No registry here: endpoint variants, state in a local folder, `on_success: hold`. The
registry side (alias promotion, state in model tags, restart) is in
tests/integration/registry/test_rollout_registry.py, which reuses these helpers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import REPO, GatewayProc, Simulator, running, start_simulator


class Traffic:
    """Threads posting chat completions until stopped or `limit` (bounded in count)."""

    def __init__(
        self, url: str, route: str, threads: int = 3, limit: int = 6000, sticky: bool = False
    ) -> None:
        self.url, self.route, self.limit, self.sticky = url, route, limit, sticky
        self.records: list[tuple[str, str, int, str]] = []  # (variant, version, status, id)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, index: int) -> None:
        body = {"model": self.route, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self._stop.is_set() and len(self.records) < self.limit:
                n += 1
                headers = {"x-user-id": f"user-{index}-{n}"} if self.sticky else {}
                r = client.post(f"{self.url}/v1/chat/completions", json=body, headers=headers)
                with self._lock:
                    self.records.append(
                        (
                            r.headers.get("x-switchyard-variant", ""),
                            r.headers.get("x-switchyard-version", ""),
                            r.status_code,
                            r.headers.get("x-request-id", ""),
                        )
                    )

    def variants(self, since: int = 0) -> Counter[str]:
        with self._lock:
            return Counter(v for v, _, _, _ in self.records[since:])


def rollout_state(gw: GatewayProc, route: str, token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{gw.admin}/admin/rollouts/{route}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def wait_rollout(
    gw: GatewayProc,
    route: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 90.0,
    token: str | None = None,
) -> dict[str, Any]:
    """Poll the rollout until `done(state)`; the last view on timeout (test fails)."""
    deadline = time.monotonic() + timeout
    view = rollout_state(gw, route, token)
    while time.monotonic() < deadline:
        state = view.get("state")
        if state is not None and done(state):
            return view
        time.sleep(0.2)
        view = rollout_state(gw, route, token)
    raise AssertionError(f"rollout did not get there in {timeout}s: {json.dumps(view)[:3000]}")


def events(view: dict[str, Any]) -> list[str]:
    return [e["event"] for e in view["state"]["history"]]


class Hooks:
    """A loopback HTTP server recording the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    yield server
    server.close()


def endpoint_policy(route: str, champion: str, challenger: str, rollout: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: champion, weight: 90, endpoints: ["{champion}"]}}
  - {{name: challenger, weight: 10, endpoints: ["{challenger}"]}}
{rollout}"""


def test_challenger_with_five_percent_errors_rolls_back_at_the_first_step(
    gateway: Callable[..., GatewayProc], tmp_path: Path, hooks: Hooks
) -> None:
    champion = start_simulator("rb-champion", "--latency-ms", "2")
    challenger = start_simulator(
        "rb-challenger", "--latency-ms", "2", "--fault", "status=500:0.05", "--seed", "7"
    )
    with running(champion.proc, challenger.proc):
        rollout = f"""rollout:
  steps: [20, 50, 100]
  analysis: {{interval: 0.5s, min_requests: 100, max_error_rate: 0.01}}
  on_success: hold
  webhook: {hooks.url}
"""
        gw = gateway(
            endpoint_policy("rb", champion.url, challenger.url, rollout),
            extra=("--rollout-dir", str(tmp_path / "rollouts")),
        )
        with Traffic(gw.url, "rb", limit=4000) as traffic:
            view = wait_rollout(gw, "rb", lambda s: s["status"] != "progressing")
            after = len(traffic.records)
            time.sleep(1.0)  # the rollback snapshot serves from here on
            settled = len(traffic.records)
            traffic.limit = settled + 150
            deadline = time.monotonic() + 30
            while len(traffic.records) < settled + 150 and time.monotonic() < deadline:
                time.sleep(0.05)
        state = view["state"]
        assert state["status"] == "rolled_back", state
        assert events(view) == ["started", "rollback"]  # never stepped past the first
        rollback = state["history"][-1]
        assert rollback["step"] == 0 and rollback["percent"] == 0.0
        assert "gate error_rate failed" in rollback["reason"]
        gates = {g["gate"]: g for g in rollback["details"]["gates"]}
        assert gates["error_rate"]["value"] > 0.01 and gates["error_rate"]["outcome"] == "fail"
        assert rollback["details"]["challenger_requests"] >= 100
        # The challenger is out of the split: nothing reaches it any more.
        assert set(traffic.variants(settled)) == {"champion"}
        assert after < settled
        # The webhook received every event, as JSON naming route, step and reason.
        deadline = time.monotonic() + 10
        while len(hooks.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [h["event"] for h in hooks.received] == ["started", "rollback"]
        assert hooks.received[1]["route"] == "rb" and hooks.received[1]["status"] == "rolled_back"
        assert "error_rate" in hooks.received[1]["reason"]
        assert gw.metric("switchyard_rollout_events_total", route="rb", event="rollback") == 1
        assert gw.metric("switchyard_rollout_webhooks_total", route="rb", outcome="ok") == 2
        assert gw.metric("switchyard_rollout_state", route="rb", state="rolled_back") == 1
        assert gw.metric("switchyard_rollout_challenger_percent", route="rb") == 0
        failed = gw.metric("switchyard_upstream_failed_attempts_total", variant="challenger")
        assert failed >= 2
        assert "rollout event" in gw.proc.output() and '"event":"rollback"' in gw.proc.output()
        # The state file survives for a restart of this gateway.
        stored = json.loads((tmp_path / "rollouts" / "rb.json").read_text())
        assert stored["status"] == "rolled_back"


def test_pause_resume_abort_from_the_cli(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = sims
    rollout = """rollout:
  steps: [10, 20, 30, 60, 100]
  analysis: {interval: 0.5s, min_requests: 15, max_error_rate: 0.05}
  on_success: hold
"""
    gw = gateway(
        endpoint_policy("ctl", a.url, b.url, rollout),
        extra=("--rollout-dir", str(tmp_path / "rollouts"), "--admin-token", "t0ken"),
    )
    cli = ("--admin", gw.admin, "--admin-token", "t0ken")
    with Traffic(gw.url, "ctl", limit=6000):
        wait_rollout(gw, "ctl", lambda s: s["step"] >= 2, token="t0ken")
    # No traffic now: the rollout cannot pass another step's min_requests by itself.
    paused = switchyard("rollout", "pause", "ctl", *cli)
    assert paused.returncode == 0, paused.stderr
    assert "ctl: paused at step" in paused.stdout
    step = rollout_state(gw, "ctl", "t0ken")["state"]["step"]
    with Traffic(gw.url, "ctl", limit=6000):
        time.sleep(2.0)  # four intervals with traffic: a paused rollout does not step
        assert rollout_state(gw, "ctl", "t0ken")["state"]["step"] == step
        again = switchyard("rollout", "pause", "ctl", *cli)
        assert again.returncode == 1 and "cannot pause a rollout that is paused" in again.stderr
        resumed = switchyard("rollout", "resume", "ctl", *cli)
        assert resumed.returncode == 0 and "progressing" in resumed.stdout
        aborted = switchyard("rollout", "abort", "ctl", *cli)
        assert aborted.returncode == 0 and "aborted at step 0" in aborted.stdout
        time.sleep(0.5)
        status = switchyard("rollout", "status", "ctl", *cli)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "ctl: aborted at step 0/5 (0% to challenger)" in out
    for word in ("started", "paused", "resumed", "aborted", "paused by cli:"):
        assert word in out, out
    no_token = switchyard("rollout", "status", "ctl", "--admin", gw.admin)
    assert no_token.returncode == 1 and "401" in no_token.stderr
    unknown = switchyard("rollout", "abort", "nope", *cli)
    assert unknown.returncode == 1 and "has no rollout block" in unknown.stderr


def switchyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def normal_p(z: float) -> float:
    return 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))


def test_feedback_api_and_experiment_statistics(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    gw = gateway(
        endpoint_policy("ab", a.url, b.url, "experiment: {confidence: 0.9}\n")
        .replace("weight: 90", "weight: 50")
        .replace("weight: 10", "weight: 50")
        + "---\n"
        + endpoint_policy("plain", a.url, b.url, "")
    )
    feedback = f"{gw.url}/v1/feedback"
    with httpx.Client(timeout=10) as client:
        served: dict[str, list[str]] = {"champion": [], "challenger": []}
        for _ in range(400):
            r = client.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "ab", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
            served[r.headers["x-switchyard-variant"]].append(r.headers["x-request-id"])
        n = min(len(served["champion"]), len(served["challenger"]), 150)
        assert n >= 100, {k: len(v) for k, v in served.items()}
        # Champion converts 30%, challenger 45% (every 20th id of 100 ... by position).
        for i, rid in enumerate(served["champion"][:n]):
            ok = client.post(feedback, json={"request_id": rid, "outcome": i % 10 < 3})
            assert ok.status_code == 200, ok.text
            assert ok.json()["variant"] == "champion"
        for i, rid in enumerate(served["challenger"][:n]):
            body = {"request_id": rid, "outcome": i % 20 < 9, "reward": float(i % 3)}
            assert client.post(feedback, json=body).status_code == 200
        first = served["champion"][0]
        dup = client.post(feedback, json={"request_id": first, "outcome": True})
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "feedback_already_recorded"
        unknown = client.post(feedback, json={"request_id": "no-such-id", "outcome": True})
        assert unknown.status_code == 404 and "unknown" in unknown.json()["error"]["message"]
        bad = client.post(feedback, json={"request_id": served["champion"][-1]})
        assert bad.status_code == 400 and "needs 'outcome'" in bad.json()["error"]["message"]
        broken = client.post(feedback, content=b"{", headers={"content-type": "application/json"})
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
        assert client.get(feedback).status_code == 405
        # A route without experiment or rollout does not remember its requests.
        r = client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "plain", "messages": [{"role": "user", "content": "x"}]},
        )
        untracked = client.post(
            feedback, json={"request_id": r.headers["x-request-id"], "outcome": True}
        )
        assert untracked.status_code == 404
        report = client.get(f"{gw.admin}/admin/experiments/ab").json()
        assert client.get(f"{gw.admin}/admin/experiments/plain").status_code == 404
    rows = {row["variant"]: row for row in report["variants"]}
    c1 = sum(1 for i in range(n) if i % 10 < 3)
    c2 = sum(1 for i in range(n) if i % 20 < 9)
    assert (rows["champion"]["outcomes"], rows["champion"]["conversions"]) == (n, c1)
    assert (rows["challenger"]["outcomes"], rows["challenger"]["conversions"]) == (n, c2)
    assert rows["challenger"]["rewards"] == n and rows["champion"]["rewards"] == 0
    test = report["comparisons"][0]["conversion"]
    p1, p2, pooled = c1 / n, c2 / n, (c1 + c2) / (2 * n)
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * 2 / n)
    assert test["z"] == pytest.approx(z, rel=1e-9)
    assert test["p_value"] == pytest.approx(normal_p(z), rel=1e-6)
    assert test["lift"] == pytest.approx((p2 - p1) / p1)
    assert report["confidence"] == 0.9 and test["ci"][0] < p2 - p1 < test["ci"][1]
    assert report["comparisons"][0]["reward"] is None  # the champion sent no rewards
    assert gw.metric("switchyard_experiment_outcomes_total", route="ab", variant="challenger") == n
    assert gw.metric("switchyard_feedback_requests_total", result="duplicate") == 1
    assert gw.metric("switchyard_feedback_requests_total", result="recorded") == 2 * n
    p_metric = gw.metric(
        "switchyard_experiment_p_value", route="ab", variant="challenger", metric="conversion"
    )
    assert p_metric == pytest.approx(normal_p(z), rel=1e-6)


def test_significance_gate_holds_the_last_step_until_feedback_decides(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = sims
    rollout = """rollout:
  steps: [50, 100]
  analysis:
    interval: 0.5s
    min_requests: 60
    max_error_rate: 0.05
    require_significance: {p_value: 0.05, min_samples: 40}
  on_success: hold
"""
    gw = gateway(
        endpoint_policy("sig", a.url, b.url, rollout),
        extra=("--rollout-dir", str(tmp_path / "rollouts")),
    )
    with Traffic(gw.url, "sig", threads=2, limit=3000) as traffic:
        # Let the rollout reach its last step while both variants serve (step 1: 50%).
        view = wait_rollout(gw, "sig", lambda s: s["step"] == 2)
        time.sleep(1.5)  # several intervals at the last step: held for significance
        held = rollout_state(gw, "sig")
        assert held["state"]["status"] == "progressing"
        assert "waiting for feedback" in held["analysis"]["reason"]
        records = list(traffic.records)
    with httpx.Client(timeout=10) as client:
        sent = Counter[str]()
        for variant, _, status, rid in records:
            if status != 200 or sent[variant] >= 60:
                continue
            # The challenger converts far more often: 50/60 against 20/60.
            outcome = sent[variant] % 6 != 0 if variant == "challenger" else sent[variant] % 3 == 0
            answer = client.post(
                f"{gw.url}/v1/feedback", json={"request_id": rid, "outcome": outcome}
            )
            assert answer.status_code == 200, answer.text
            sent[variant] += 1
    assert sent["champion"] >= 40 and sent["challenger"] >= 40, sent
    with Traffic(gw.url, "sig", threads=1, limit=500):
        view = wait_rollout(gw, "sig", lambda s: s["status"] == "completed", timeout=30)
    done = view["state"]["history"][-1]
    assert done["event"] == "completed"
    significance = done["details"]["significance"]
    assert significance["p_value"] < 0.05 and significance["difference"] > 0


def test_shadow_agreement_gate_reads_the_shadow_comparisons(
    gateway: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    # Same seed, same answers: the challenger, mirrored as a shadow, agrees with the champion.
    champion = start_simulator("sh-champion", "--seed", "1")
    challenger = start_simulator("sh-challenger", "--seed", "1")
    with running(champion.proc, challenger.proc):
        rollout = f"""shadow:
  - {{name: next, endpoints: ["{challenger.url}"], sample: 1.0}}
rollout:
  steps: [20, 100]
  analysis: {{interval: 0.5s, min_requests: 20, max_error_rate: 0.05, min_shadow_agreement: 0.9}}
  on_success: hold
"""
        gw = gateway(
            endpoint_policy("sh", champion.url, challenger.url, rollout),
            extra=("--rollout-dir", str(tmp_path / "rollouts")),
        )
        with Traffic(gw.url, "sh", limit=3000):
            view = wait_rollout(gw, "sh", lambda s: s["status"] != "progressing")
    assert events(view) == ["started", "step", "completed"]
    gates = {g["gate"]: g for g in view["state"]["history"][1]["details"]["gates"]}
    assert gates["shadow_agreement"]["outcome"] == "pass"
    assert gates["shadow_agreement"]["value"] >= 0.9
    assert "mirrored answers agreed" in gates["shadow_agreement"]["detail"]

"""Active health checks: compiled probe settings, and the checker's streaks and ejections.

Backends are `httpx.MockTransport` functions (the network edge); the checker, the
endpoint state and the picker are the real ones.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.controlplane.backends.health import HealthChecker
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.pick import pick
from gateway.dataplane.snapshot import HealthCheck, RuntimeSnapshot, SnapshotRef
from gateway.observability.metrics import GatewayMetrics

HEADER = "apiVersion: switchyard/v1\nkind: RoutingPolicy\n"


def compile_text(text: str, metrics: GatewayMetrics | None = None) -> RuntimeSnapshot:
    metrics = metrics or GatewayMetrics()
    policies, problems = parse_policies(text, "t.yaml")
    assert not problems, problems
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))


def test_protocol_defaults_and_overrides() -> None:
    snap = compile_text(
        HEADER
        + """route: fraud
protocol: kserve-v2
variants:
  - {name: a, endpoints: ["http://h:1"], model: "fraud v1", model_version: "2"}
  - {name: b, endpoints: ["http://h:2"], health_check: {interval: 250ms, unhealthy_after: 1}}
  - {name: c, endpoints: ["http://h:3"], health_check: {enabled: false}}
---
"""
        + HEADER
        + """route: svc
protocol: json
variants: [{name: a, endpoints: ["http://h:4"]}]
health_check: {path: /healthz, timeout: 1s}
---
"""
        + HEADER
        + """route: chat
variants:
  - {name: a, endpoints: ["http://h:5"]}
  - {name: b, endpoints: ["http://h:6"], health_check: {}}
"""
    )
    fraud = snap.routes["fraud"].variants
    assert fraud[0].health_check == HealthCheck(path="/v2/models/fraud%20v1/versions/2/ready")
    assert fraud[0].model_path == b"fraud%20v1/versions/2"
    assert fraud[1].health_check == HealthCheck(
        path="/v2/models/fraud/ready", interval=0.25, unhealthy_after=1
    )
    assert fraud[2].health_check is None
    assert snap.routes["svc"].variants[0].health_check == HealthCheck(path="/healthz", timeout=1.0)
    chat = snap.routes["chat"].variants
    assert chat[0].health_check is None  # LLM routes probe only when asked
    assert chat[1].health_check == HealthCheck(path="/health")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            'route: c\nvariants: [{name: a, endpoints: ["http://h:1"], model_version: "1"}]',
            "model_version applies to kserve-v2 routes only",
        ),
        (
            'route: c\nprotocol: json\nvariants: [{name: a, endpoints: ["http://h:1"], model: m}]',
            "`model` has no effect",
        ),
    ],
)
def test_fields_that_do_not_fit_the_protocol_are_rejected(doc: str, message: str) -> None:
    policies, problems = parse_policies(HEADER + doc, "t.yaml")
    assert not problems
    with pytest.raises(PolicyError) as info:
        compile_snapshot(
            policies, metrics=GatewayMetrics(), health=HealthRegistry(GatewayMetrics())
        )
    assert message in str(info.value)


def test_probe_path_must_be_a_path() -> None:
    _, problems = parse_policies(
        HEADER
        + 'route: c\nprotocol: json\nvariants: [{name: a, endpoints: ["http://h:1"]}]\n'
        + "health_check: {path: readyz}\n",
        "t.yaml",
    )
    assert problems and "health_check" in str(problems[0])


class Backends:
    """A MockTransport whose answer per host:port the test sets."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        where = f"{request.url.host}:{request.url.port}"
        self.seen.append(str(request.url))
        status = self.status.get(where, 200)
        if status == 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status)


POLICY = (
    HEADER
    + """route: fraud
protocol: kserve-v2
variants:
  - name: a
    endpoints: ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
health_check: {interval: 1s, unhealthy_after: 2, healthy_after: 2}
"""
)


async def test_failing_probes_eject_and_passing_probes_readmit() -> None:
    metrics = GatewayMetrics()
    snap = compile_text(POLICY, metrics)
    ref = SnapshotRef(snap)
    backends = Backends()
    clock = [100.0]
    checker = HealthChecker(
        ref,
        metrics,
        client=httpx.AsyncClient(transport=httpx.MockTransport(backends)),
        clock=lambda: clock[0],
    )
    variant = snap.routes["fraud"].variants[0]
    bad = variant.endpoints[1]
    checker.sync(clock[0])
    probes = {p.backend: p for p in checker.probes.values()}
    assert probes["10.0.0.1:8000"].url == "http://10.0.0.1:8000/v2/models/fraud/ready"

    async def round_() -> None:
        for probe in list(checker.probes.values()):
            await checker.probe_once(probe)

    backends.status["10.0.0.2:8000"] = 503
    await round_()
    assert bad.state.available(clock[0])  # one failure is not a streak
    backends.status["10.0.0.2:8000"] = 0  # connection refused counts too
    await round_()
    assert not bad.state.available(clock[0] + 10_000)  # out until probes pass, no end time
    assert bad.state.ejections == 1
    assert {pick(variant, clock[0], turn) for turn in range(4)} == {0}
    assert metrics.health_probes[("10.0.0.2:8000", "failed")] == 2
    assert metrics.health_probes[("10.0.0.1:8000", "ok")] == 2

    backends.status["10.0.0.2:8000"] = 200
    await round_()
    assert not bad.state.available(clock[0])  # healthy_after: 2
    await round_()
    assert bad.state.available(clock[0])
    assert {pick(variant, clock[0], turn) for turn in range(4)} == {0, 1}
    await checker._client.aclose()


async def test_a_reload_that_drops_the_probe_releases_the_endpoint() -> None:
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, _ = parse_policies(POLICY, "t.yaml")
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    ref = SnapshotRef(snap)
    backends = Backends()
    backends.status["10.0.0.1:8000"] = 500
    checker = HealthChecker(
        ref, metrics, client=httpx.AsyncClient(transport=httpx.MockTransport(backends))
    )
    checker.sync(0.0)
    for _ in range(2):
        for probe in list(checker.probes.values()):
            await checker.probe_once(probe)
    state = health.endpoint("10.0.0.1:8000")
    assert state.probes_down == 1 and not state.available(1e9)
    off, _ = parse_policies(POLICY.replace("healthy_after: 2}", "enabled: false}"), "t.yaml")
    ref.swap(compile_snapshot(off, metrics=metrics, health=health))
    checker.sync(1.0)
    assert not checker.probes
    assert state.probes_down == 0 and state.available(1.0)
    await checker._client.aclose()


async def test_step_schedules_probes_by_interval() -> None:
    metrics = GatewayMetrics()
    ref = SnapshotRef(compile_text(POLICY, metrics))
    backends = Backends()
    checker = HealthChecker(
        ref, metrics, client=httpx.AsyncClient(transport=httpx.MockTransport(backends))
    )

    async def settle() -> None:
        await asyncio.gather(*checker._tasks)
        await asyncio.sleep(0)  # done-callbacks run on the next turn of the loop

    wait = checker.step(50.0)  # both endpoints due at once
    assert len(checker._tasks) == 2 and wait == pytest.approx(1.0)
    await settle()
    assert len(backends.seen) == 2 and not checker._tasks
    checker.step(50.5)  # not due yet
    assert not checker._tasks
    checker.step(51.0)
    assert len(checker._tasks) == 2
    await settle()
    assert len(backends.seen) == 4
    await checker._client.aclose()

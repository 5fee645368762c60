"""The resolver's signatures and compatibility rules, against MLflow's wire format.

A small fake of the two MLflow endpoints involved (alias lookups and
`/model-versions/get-artifact`), so each rule is tested exactly: signatures read once
per version, unreadable ones served unchecked and retried, incompatible versions kept
off the route (last compatible kept, else refused with weight 0), allowed ones served.
"""

from __future__ import annotations

import logging
import random

import httpx
import orjson

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.explain import explain, render_text
from gateway.controlplane.policy.loader import LoadedPolicy, parse_policies
from gateway.controlplane.registry.binding import Refused, Resolved, needs_of
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.controlplane.registry.resolve import SIGNATURE_RETRY, RegistryResolver
from gateway.dataplane.decide import RequestHead
from gateway.dataplane.health import HealthRegistry
from gateway.observability.metrics import GatewayMetrics

LOG = logging.getLogger("test.registry.signatures")
FOUR = [{"type": "tensor", "name": "x", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
FIVE = [{"type": "tensor", "name": "x", "tensor-spec": {"dtype": "float32", "shape": [-1, 5]}}]


def policy(allow: str = "") -> list[LoadedPolicy]:
    text = f"""\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {{name: champion, weight: 90, target: "models:/fraud@champion"}}
  - {{name: challenger, weight: 10, target: "models:/fraud@challenger"}}
signature: {{validate_requests: true{allow}}}
"""
    found, problems = parse_policies(text, "p.yaml")
    assert not problems, problems
    return found


class FakeMlflow:
    """Aliases -> versions; versions -> (semver, signature inputs or None = no MLmodel)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.versions: dict[str, tuple[str, list[dict[str, object]] | None]] = {}
        self.artifact_calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if request.url.path.endswith("/model-versions/get-artifact"):
            self.artifact_calls += 1
            inputs = self.versions[params["version"]][1]
            if inputs is None:
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST"})
            text = "signature:\n  inputs: '" + orjson.dumps(inputs).decode() + "'\n"
            return httpx.Response(200, content=text.encode())
        v = self.aliases[params["alias"]]
        semver = self.versions[v][0]
        tags = [
            {"key": "switchyard.endpoint", "value": f"http://10.0.0.{v}:8000"},
            {"key": "switchyard.semver", "value": semver},
        ]
        return httpx.Response(
            200,
            json={
                "model_version": {"name": "fraud", "version": v, "status": "READY", "tags": tags}
            },
        )


def resolver(fake: FakeMlflow, clock: list[float]) -> tuple[RegistryResolver, GatewayMetrics]:
    metrics = GatewayMetrics()
    registry = MlflowRegistry(
        RegistryConfig("http://mlflow:5000"), transport=httpx.MockTransport(fake)
    )
    return RegistryResolver(registry, metrics, LOG, clock=lambda: clock[0]), metrics


async def test_incompatible_versions_are_kept_off_the_route() -> None:
    fake, clock = FakeMlflow(), [100.0]
    fake.versions = {"1": ("1.4.2", FOUR), "2": ("2.0.0", FIVE), "3": ("1.5.0", FOUR)}
    fake.aliases = {"champion": "1", "challenger": "2"}
    res, metrics = resolver(fake, clock)
    loaded = policy()
    needs = needs_of(loaded)
    await res.refresh(needs)
    bound = res.bind(needs)
    refused = bound[("fraud", "challenger")]
    assert isinstance(refused, Refused)
    assert refused.startswith(
        "version 2 of fraud is semver 2.0.0, the champion (version 1) is 1.4.2: MAJOR "
        "differs; inputs: 'x' float32 [-1, 4] -> float32 [-1, 5]"
    )
    assert metrics.registry_problems == {"fraud": 1}
    # The route serves on: the refused challenger has weight 0, the champion checks.
    health = HealthRegistry(metrics)
    snap = compile_snapshot(loaded, metrics=metrics, health=health, resolved=bound)
    route = snap.routes["fraud"]
    assert route.unavailable is None
    assert [v.weight for v in route.variants] == [90, 0.0]
    check = route.variants[0].signature
    assert check is not None and check.where == "fraud version 1"
    assert fake.artifact_calls == 2

    # The alias moves to a compatible version (served), then back (kept).
    fake.aliases["challenger"] = "3"
    await res.refresh(needs)
    served = res.bind(needs)[("fraud", "challenger")]
    assert isinstance(served, Resolved) and served.version == "3"
    fake.aliases["challenger"] = "2"
    await res.refresh(needs)
    kept = res.bind(needs)[("fraud", "challenger")]
    assert isinstance(kept, Resolved) and kept.version == "3"
    view = res.view()[("fraud", "challenger")]
    assert view["registry_version"] == "2" and view["version"] == "3"
    assert "keeping version 3" in view["problem"]
    assert fake.artifact_calls == 3  # once per version, never again

    # Allowed by the policy: served, shown, not a problem.
    allowed = needs_of(policy(", allow_incompatible: [challenger]"))
    await res.refresh(allowed)
    free = res.bind(allowed)[("fraud", "challenger")]
    assert isinstance(free, Resolved) and free.version == "2"
    assert metrics.registry_problems == {"fraud": 0}
    assert "MAJOR differs" in res.view()[("fraud", "challenger")]["incompatible_allowed"]


async def test_an_unreadable_signature_serves_unchecked_and_is_retried() -> None:
    fake, clock = FakeMlflow(), [100.0]
    fake.versions = {"1": ("1.0.0", None), "2": ("1.1.0", FOUR)}
    fake.aliases = {"champion": "1", "challenger": "2"}
    res, metrics = resolver(fake, clock)
    loaded = policy()
    needs = needs_of(loaded)
    await res.refresh(needs)
    bound = res.bind(needs)
    champion = bound[("fraud", "champion")]
    assert isinstance(champion, Resolved) and champion.signature is None
    assert "MLmodel could not be read" in (champion.signature_problem or "")
    assert metrics.registry_problems == {"fraud": 0}  # served: not a routing problem
    snap = compile_snapshot(loaded, metrics=metrics, health=HealthRegistry(metrics), resolved=bound)
    assert snap.routes["fraud"].variants[0].signature is None
    assert snap.routes["fraud"].variants[1].signature is not None

    await res.refresh(needs)
    assert fake.artifact_calls == 2  # not retried before SIGNATURE_RETRY
    fake.versions["1"] = ("1.0.0", FOUR)
    clock[0] += SIGNATURE_RETRY
    assert await res.refresh(needs)
    champion = res.bind(needs)[("fraud", "champion")]
    assert isinstance(champion, Resolved) and champion.signature is not None
    assert fake.artifact_calls == 3


async def test_explain_says_whether_a_body_fits_the_signature() -> None:
    fake, clock = FakeMlflow(), [100.0]
    fake.versions = {"1": ("1.0.0", FOUR), "2": ("1.1.0", FOUR)}
    fake.aliases = {"champion": "1", "challenger": "2"}
    res, metrics = resolver(fake, clock)
    loaded = policy()
    needs = needs_of(loaded)
    await res.refresh(needs)
    snap = compile_snapshot(
        loaded, metrics=metrics, health=HealthRegistry(metrics), resolved=res.bind(needs)
    )
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0.0] * 5}
    head = RequestHead("fraud", headers=(), body={"inputs": [tensor]})
    result = explain(snap, head, random.Random(1))
    signature = result["signature"]
    assert signature["inputs"] == "tensors 'x' float32 [-1, 4]"
    assert signature["request"].startswith("input 'x': expected shape [-1, 4], got [1, 5]")
    assert "request:   input 'x'" in render_text(result)


async def test_an_incompatible_shadow_sends_no_copies() -> None:
    fake, clock = FakeMlflow(), [100.0]
    fake.versions = {"1": ("1.0.0", FOUR), "2": ("2.0.0", FIVE)}
    fake.aliases = {"champion": "1", "candidate": "2"}
    res, metrics = resolver(fake, clock)
    text = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {name: champion, target: "models:/fraud@champion"}
shadow:
  - {target: "models:/fraud@candidate", sample: 1.0}
signature: {}
"""
    loaded, problems = parse_policies(text, "p.yaml")
    assert not problems, problems
    needs = needs_of(loaded)
    await res.refresh(needs)
    bound = res.bind(needs)
    refused = bound[("fraud", "shadow:candidate")]
    assert isinstance(refused, Refused) and "MAJOR differs" in refused
    assert "list 'candidate' in signature.allow_incompatible" in refused
    snap = compile_snapshot(loaded, metrics=metrics, health=HealthRegistry(metrics), resolved=bound)
    route = snap.routes["fraud"]
    assert route.unavailable is None
    assert route.shadows[0].unavailable == refused

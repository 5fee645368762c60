"""`/sim/*`: the test-facing control endpoints every simulator serves.

- `GET /sim/stats`   request counters (see `SimStats`)
- `POST /sim/reset`  zero the counters
- `GET /sim/faults`  the fault rules in force and the status `/health` answers
- `POST /sim/faults` `{"faults": ["status=503:0.5"], "health_status": 503}` replaces
  either or both, so a test can degrade a running backend and heal it again.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.simulate.exchange import Request, Response
from gateway.simulate.faults import FaultInjector, FaultSpecError, parse_fault
from gateway.simulate.stats import SimStats


def control_response(request: Request, stats: SimStats, faults: FaultInjector) -> Response:
    """Answer a `/sim/...` request."""
    route = (request.method, request.path)
    if route == ("GET", "/sim/stats"):
        return _json(200, stats.snapshot())
    if route == ("POST", "/sim/reset"):
        stats.reset()
        return _json(200, stats.snapshot())
    if route == ("GET", "/sim/faults"):
        return _json(200, _faults_view(faults))
    if route == ("POST", "/sim/faults"):
        try:
            _update_faults(faults, request.body)
        except (FaultSpecError, orjson.JSONDecodeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, _faults_view(faults))
    if request.path in ("/sim/stats", "/sim/reset", "/sim/faults"):
        return _json(405, {"error": f"method {request.method} not allowed"})
    return _json(404, {"error": f"no control endpoint {request.path}"})


def _update_faults(faults: FaultInjector, body: bytes) -> None:
    data: Any = orjson.loads(body or b"{}")
    if not isinstance(data, dict):
        raise FaultSpecError("expected a JSON object")
    unknown = set(data) - {"faults", "health_status"}
    if unknown:
        raise FaultSpecError(f"unknown keys: {sorted(unknown)}")
    specs = data.get("faults")
    health = data.get("health_status")
    # Validate everything before changing anything: a bad update leaves the old state.
    if specs is not None and (
        not isinstance(specs, list) or not all(isinstance(s, str) for s in specs)
    ):
        raise FaultSpecError("faults must be a list of rule strings")
    rules = [parse_fault(spec) for spec in specs] if specs is not None else None
    if health is not None and (
        not isinstance(health, int) or isinstance(health, bool) or not 100 <= health <= 599
    ):
        raise FaultSpecError("health_status must be an HTTP status code")
    if rules is not None:
        faults.set_rules(rules)
    if health is not None:
        faults.health_status = health


def _faults_view(faults: FaultInjector) -> dict[str, object]:
    return {
        "faults": [rule.spec() for rule in faults.rules],
        "health_status": faults.health_status,
    }


def _json(status: int, payload: object) -> Response:
    return Response(status, orjson.dumps(payload))

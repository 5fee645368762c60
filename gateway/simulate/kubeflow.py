"""A fake Kubeflow Pipelines API server: the run endpoints of REST API v2beta1.

Enough of KFP for the drift worker's retraining trigger, on the simulators' HTTP core:

- `POST /apis/v2beta1/runs`: validates a `v2beta1Run` (display_name, a pipeline
  version reference or spec, runtime_config.parameters) and records it;
- `GET /apis/v2beta1/runs`: lists them, with KFP's `filter` (JSON predicates: EQUALS,
  NOT_EQUALS, IS_SUBSTRING, IN on display_name, run_id, experiment_id),
  `experiment_id`, `page_size` and `page_token`; like KFP's gateway it omits empty
  fields, so no runs is `{}`;
- `GET /apis/v2beta1/runs/{run_id}` and `GET /apis/v2beta1/healthz`;
- errors as `google.rpc.Status` JSON (`code`, `message`, `details`).

For tests and the demo: `--token` demands a bearer token; `--fail-first N` answers the
first N run creations 503 without creating anything; `--lose-first N` creates the run
but answers 503 (a response lost on the way back: a client that retries blindly makes
a duplicate). `GET /kfp-sim/requests` lists every request received, `POST
/kfp-sim/reset` forgets runs and requests.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.simulate.exchange import Request, Response
from gateway.simulate.faults import FaultInjector
from gateway.simulate.server import SimServer, start_server
from gateway.simulate.stats import SimStats

RUNS = "/apis/v2beta1/runs"
DEFAULT_EXPERIMENT = "00000000-0000-0000-0000-default00000"
# google.rpc.Code values KFP answers with.
INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE = 3, 5, 16, 14


@dataclass(frozen=True, slots=True)
class KubeflowOptions:
    """How the fake behaves (the `simulate kubeflow` options)."""

    token: str | None = None
    fail_first: int = 0
    lose_first: int = 0


@dataclass
class KubeflowSimulator:
    """The handler: runs and requests in memory."""

    options: KubeflowOptions = field(default_factory=KubeflowOptions)
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    creates: int = 0  # POST /runs seen, for fail_first / lose_first

    def __call__(self, request: Request) -> Response:
        self.requests.append(_record(request))
        path, method = request.path.rstrip("/"), request.method
        if path == "/kfp-sim/requests" and method == "GET":
            return _json(200, {"requests": self.requests, "runs": self.runs})
        if path == "/kfp-sim/reset" and method == "POST":
            self.runs.clear()
            self.requests.clear()
            self.creates = 0
            return _json(200, {})
        if path == "/apis/v2beta1/healthz" and method == "GET":
            return _json(200, {"commit_sha": "switchyard-sim", "tag_name": "2.x-sim"})
        if self.options.token is not None:
            given = request.headers.get("authorization", "")
            if given != f"Bearer {self.options.token}":
                return _status(401, UNAUTHENTICATED, "Unauthenticated: bad or missing token")
        if path == RUNS and method == "POST":
            return self._create(request.body)
        if path == RUNS and method == "GET":
            return self._list(request.query)
        if path.startswith(RUNS + "/") and method == "GET":
            run_id = path[len(RUNS) + 1 :]
            for run in self.runs:
                if run["run_id"] == run_id:
                    return _json(200, run)
            return _status(404, NOT_FOUND, f"Run {run_id} not found")
        return _status(404, NOT_FOUND, f"Not Found: {method} {request.path}")

    def _create(self, raw: bytes) -> Response:
        self.creates += 1
        if self.creates <= self.options.fail_first:
            return _status(503, UNAVAILABLE, "the API server is unavailable (simulated)")
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return _status(400, INVALID_ARGUMENT, f"invalid JSON: {exc}")
        problem = _invalid(body)
        if problem is not None:
            return _status(400, INVALID_ARGUMENT, problem)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run = {
            **body,
            "run_id": str(uuid.uuid4()),
            "experiment_id": body.get("experiment_id") or DEFAULT_EXPERIMENT,
            "storage_state": "AVAILABLE",
            "state": "PENDING",
            "created_at": now,
            "scheduled_at": now,
        }
        self.runs.append(run)
        if self.creates <= self.options.fail_first + self.options.lose_first:
            return _status(503, UNAVAILABLE, "upstream connect error (simulated lost response)")
        return _json(200, run)

    def _list(self, query: bytes) -> Response:
        params = {k: v[-1] for k, v in parse_qs(query.decode()).items()}
        runs = self.runs
        experiment = params.get("experiment_id")
        if experiment:
            runs = [r for r in runs if r.get("experiment_id") == experiment]
        if "filter" in params:
            try:
                predicates = orjson.loads(params["filter"]).get("predicates", [])
                runs = [r for r in runs if all(_matches(r, p) for p in predicates)]
            except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
                return _status(400, INVALID_ARGUMENT, f"invalid filter: {exc}")
        start = int(params.get("page_token") or 0)
        size = int(params.get("page_size") or 20)
        page = runs[start : start + size]
        out: dict[str, Any] = {}
        if page:  # KFP's JSON omits empty fields
            out = {"runs": page, "total_size": len(runs)}
        if start + size < len(runs):
            out["next_page_token"] = str(start + size)
        return _json(200, out)


def _invalid(body: object) -> str | None:
    if not isinstance(body, dict):
        return "the run must be a JSON object"
    if not isinstance(body.get("display_name"), str) or not body["display_name"]:
        return "Invalid input error: run display_name is required"
    ref = body.get("pipeline_version_reference")
    if ref is None and body.get("pipeline_spec") is None:
        return "Invalid input error: a pipeline_version_reference or pipeline_spec is required"
    if ref is not None and (not isinstance(ref, dict) or not ref.get("pipeline_id")):
        return "Invalid input error: pipeline_version_reference.pipeline_id is required"
    config = body.get("runtime_config", {})
    if not isinstance(config, dict) or not isinstance(config.get("parameters", {}), dict):
        return "Invalid input error: runtime_config.parameters must be an object"
    return None


def _matches(run: dict[str, Any], predicate: dict[str, Any]) -> bool:
    key = str(predicate.get("key", ""))
    value = str(run.get(key, ""))
    op = predicate.get("operation", "EQUALS")
    if op == "EQUALS":
        return value == str(predicate.get("string_value", ""))
    if op == "NOT_EQUALS":
        return value != str(predicate.get("string_value", ""))
    if op == "IS_SUBSTRING":
        return str(predicate.get("string_value", "")) in value
    if op == "IN":
        return value in (predicate.get("string_values") or {}).get("values", [])
    raise ValueError(f"operation {op!r} is not simulated")


def _record(request: Request) -> dict[str, Any]:
    try:
        body: Any = orjson.loads(request.body) if request.body else None
    except orjson.JSONDecodeError:
        body = request.body.decode("utf-8", "replace")
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query.decode("latin-1"),
        "authorization": request.headers.get("authorization"),
        "body": body,
    }


def _json(status: int, payload: object) -> Response:
    return Response(status, orjson.dumps(payload))


def _status(status: int, code: int, message: str) -> Response:
    # KFP's gateway writes google.rpc.Status, plus the older error/error_message keys.
    return _json(status, {"error": message, "code": code, "message": message, "details": []})


async def start_kubeflow(
    options: KubeflowOptions, host: str = "127.0.0.1", port: int = 0, name: str | None = None
) -> tuple[SimServer, KubeflowSimulator]:
    """Start a fake Kubeflow Pipelines API (`server.url` is its endpoint); the
    simulator holds the runs and requests it received."""
    handler = KubeflowSimulator(options)
    server = await start_server(
        handler, stats=SimStats(), faults=FaultInjector(), host=host, port=port, name=name
    )
    return server, handler


async def serve_kubeflow(
    options: KubeflowOptions, host: str = "127.0.0.1", port: int = 0, name: str | None = None
) -> SimServer:
    """`start_kubeflow`, for the command line."""
    server, _ = await start_kubeflow(options, host, port, name)
    return server


def add_kubeflow(backends: Any) -> None:
    """Register `simulate kubeflow`."""
    parser = backends.add_parser(
        "kubeflow",
        help="Kubeflow Pipelines REST API (v2beta1 runs) that records the runs created",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--name", help="instance name sent as x-sim-name")
    parser.add_argument("--token", help="demand this bearer token")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    parser.add_argument("--lose-first", type=int, default=0, metavar="N")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway.simulate.options import run_until_signalled

    options = KubeflowOptions(args.token, args.fail_first, args.lose_first)
    host, port, name = args.host, args.port, args.name
    return run_until_signalled("kubeflow", lambda: serve_kubeflow(options, host, port, name))

"""Property tests of the fronts against a real gateway process: arbitrary bodies,
headers, paths and methods never get a 5xx the gateway caused, never hang, and every
refusal carries a message in the client's protocol.

The backends are simulators that answer 200 to anything well-formed, so a 5xx can only
come from the gateway (or a simulator bug, which would be worth knowing too). Routes
cover every protocol path: OpenAI and Ollama relayed, and both translations. The
gateway's log must hold no traceback afterwards: a bug caught by the last-resort
handler is still a bug.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.procs import GatewayProc, start_gateway, start_simulator

ROUTES = {"r": "openai", "o": "ollama", "r-via-ollama": "openai", "o-via-openai": "ollama"}
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/r",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/version",
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _route(name: str, protocol: str, endpoint: str, backend: str = "", outlier: int = 1000) -> str:
    # Outlier ejection is set out of reach: fuzzed requests that the backend answers 500
    # would otherwise eject its only endpoint (see test_client_errors_cannot_eject...).
    extra = f", backend_protocol: {backend}" if backend else ""
    return (
        f"apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: {name}\nprotocol: {protocol}\n"
        f'variants: [{{name: main, endpoints: ["{endpoint}"]{extra}}}]\n'
        f"outlier: {{consecutive_failures: {outlier}}}\n"
    )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    openai_sim = start_simulator("fuzz-openai", "--tokens", "3")
    ollama_sim = start_simulator("fuzz-ollama", "--tokens", "3", kind="ollama")
    folder = tmp_path_factory.mktemp("fuzz-policies")
    (folder / "r.yaml").write_text(_route("r", "openai", openai_sim.url))
    (folder / "o.yaml").write_text(_route("o", "ollama", ollama_sim.url))
    (folder / "rx.yaml").write_text(_route("r-via-ollama", "openai", ollama_sim.url, "ollama"))
    (folder / "ox.yaml").write_text(_route("o-via-openai", "ollama", openai_sim.url, "openai"))
    g = start_gateway(folder)
    try:
        yield g
    finally:
        g.proc.stop()
        openai_sim.proc.stop()
        ollama_sim.proc.stop()
    log = g.proc.output()
    assert "Traceback" not in log and "failed inside the gateway" not in log, log[-4000:]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as c:
        yield c


def check(reply: httpx.Response, what: object) -> None:
    """The properties every answer has, whatever was asked."""
    from_backend = "x-sim-name" in reply.headers
    origin = "backend" if from_backend else "gateway"
    event(f"{reply.status_code} from the {origin}")  # --hypothesis-show-statistics
    # A backend's own 5xx passes through untouched (Ollama answers some bad options 500).
    assert from_backend or reply.status_code < 500, (reply.status_code, reply.text[:500], what)
    if reply.status_code >= 400 and not from_backend and reply.request.method != "HEAD":
        body = orjson.loads(reply.content)  # the gateway's refusals are JSON, always
        error = body["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert isinstance(message, str) and message.strip(), (body, what)
    if reply.status_code == 200 and from_backend:
        # A relayed stream must not have been cut by the gateway in between.
        assert b'{"error"' not in reply.content, (reply.content[-500:], what)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_messages = st.one_of(
    _json,
    st.lists(
        st.fixed_dictionaries(
            {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), _json)},
            optional={"content": _json, "images": _json, "tool_calls": _json, "name": _json},
        ),
        max_size=3,
    ),
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(list(ROUTES)), _json),
        "messages": _messages,
        "prompt": _json,
        "input": _json,
        "stream": st.one_of(st.booleans(), _json),
        "stream_options": _json,
        "options": _json,
        "max_tokens": _json,
        "temperature": _json,
        "n": _json,
        "format": _json,
        "keep_alive": _json,
    },
)

# Mostly well-formed requests with odd fields: these get past the gateway's checks and
# exercise relaying and translation, where a surprising type would hurt most.
_plausible = st.fixed_dictionaries(
    {
        "model": st.sampled_from(list(ROUTES)),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]),
                    "content": st.one_of(st.text(max_size=20), _json),
                }
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "stream": st.one_of(st.booleans(), _json),
        "prompt": st.one_of(st.text(max_size=20), _json),
        "input": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=5)), _json),
        "stream_options": _json,
        "options": st.one_of(st.dictionaries(st.text(max_size=12), _json, max_size=3), _json),
        "max_tokens": _json,
        "temperature": _json,
        "format": _json,
    },
)


@FUZZ
@given(path=st.sampled_from(PATHS), body=st.one_of(_bodies, _plausible, _plausible))
def test_json_bodies(
    gw: GatewayProc, client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    reply = client.post(gw.url + path, content=json.dumps(body).encode())
    check(reply, (path, body))


@FUZZ
@given(path=st.sampled_from(PATHS), raw=st.binary(max_size=300))
def test_raw_bodies(gw: GatewayProc, client: httpx.Client, path: str, raw: bytes) -> None:
    reply = client.post(gw.url + path, content=raw, headers={"content-type": "application/json"})
    check(reply, (path, raw))


_header_name = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24
).filter(lambda n: not n.startswith("x-sim-") and n not in _MANAGED)
_MANAGED = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect"}
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60
).map(str.strip)


@FUZZ
@given(
    headers=st.dictionaries(_header_name, _header_value, max_size=8),
    model=st.sampled_from(list(ROUTES)),
    stream=st.booleans(),
)
def test_headers(
    gw: GatewayProc, client: httpx.Client, headers: dict[str, str], model: str, stream: bool
) -> None:
    path = "/v1/chat/completions" if ROUTES[model] == "openai" else "/api/chat"
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream}
    reply = client.post(gw.url + path, content=orjson.dumps(body), headers=headers)
    check(reply, (headers, model))
    assert reply.status_code == 200, (reply.text[:300], headers)


_segment = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/%"),
    min_size=1,
    max_size=12,
)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    prefix=st.sampled_from(["/v1/", "/api/", "/", "/v2/", "/services/", "/admin/", "/metrics"]),
    segments=st.lists(_segment, max_size=4),
    query=st.one_of(st.just(""), _segment.map(lambda q: "?" + q)),
)
def test_paths_and_methods(
    gw: GatewayProc,
    client: httpx.Client,
    method: str,
    prefix: str,
    segments: list[str],
    query: str,
) -> None:
    url = gw.url + prefix + "/".join(segments) + query
    reply = client.request(method, url, content=b'{"model":"r"}')
    check(reply, (method, url))
    assert 200 <= reply.status_code < 500


def test_client_errors_cannot_take_a_sole_endpoint_route_down(
    tmp_path: Path, client: httpx.Client
) -> None:
    sim = start_simulator("eject-ollama", "--tokens", "3", kind="ollama")
    (tmp_path / "o.yaml").write_text(_route("o", "ollama", sim.url, outlier=5))
    g = start_gateway(tmp_path)
    try:
        bad = {"model": "o", "messages": [{"role": "user", "content": "x"}], "stream": False}
        bad["options"] = {"num_predict": "many"}  # Ollama answers this 500
        for _ in range(5):
            assert client.post(f"{g.url}/api/chat", json=bad).status_code == 500
        # The sole endpoint is ejected now, but panic routing still sends to it.
        assert g.metric("switchyard_backend_ejected") == 1
        good = {**bad, "options": {}}
        assert client.post(f"{g.url}/api/chat", json=good).status_code == 200
        assert g.metric("switchyard_panic_routed_total", route="o") == 1
    finally:
        g.proc.stop()
        sim.proc.stop()

"""The JSON services front (`/services/{route}/{api}`) on the real data plane."""

from __future__ import annotations

import orjson
import pytest

from tests.frontrig import FrontRig, json_reply, split_request

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: scorer
protocol: json
variants:
  - {name: champion, weight: 50, endpoints: ["http://127.0.0.1:9001"]}
  - {name: challenger, weight: 50, endpoints: ["http://127.0.0.1:9002/bento"]}
sticky: {hash_on: "body:customer"}
overrides:
  - {match: {header: {x-cohort: beta}}, variant: challenger}
max_body_bytes: 1024
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: team/scorer
protocol: json
variants:
  - {name: main, endpoints: ["http://127.0.0.1:9003"]}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: main, endpoints: ["http://127.0.0.1:9004"]}
"""
CHAMPION, CHALLENGER = "127.0.0.1:9001", "127.0.0.1:9002"


async def test_api_path_and_body_go_to_the_backend_as_they_came() -> None:
    rig = FrontRig(POLICY)
    body = b'{"customer": "c-1", "amount": 12.5}'
    rig.send(b"POST", b"/services/scorer/predict?explain=1", body, {"x-cohort": "beta"})
    line, headers, sent = split_request(rig.sent(CHALLENGER))
    # The endpoint's base path (http://127.0.0.1:9002/bento) comes first.
    assert line == b"POST /bento/predict?explain=1 HTTP/1.1"
    assert sent == body and headers[b"x-cohort"] == b"beta"
    rig.reply(CHALLENGER, json_reply(b'{"score": 0.1}', extra=b"x-bento: 1\r\n"))
    response = rig.response()
    assert response.status == 200 and response.body == b'{"score": 0.1}'
    assert response.headers["x-bento"] == "1"
    assert response.headers["x-switchyard-variant"] == "challenger"


async def test_nested_api_paths_and_route_names_with_slashes() -> None:
    rig = FrontRig(POLICY)
    rig.send(b"POST", b"/services/team/scorer/v1/classify", b"{}")
    line, _, _ = split_request(rig.sent("127.0.0.1:9003"))
    assert line == b"POST /v1/classify HTTP/1.1"
    rig.reply("127.0.0.1:9003", json_reply(b"[]"))
    assert rig.response().body == b"[]"
    rig.send(b"POST", b"/services/team%2Fscorer/classify", b"{}")
    line, _, _ = split_request(rig.sent("127.0.0.1:9003"))
    assert line == b"POST /classify HTTP/1.1"


async def test_sticky_on_a_body_field_and_non_json_bodies_pass_unread() -> None:
    rig = FrontRig(POLICY)
    seen: dict[str, set[str]] = {}
    for i in range(20):
        customer = f"c-{i % 5}"
        rig.send(b"POST", b"/services/scorer/predict", orjson.dumps({"customer": customer}))
        for backend in (CHAMPION, CHALLENGER):
            if rig.sent(backend):
                seen.setdefault(customer, set()).add(backend)
                rig.reply(backend, json_reply(b"{}"))
    assert all(len(b) == 1 for b in seen.values()) and len(seen) == 5
    upload = b"--b\r\ncontent-disposition: form-data; name=f\r\n\r\nxyz\r\n--b--\r\n"
    rig.send(
        b"POST",
        b"/services/scorer/upload",
        upload,
        {"content-type": "multipart/form-data; boundary=b"},
    )
    sent = rig.sent(CHAMPION) + rig.sent(CHALLENGER)
    assert sent.endswith(upload)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (b"POST", b"/services/nope/predict", b"{}", 404, "service 'nope' is not served"),
        (b"POST", b"/services/scorer", b"{}", 404, "names no API"),
        (b"POST", b"/services/scorer/", b"{}", 404, "names no API"),
        (b"GET", b"/services/scorer/predict", b"", 405, "POST only"),
        (b"POST", b"/services/chat/predict", b"{}", 400, "speaks openai, not json"),
        (b"POST", b"/services/scorer/predict", b'{"a": ', 400, "not valid JSON"),
        (b"POST", b"/services/scorer/predict", b"[" + b"1," * 600 + b"1]", 413, "limit"),
    ],
)
async def test_errors_are_json_and_reach_no_backend(
    method: bytes, path: bytes, body: bytes, status: int, message: str
) -> None:
    rig = FrontRig(POLICY)
    rig.send(method, path, body)
    response = rig.response()
    assert response.status == status
    error = orjson.loads(response.body)
    assert set(error) == {"error"} and message in error["error"], error
    assert not rig.sent_anywhere()

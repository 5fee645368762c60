"""Client API keys: the keys file, the token bucket per key, what reaches upstream."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gateway.dataplane.auth import (
    ApiKeys,
    KeysFileError,
    MissingKey,
    RateLimited,
    UnknownKey,
    parse_keys,
)
from gateway.dataplane.http.wire import Request

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-batch-fedcba9876543210"


def request(headers: list[tuple[bytes, bytes]]) -> Request:
    forward = b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers)
    return Request(
        method=b"POST",
        path=b"/v1/chat/completions",
        query=b"",
        headers=headers,
        body=b"{}",
        keep_alive=True,
        http_11=True,
        received_at=0.0,
        fields=dict(headers),
        forward=forward,
    )


def bearer(key: str) -> Request:
    return request([(b"authorization", f"Bearer {key}".encode()), (b"x-user-id", b"u1")])


def keys_file(tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeys:
    sha = hashlib.sha256(KEY_B.encode()).hexdigest()
    path = keys_file(
        tmp_path,
        [
            {"name": "team-a", "key": KEY_A, "rate": 2, "burst": 3},
            {"name": "batch", "sha256": sha},
        ],
    )
    return ApiKeys(str(path), {})


def test_known_key_is_admitted_and_never_forwarded(keys: ApiKeys) -> None:
    req = bearer(KEY_A)
    keys.check(req, now=100.0)
    assert b"authorization" not in req.forward and KEY_A.encode() not in req.forward
    assert req.forward == b"x-user-id: u1\r\n"  # everything else still goes upstream
    hashed = request([(b"x-api-key", KEY_B.encode())])
    keys.check(hashed, now=100.0)  # a key stored only as its SHA-256
    assert hashed.forward == b""
    assert keys.counts == {("team-a", "accepted"): 1, ("batch", "accepted"): 1}


def test_missing_and_unknown_keys_are_401_with_a_message(keys: ApiKeys) -> None:
    with pytest.raises(MissingKey) as missing:
        keys.check(request([]), now=1.0)
    assert missing.value.status == 401 and "Authorization: Bearer" in missing.value.message
    assert b"www-authenticate: Bearer" in missing.value.extra
    with pytest.raises(MissingKey):
        keys.check(request([(b"authorization", b"Basic dXNlcjpwYXNz")]), now=1.0)
    with pytest.raises(UnknownKey) as unknown:
        keys.check(bearer("sk-not-a-key-at-all-000"), now=1.0)
    assert unknown.value.status == 401 and "sk-not" not in unknown.value.message
    assert keys.counts == {("", "missing"): 2, ("", "unknown"): 1}


def test_token_bucket_allows_burst_then_rate_with_retry_after(keys: ApiKeys) -> None:
    for _ in range(3):  # burst 3
        keys.check(bearer(KEY_A), now=10.0)
    with pytest.raises(RateLimited) as limited:
        keys.check(bearer(KEY_A), now=10.0)
    assert limited.value.status == 429 and limited.value.extra == b"retry-after: 1\r\n"
    assert "'team-a'" in limited.value.message and "2 requests/s" in limited.value.message
    keys.check(bearer(KEY_A), now=10.5)  # rate 2/s: one token back after 0.5 s
    with pytest.raises(RateLimited):
        keys.check(bearer(KEY_A), now=10.6)
    for _ in range(3):  # a long pause refills to the burst, not beyond
        keys.check(bearer(KEY_A), now=100.0)
    with pytest.raises(RateLimited):
        keys.check(bearer(KEY_A), now=100.0)
    for _ in range(50):  # no rate: unlimited
        keys.check(request([(b"x-api-key", KEY_B.encode())]), now=100.0)
    assert keys.counts[("team-a", "rate_limited")] == 3


def test_retry_after_rounds_up_slow_rates(tmp_path: Path) -> None:
    path = keys_file(tmp_path, [{"name": "slow", "key": KEY_A, "rate": 0.1}])
    keys = ApiKeys(str(path), {})
    keys.check(bearer(KEY_A), now=0.0)
    with pytest.raises(RateLimited) as limited:
        keys.check(bearer(KEY_A), now=1.0)
    assert limited.value.extra == b"retry-after: 9\r\n"


def test_the_file_is_followed_and_a_bad_edit_keeps_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = keys_file(tmp_path, [{"name": "a", "key": KEY_A}])
    keys = ApiKeys(str(path), {})
    keys.check(bearer(KEY_A), now=0.0)
    path.write_text(json.dumps({"keys": [{"name": "b", "key": KEY_B}]}))
    os.utime(path, ns=(1, 10**18))  # a new mtime even within the clock's resolution
    keys.check(bearer(KEY_B), now=5.0)  # re-read at most every 2 s, on a request
    with pytest.raises(UnknownKey):
        keys.check(bearer(KEY_A), now=5.0)
    path.write_text("{not json")
    os.utime(path, ns=(1, 2 * 10**18))
    keys.check(bearer(KEY_B), now=10.0)  # still in force
    assert "keeping the 1 keys in force" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a"}], "exactly one of 'key' and 'sha256'"),
        ([{"name": "a", "key": "short"}], "16+ characters"),
        ([{"name": "a", "key": KEY_A, "rate": -1}], "'rate' must be positive"),
        ([{"name": "a", "key": KEY_A, "rate": "fast"}], "'rate' must be a number"),
        ([{"name": "a", "key": KEY_A, "burst": 0.5}], "'burst' must be at least 1"),
        ([{"name": "a", "key": KEY_A, "colour": "red"}], "unknown fields ['colour']"),
        ([{"name": "a", "sha256": "abc"}], "64 hex digits"),
        ([{"name": "a", "key": KEY_A}, {"name": "a", "key": KEY_B}], "used twice"),
        ([{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_A}], "the same key as 'a'"),
        ([{"key": KEY_A}], "'name' must be a string"),
        (["sk"], "keys[0]: expected an object"),
    ],
)
def test_bad_files_are_refused_naming_the_entry(entries: list[object], message: str) -> None:
    with pytest.raises(KeysFileError) as err:
        parse_keys(json.dumps({"keys": entries}).encode(), "keys.json")
    assert message in str(err.value)
    assert KEY_A not in str(err.value)  # a refused key is not echoed either


def test_unreadable_or_shapeless_files(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="cannot read"):
        ApiKeys(str(tmp_path / "missing.json"), {})
    with pytest.raises(KeysFileError, match=r"expected \{\"keys\""):
        parse_keys(b"[]", "keys.json")
    with pytest.raises(KeysFileError, match="not valid JSON"):
        parse_keys(b"keys:\n  - a", "keys.json")

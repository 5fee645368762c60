"""What quotas cost a request: the key check, the pre-charge and the reconcile.

The real objects of the request path (ApiKeys over a keys file, the checked Request,
Quotas.admit as the proxy calls it, Charge.settle as the exchange calls it at the end)
run in a loop, in rounds that alternate a key without limits (the check alone, what
every keyed request paid before quotas) and a key with an rpm, a tpm and a daily
budget limit on the route (priced), whose requests are all admitted and reconciled.
The difference per request is what the limits cost. With a quota store the request
path does the same work (the lease task runs apart, every 0.2 s), so the figure holds
for both.

Run: .venv/bin/python loadtests/micro_quota.py [--requests N] [--rounds R]
(SWITCHYARD_COMPILED=0 for the Python modules; by default the compiled ones when built.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import COMPILED
from gateway.dataplane.auth import ApiKeys
from gateway.dataplane.http.wire import Request

OPEN_KEY = "sk-open-0123456789abcdef"
LIMITED_KEY = "sk-limited-0123456789abcd"
BODY = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ],
    "max_tokens": 64,
}


def keys_file(folder: Path) -> Path:
    path = folder / "keys.json"
    limits = [{"route": "chat", "rpm": 10**9, "tpm": 10**12, "budget": {"day": 10**8}}]
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": "open", "key": OPEN_KEY},
                    {"name": "limited", "key": LIMITED_KEY, "tenant": "t", "limits": limits},
                ],
                "prices": [{"route": "chat", "prompt": 0.5, "completion": 1.5}],
            }
        )
    )
    return path


def request(key: str, body: bytes) -> Request:
    headers = [(b"authorization", b"Bearer " + key.encode()), (b"content-type", b"x")]
    return Request(
        b"POST",
        b"/v1/chat/completions",
        b"",
        headers,
        body,
        True,
        True,
        0.0,
        fields=dict(headers),
        forward=b"authorization: Bearer x\r\ncontent-type: x\r\n",
    )


def round_of(keys: ApiKeys, key: str, n: int, limited: bool) -> float:
    body = orjson.dumps(BODY)
    parsed = orjson.loads(body)
    started = time.perf_counter()
    for _ in range(n):
        req = request(key, body)
        state = keys.check(req, 1.0)
        if limited and state.metered and state.quotas is not None:
            charge = state.quotas.admit(
                state, "chat", "3", req.path, parsed, len(req.body)
            )  # the proxy
            if charge is not None:
                charge.settle("3", 31, 64, True)  # the exchange, at the end
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        keys = ApiKeys(str(keys_file(Path(folder))), {})
        round_of(keys, LIMITED_KEY, 2000, True)  # warm up
        plain, limited = [], []
        for _ in range(args.rounds):
            plain.append(round_of(keys, OPEN_KEY, args.requests, False))
            limited.append(round_of(keys, LIMITED_KEY, args.requests, True))
    base, with_limits = statistics.median(plain), statistics.median(limited)
    print(
        json.dumps(
            {
                "request_path": "compiled" if COMPILED.active else "python",
                "requests_per_round": args.requests,
                "rounds": args.rounds,
                "key_check_us": round(base, 3),
                "key_check_with_limits_us": round(with_limits, 3),
                "limits_cost_us": round(with_limits - base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Cost of signature validation per request: a repeatable microbenchmark.

What a front does with a request body once it is parsed (KServe v2: the structural
check; json: nothing), then the same plus the signature check of the version the
request was routed to (`gateway.dataplane.signature.SignatureCheck`), on typical
bodies: a KServe v2 request of one FP32 [1, 4] tensor, the BentoML fraud service's
`{"features": [[f1, f2, f3, f4]]}`, and a 10-column record. Rounds alternate without
and with the check, in one process; the difference is the check's cost.

Run: .venv/bin/python loadtests/micro_signature.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.dataplane.kserve import check_infer_request
from gateway.dataplane.signature import SignatureCheck, parse_signature

TENSOR = parse_signature(
    [{"name": "features", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
)
COLUMNS = parse_signature(
    [{"name": f"c{i}", "type": "double" if i % 2 else "string"} for i in range(10)]
)
KSERVE_BODY = orjson.dumps(
    {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1] * 4}]}
)
FEATURES_BODY = orjson.dumps({"features": [[0.1, 0.2, 0.3, 0.4]]})
RECORD_BODY = orjson.dumps({f"c{i}": (1.5 if i % 2 else "x") for i in range(10)})


def cases() -> dict[str, tuple[bytes, Callable[[dict[str, Any]], None], Callable[..., None]]]:
    """name -> (body, what the front does anyway, the signature check)."""
    kserve = SignatureCheck(TENSOR, "kserve-v2")
    features = SignatureCheck(TENSOR, "json")
    record = SignatureCheck(COLUMNS, "json")
    return {
        "kserve-v2 FP32 [1,4]": (KSERVE_BODY, check_infer_request, kserve.check_v2),
        "json features [[4]]": (FEATURES_BODY, lambda _b: None, features.check_json),
        "json record, 10 columns": (RECORD_BODY, lambda _b: None, record.check_json),
    }


def per_request_us(body: bytes, work: Callable[[dict[str, Any]], None], n: int) -> float:
    loads = orjson.loads
    start = time.perf_counter()
    for _ in range(n):
        work(loads(body))
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'body':<26}{'without us':>12}{'with us':>10}{'check us':>10}")
    for name, (body, base, check) in cases().items():

        def both(parsed: dict[str, Any], base: Any = base, check: Any = check) -> None:
            base(parsed)
            check(parsed)

        without, with_ = [], []
        for _ in range(args.rounds):
            without.append(per_request_us(body, base, args.requests))
            with_.append(per_request_us(body, both, args.requests))
        a, b = statistics.median(without), statistics.median(with_)
        print(f"{name:<26}{a:>12.3f}{b:>10.3f}{b - a:>10.3f}")


if __name__ == "__main__":
    main()

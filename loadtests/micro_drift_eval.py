"""The drift worker's evaluation time per window: Evidently's report (and its HTML).

Windows of the demo's text descriptors (9 columns) against a 2000-row reference, as
the worker evaluates them every interval, at a few window sizes.
Run: .venv/bin/python loadtests/micro_drift_eval.py [--sizes 500 1000 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS
from gateway.drift.features import describe_text
from gateway.simulate.prompts import baseline_request, shifted_request


def rows(count: int, seed: int, shifted: bool = False) -> pd.DataFrame:
    rng = random.Random(seed)
    make = shifted_request if shifted else baseline_request
    return pd.DataFrame([describe_text(make(rng, "support")) for _ in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    from gateway.drift.detect import DetectConfig, evaluate

    print(f"import of Evidently (drift worker start): {time.perf_counter() - started:.1f}s")
    reference = rows(2000, 1)
    config = DetectConfig(columns=TEXT_DESCRIPTORS)
    evaluate(rows(200, 2), reference, config)  # first report warms Evidently's caches
    with tempfile.TemporaryDirectory() as folder:
        html = Path(folder) / "report.html"
        for size in args.sizes:
            for shifted in (False, True):
                window = rows(size, 3, shifted)
                plain, full = [], []
                for _ in range(args.repeat):
                    plain.append(evaluate(window, reference, config).duration_s)
                    full.append(evaluate(window, reference, config, html).duration_s)
                print(
                    f"window {size:>5} rows x {len(TEXT_DESCRIPTORS)} columns "
                    f"({'shifted' if shifted else 'baseline'}): report {min(plain):.2f}s, "
                    f"with HTML {min(full):.2f}s (best of {args.repeat})"
                )


if __name__ == "__main__":
    main()

"""Instructions per proxied request, counted by callgrind: the noise-free request-path cost.

Wall-clock and CPU-time figures move with the machine's load; an instruction count does
not. This runs `loadtests/micro_requestpath.py` (the real data plane on in-memory
transports: a 90/10 sticky canary with an override and fallback) under
`valgrind --tool=callgrind` at two request counts, for the compiled request path and the
Python one, and takes the difference per request, so start-up and imports cancel. The
kernel, the event loop's polling and the sockets are not in it (see `loadtests/bench`
for those): it is the gateway's own work per request, the figure each request-path
change is judged by before and after.

Run: .venv/bin/python loadtests/instructions.py  (needs valgrind: apt-get install valgrind;
about 3 minutes). Writes loadtests/results/instructions-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib.machine import machine_info  # noqa: E402

_COLLECTED = re.compile(r"Collected : (\d+)")
MODES = {"compiled": "require", "python": "0"}


def count(valgrind: str, mode: str, requests: int, workdir: Path) -> int:
    """Instructions callgrind counts for one micro_requestpath run of `requests`."""
    out = workdir / f"callgrind-{mode}-{requests}.out"
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE / "micro_requestpath.py"),
            "--requests",
            str(requests),
            "--rounds",
            "1",
        ],
        cwd=REPO,
        env={**os.environ, "SWITCHYARD_COMPILED": MODES[mode]},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(
            f"instructions: callgrind run failed (exit {done.returncode}, {mode}, "
            f"{requests} requests):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--low", type=int, default=1000, help="requests of the first run")
    parser.add_argument("--high", type=int, default=3000, help="requests of the second run")
    parser.add_argument(
        "--output", type=Path, default=REPO / "loadtests/results/instructions-latest.json"
    )
    args = parser.parse_args()
    if args.high <= args.low:
        parser.error("--high must be larger than --low")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("instructions: valgrind is not installed (apt-get install valgrind)")
        return 2
    # A stale or missing build would silently measure the Python path twice.
    probe = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.COMPILED.active)"],
        cwd=REPO,
        env={**os.environ, "SWITCHYARD_COMPILED": "require"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.stdout.strip() != "True":
        print("instructions: the compiled request path is not in use; run `make compile`")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="switchyard-callgrind-") as tmp:
        for mode in MODES:
            low = count(valgrind, mode, args.low, Path(tmp))
            high = count(valgrind, mode, args.high, Path(tmp))
            per_request = (high - low) / (args.high - args.low)
            rows.append({"path": mode, "instructions_per_request": round(per_request)})
            print(f"{mode:9} {per_request:10,.0f} instructions per request")
    result = {
        "kind": "instructions",
        "machine": machine_info(REPO, sys.executable, {"valgrind": valgrind}),
        "config": {"low": args.low, "high": args.high, "harness": "micro_requestpath.py"},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

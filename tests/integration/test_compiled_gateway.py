"""A gateway process reports which request path it runs: in its log and in /metrics."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.procs import Simulator, start_gateway


def test_the_gateway_says_which_request_path_it_runs(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    (tmp_path / "r.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
"""
    )
    mode = os.environ.get("SWITCHYARD_COMPILED", "auto")
    gw = start_gateway(tmp_path)
    try:
        reply = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert reply.status_code == 200
        metrics = httpx.get(f"{gw.admin}/metrics", timeout=10).text
    finally:
        gw.proc.stop()
    info = next(line for line in metrics.splitlines() if line.startswith("switchyard_build_info"))
    if mode == "require":
        assert 'dataplane="compiled"' in info
        assert "request path: compiled (mypyc, " in gw.proc.output()
    elif mode == "0":
        assert 'dataplane="python"' in info
        assert "request path: Python (SWITCHYARD_COMPILED=0)" in gw.proc.output()
    else:
        assert 'dataplane="compiled"' in info or 'dataplane="python"' in info

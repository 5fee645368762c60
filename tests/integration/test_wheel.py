"""The package installs the usual way: a wheel into a clean venv serves with `switchyard serve`.

The wheel is built from a copy of the tree (tracked and untracked-but-not-ignored files,
plus the compiled request path when `switchyard compile` left a fresh one), installed
with pip into a new virtual environment that has never seen this checkout, and run
from a directory outside it, so nothing can be imported from the source tree by
accident. Where the checkout holds a fresh compiled build, the installed gateway must
run it (`switchyard_build_info{dataplane="compiled"}`) and the wheel must be tagged for
this platform, since it carries CPython extension modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from gateway.native.loader import OUTPUT_DIR, check
from tests.procs import _LISTEN_GW, REPO, Proc, Simulator

DIST_NAME = "switchyard_gateway"


def _copy_tree(dest: Path) -> bool:
    """Copy the checkout's files into `dest`; True when a fresh compiled build came too."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        src = REPO / os.fsdecode(raw)
        if not src.is_file():  # deleted in the working tree, still in the index
            continue
        target = dest / os.fsdecode(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    files, _reason = check(OUTPUT_DIR)
    if files is None:
        return False
    shutil.copytree(OUTPUT_DIR, dest / "gateway" / "_compiled")
    return True


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


# Building the wheel and installing its dependencies into a new venv takes a minute or two
# on a loaded 2-core machine; the default 120 s is for one gateway exchange.
@pytest.mark.timeout(900)
@pytest.mark.wheel
def test_wheel_installs_into_a_clean_venv_and_serves(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    src, dist, venv, work = (tmp_path / n for n in ("src", "dist", "venv", "work"))
    work.mkdir()
    compiled = _copy_tree(src)

    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], src, 600)
    wheels = list(dist.glob(f"{DIST_NAME}-*.whl"))
    assert len(wheels) == 1, f"expected one {DIST_NAME} wheel, found {wheels}"
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    carried = [n for n in names if n.startswith("gateway/_compiled/")]
    assert "gateway/py.typed" in names
    if compiled:
        assert "gateway/_compiled/manifest.json" in carried
        assert not wheel.name.endswith("-py3-none-any.whl"), (
            f"{wheel.name} carries extension modules but claims to be pure Python"
        )
    else:
        assert carried == [], "no fresh compiled build here, yet the wheel carries one"
        assert wheel.name.endswith("-py3-none-any.whl")

    _run([sys.executable, "-m", "venv", str(venv)], work, 120)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], work, 600)

    policies = work / "policies"
    policies.mkdir()
    (policies / "r.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
"""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SWITCHYARD_COMPILED", "PYTHONPATH")}
    popen = subprocess.Popen(
        [
            str(venv / "bin" / "switchyard"),
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--grpc-port",
            "-1",
            "--policies",
            str(policies),
        ],
        cwd=work,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    gw = Proc(popen)
    try:
        m = gw.wait_for(_LISTEN_GW, timeout=60)
        url, admin = m.group(1), m.group(2)
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-switchyard-route"] == "r"
        metrics = httpx.get(f"{admin}/metrics", timeout=10).text
    finally:
        gw.stop()
    # The installed copy, not this checkout, served: its module lies in the new venv.
    info = next(line for line in metrics.splitlines() if line.startswith("switchyard_build_info"))
    expected = "compiled" if compiled else "python"
    assert f'dataplane="{expected}"' in info, f"{info}\n{gw.output()[-2000:]}"
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert located.startswith(str(venv)), located

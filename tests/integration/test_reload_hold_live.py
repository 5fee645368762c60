"""A half-written policy file never takes routes down: a real gateway, real simulators,
real clients sending without pause while the file is rewritten the way editors and
config tools do (issue 20)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from loadtests.reload_under_load import edits
from tests.procs import GatewayProc, Simulator, start_gateway

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def quick_start(a: Simulator, b: Simulator) -> str:
    """The quick start's routes (no registry), its LLM routes on the simulators."""
    text = (ROOT / "policies" / "no-registry" / "demo.yaml").read_text()
    return text.replace("http://127.0.0.1:9101", a.url).replace("http://127.0.0.1:9102", b.url)


def cut_last(text: str) -> tuple[str, str]:
    """The policy file without its last document, and the route that document defines."""
    at = text.rindex("---\n")
    (route,) = re.findall(r"^route: *([\w-]+)", text[at:], re.MULTILINE)
    return text[:at], route


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not seen in {timeout}s: {what}"
        time.sleep(0.02)


def reloads(gw: GatewayProc, outcome: str) -> int:
    return int(gw.metric("switchyard_policy_reloads_total", outcome=outcome))


def grew(gw: GatewayProc, outcome: str, before: int) -> Callable[[], bool]:
    return lambda: reloads(gw, outcome) > before


def at_least(count: Callable[[], int], target: int) -> Callable[[], bool]:
    return lambda: count() >= target


def test_editor_style_rewrites_under_load_fail_no_request(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    full = quick_start(a, b)
    (tmp_path / "demo.yaml").write_text(full)
    gw = start_gateway(tmp_path)
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(20_000):  # bounded; the edits end it much sooner
                if stop.is_set():
                    return
                try:
                    status = str(c.post(f"{gw.url}/v1/chat/completions", json=CHAT).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1

    def answered() -> int:
        with lock:
            return sum(statuses.values())

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        held_seen: list[dict[str, object]] = []
        for edit in edits(full):
            before = reloads(gw, edit.expect)
            (tmp_path / "demo.yaml").write_text(edit.text)
            # The gateway says it processed this edit, with the outcome a safe one gives.
            eventually(grew(gw, edit.expect, before), f"{edit.name}: {edit.expect}")
            if edit.expect == "held":
                status = httpx.get(f"{gw.admin}/admin/reload", timeout=5).json()
                held_seen.append(status["held"])
                assert gw.metric("switchyard_policy_reload_held", reason="empty") == 1
            # Then traffic runs in that state, observed, not slept through.
            eventually(at_least(answered, answered() + 30), f"traffic after {edit.name}")
        assert httpx.get(f"{gw.admin}/admin/reload", timeout=5).json()["held"] is None
        assert gw.metric("switchyard_policy_reload_held", reason="empty") == 0
        assert reloads(gw, "success") == 0  # nothing of any edit was ever applied
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        gw.proc.stop()
    assert set(statuses) == {"200"}, statuses
    assert sum(statuses.values()) > 6 * 30
    every = sorted(re.findall(r"^route: *([\w-]+)", full, re.MULTILINE))
    assert len(every) >= 5 and "chat" in every
    assert [(h["reason"], h["routes"]) for h in held_seen] == [("empty", every)] * 2
    # The header-only and the empty file define the same (no) policies: one warning.
    assert gw.proc.output().count("held; still serving") == 1


def test_admin_reload_applies_a_removal_only_when_confirmed(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    full = quick_start(a, b)
    (tmp_path / "demo.yaml").write_text(full)
    gw = start_gateway(tmp_path, "--watch-interval", "0")
    try:
        # The file loses its last document (a save cut short): its route would go.
        cut, last = cut_last(full)
        (tmp_path / "demo.yaml").write_text(cut)
        r = httpx.post(f"{gw.admin}/admin/reload", timeout=10)
        assert r.status_code == 409, r.text
        held = r.json()["held"]
        assert (held["reason"], held["routes"]) == ("removes_routes", [last])
        assert f"POST /admin/reload?remove={last}" in held["message"]
        assert gw.metric("switchyard_policy_reload_held", reason="removes_routes") == 1
        assert last in httpx.get(f"{gw.admin}/admin/snapshot").json()["routes"]

        # A confirmation must name a serving route: a typo is an error, not consent.
        r = httpx.post(f"{gw.admin}/admin/reload?remove={last}x", timeout=10)
        assert r.status_code == 400
        assert f"remove={last}x: no such route is serving" in r.json()["error"]
        r = httpx.post(f"{gw.admin}/admin/reload?confirm=yes", timeout=10)
        assert r.status_code == 400 and "'confirm'" in r.json()["error"]

        r = httpx.post(f"{gw.admin}/admin/reload?remove={last}", timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "success"
        assert r.json()["changes"] == [f"{last}: route removed"]
        assert last not in httpx.get(f"{gw.admin}/admin/snapshot").json()["routes"]
        assert gw.metric("switchyard_policy_reload_held", reason="removes_routes") == 0
        status = httpx.get(f"{gw.admin}/admin/reload", timeout=5).json()
        assert status["held"] is None and status["last"]["outcome"] == "success"
        reply = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert reply.status_code == 200
    finally:
        gw.proc.stop()


def test_a_confirmation_reaches_every_worker(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> None:
    a, b = sims
    full = quick_start(a, b)
    (tmp_path / "demo.yaml").write_text(full)
    gw = start_gateway(tmp_path, "--watch-interval", "0", "--workers", "2")
    try:
        cut, last = cut_last(full)
        (tmp_path / "demo.yaml").write_text(cut)
        r = httpx.post(f"{gw.admin}/admin/reload", timeout=30)
        assert [w["status"] for w in r.json()["workers"]] == [409, 409], r.text
        assert gw.metric("switchyard_policy_reload_held", reason="removes_routes") == 1
        # The supervisor passes the query on: each worker gets the confirmation.
        r = httpx.post(f"{gw.admin}/admin/reload?remove={last}", timeout=30)
        assert r.status_code == 200, r.text
        assert [w["result"]["outcome"] for w in r.json()["workers"]] == ["success", "success"]
        assert gw.metric("switchyard_policy_reload_held", reason="removes_routes") == 0
    finally:
        gw.proc.stop()

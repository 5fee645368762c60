"""A LoRA adapter canaried, shadowed and promoted next to its base model on one real vLLM.

One vLLM server (tiny random Llama, CPU) serves the base model as `tiny` and a tiny
random LoRA adapter (tiny_lora.py, made here, rank 8 on q_proj/v_proj) as `tiny-lora`
(`--enable-lora --lora-modules tiny-lora=DIR`). Both are versions of one registered
model in a real MLflow: same `switchyard.endpoint`, and a `switchyard.model` tag naming
what vLLM must be asked for, the base model or the adapter. The gateway serves them
like any two versions: by alias, with the registry version on every metric.

Who answered is read off each response three ways: the gateway's headers (variant,
version), vLLM's own `model` field (the adapter's name when the adapter ran; the
gateway relays the body as it came) and the tokens themselves: greedy decoding of one
prompt gives the base model one fixed sequence and the adapter another (random
weights, so which tokens is arbitrary; that they differ is checked first).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mlflow import MlflowClient

from gateway.controlplane.backends.load import parse_vllm_metrics
from gateway.quickstart.mlflow_server import LocalMlflow
from tests.backends.proc import free_port
from tests.backends.vllm.vllm_proc import (
    MAX_MODEL_LEN,
    SERVED_MODEL,
    VllmServer,
    build_tiny_lora,
)
from tests.procs import REPO, GatewayProc, start_gateway, start_simulator

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

ADAPTER = "tiny-lora"
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
TOKENS = 4
# Greedy, exactly TOKENS long, and the generated token ids in `logprobs` (the tiny
# model's text is often empty: special tokens and partial UTF-8 sequences).
GREEDY: dict[str, Any] = {
    "temperature": 0,
    "logprobs": True,
    "extra_body": {"ignore_eos": True, "return_tokens_as_token_ids": True},
}
POLL_S = 0.5  # the gateway's registry poll interval


@pytest.fixture(scope="module")
def lora_vllm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """vLLM serving the tiny model and its adapter, for this module only (the session's
    server runs without LoRA)."""
    work = tmp_path_factory.mktemp("vllm-lora")
    adapter = build_tiny_lora(tiny_model, work / ADAPTER)
    server = VllmServer(tiny_model, work / "vllm.log", lora_modules={ADAPTER: adapter})
    server.start()
    print(f"\nvLLM with LoRA adapter {ADAPTER!r} healthy in {server.started_s:.1f} s")
    yield server
    server.stop()


@pytest.fixture
def vllm_lora(lora_vllm: VllmServer) -> VllmServer:
    lora_vllm.ensure_running()
    return lora_vllm


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    server = LocalMlflow(tmp_path_factory.mktemp("mlflow"), port=free_port())
    server.start()
    try:
        server.wait_ready(timeout=120)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_client(mlflow_server: LocalMlflow) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)


def register(client: MlflowClient, name: str, vllm: VllmServer) -> tuple[str, str]:
    """`name` with version 1 = the base model (@champion) and version 2 = the adapter
    (@challenger), both served by `vllm`; returns the two version numbers."""
    client.create_registered_model(name)
    versions = []
    for upstream, source in ((SERVED_MODEL, "base"), (ADAPTER, "lora-r8")):
        tags = {
            "switchyard.endpoint": vllm.url,
            "switchyard.protocol": "openai",
            "switchyard.model": upstream,  # what vLLM is asked for: base or adapter
        }
        mv = client.create_model_version(name, source=f"s3://models/{name}/{source}", tags=tags)
        versions.append(str(mv.version))
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "challenger", versions[1])
    return versions[0], versions[1]


def tokens(body: Any) -> tuple[str, ...]:
    logprobs = body.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    return tuple(item.token for item in logprobs.content)


def fingerprints(vllm: VllmServer) -> dict[str, tuple[str, ...]]:
    """{served model name: its greedy tokens}, asked of vLLM directly."""
    out: dict[str, tuple[str, ...]] = {}
    with openai.OpenAI(base_url=f"{vllm.url}/v1", api_key="unused", max_retries=0) as direct:
        for model in (SERVED_MODEL, ADAPTER):
            body = direct.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=TOKENS, **GREEDY
            )
            assert body.model == model
            out[model] = tokens(body)
            assert len(out[model]) == TOKENS
    assert out[SERVED_MODEL] != out[ADAPTER], (
        f"the adapter answers like its base model ({out}): LoRA weights not applied"
    )
    return out


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def resolved(gw: GatewayProc, route: str) -> dict[str, tuple[str | None, str | None]]:
    """{variant: (registry version, upstream model)} as the gateway serves them now."""
    view = httpx.get(f"{gw.admin}/admin/routes", timeout=5).json()
    (found,) = [r for r in view["routes"] if r["route"] == route]
    return {v["name"]: (v["version"], v["upstream_model"]) for v in found["variants"]}


def registry_gateway(
    gateway: Callable[..., GatewayProc], mlflow_server: LocalMlflow, policy: str
) -> GatewayProc:
    return gateway(
        policy,
        extra=("--registry-uri", mlflow_server.uri, "--registry-poll-interval", str(POLL_S)),
    )


def registry_cli(*args: str, mlflow_server: LocalMlflow) -> None:
    """`switchyard registry ARGS --registry-uri URI`, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "registry", *args, "--registry-uri", mlflow_server.uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def ask(client: openai.OpenAI, route: str) -> tuple[str, str, str, tuple[str, ...]]:
    """(variant, version, the body's model, tokens) of one request through the gateway."""
    raw = client.chat.completions.with_raw_response.create(
        model=route, messages=MESSAGES, max_tokens=TOKENS, **GREEDY
    )
    body = raw.parse()
    return (
        raw.headers["x-switchyard-variant"],
        raw.headers["x-switchyard-version"],
        body.model,
        tokens(body),
    )


def test_adapter_canary_from_the_registry_follows_the_weights(
    gateway: Callable[..., GatewayProc],
    vllm_lora: VllmServer,
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
) -> None:
    expected = fingerprints(vllm_lora)
    base_v, adapter_v = register(mlflow_client, "tiny-canary", vllm_lora)
    gw = registry_gateway(
        gateway,
        mlflow_server,
        """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, weight: 70, target: "models:/tiny-canary@champion"}
  - {name: challenger, weight: 30, target: "models:/tiny-canary@challenger"}
""",
    )
    want = {"champion": (base_v, SERVED_MODEL), "challenger": (adapter_v, ADAPTER)}
    assert wait_until(lambda: resolved(gw, "chat") == want, timeout=30), resolved(gw, "chat")

    n = 150
    seen: Counter[str] = Counter()
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        for _ in range(n):
            variant, version, model, answer = ask(client, "chat")
            seen[variant] += 1
            # The version the registry named, the adapter vLLM says it ran, and the
            # adapter's own tokens: all three agree for every request.
            assert (version, model) == want[variant]
            assert answer == expected[model], f"{variant} answered {answer}, not {model}'s"
    # 70/30 over 150: challenger expected 45, sd ~5.6; 4 sd bounds.
    assert 23 <= seen["challenger"] <= 67, seen
    assert seen["champion"] + seen["challenger"] == n
    for variant, count in seen.items():
        version = want[variant][0]
        assert (
            gw.metric("switchyard_requests_total", route="chat", variant=variant, version=version)
            == count
        )
    # vLLM's own record that it ran the adapter: a LoRA info series naming it (vLLM keeps
    # one series per set of running adapters it has seen).
    lora_info = [
        line
        for line in httpx.get(f"{vllm_lora.url}/metrics", timeout=5).text.splitlines()
        if line.startswith("vllm:lora_requests_info{")
    ]
    assert any(f'running_lora_adapters="{ADAPTER}"' in line for line in lora_info), lora_info
    print(f"\nLoRA canary (70/30, {n} requests): {dict(seen)}")


def test_adapter_shadowed_then_promoted_and_rolled_back(
    gateway: Callable[..., GatewayProc],
    vllm_lora: VllmServer,
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
) -> None:
    expected = fingerprints(vllm_lora)
    base_v, adapter_v = register(mlflow_client, "tiny-rollout", vllm_lora)
    gw = registry_gateway(
        gateway,
        mlflow_server,
        """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, target: "models:/tiny-rollout@champion"}
shadow:
  - {target: "models:/tiny-rollout@challenger", sample: 1.0}
""",
    )
    assert wait_until(lambda: resolved(gw, "chat") == {"champion": (base_v, SERVED_MODEL)}, 30)

    def ok_copies() -> float:
        return gw.metric(
            "switchyard_shadow_requests_total",
            route="chat",
            shadow="challenger",
            version=adapter_v,
            outcome="ok",
        )

    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        # Shadowed: clients get the base model; every request is copied to the adapter.
        # The copy leaves as soon as the primary is sent, so vLLM batches the two: the
        # base model's tokens here also prove that an adapter request in the same batch
        # does not leak into a base one (it does with vLLM's CPU LoRA ops and a full last
        # adapter slot: see VllmServer.lora_args).
        for _ in range(6):
            assert ask(client, "chat") == ("champion", base_v, SERVED_MODEL, expected[SERVED_MODEL])
        assert wait_until(lambda: ok_copies() == 6, timeout=30), ok_copies()

        # Promoted with the CLI, as an operator would: @champion moves to the adapter.
        registry_cli("promote", "tiny-rollout", "challenger", mlflow_server=mlflow_server)
        assert wait_until(lambda: ask(client, "chat")[1] == adapter_v, timeout=15)
        for _ in range(4):
            assert ask(client, "chat") == ("champion", adapter_v, ADAPTER, expected[ADAPTER])

        # And rolled back: @champion returns to the base model.
        registry_cli("rollback", "tiny-rollout", mlflow_server=mlflow_server)
        assert wait_until(lambda: ask(client, "chat")[1] == base_v, timeout=15)
        assert ask(client, "chat") == ("champion", base_v, SERVED_MODEL, expected[SERVED_MODEL])
    assert gw.metric("switchyard_requests_total", route="chat", version=adapter_v) >= 4


def test_load_watcher_reads_the_adapters_vllm_is_running(vllm_lora: VllmServer) -> None:
    """The parser the load watcher uses, on this vLLM's real /metrics while the adapter
    generates: the newest `vllm:lora_requests_info` series names it as running."""
    # 256 parallel answers of ~480 tokens: two rounds of the CPU engine's 128, many
    # seconds of work. One answer alone can be over before a starved client even reads
    # its first event (the engine has a core of its own), and then the newest series
    # is already the idle one. Leaving the block closes the stream, which cancels it.
    body = {
        "model": ADAPTER,
        "messages": MESSAGES,
        "max_tokens": MAX_MODEL_LEN - 32,
        "n": 256,
        "ignore_eos": True,
        "stream": True,
    }
    seen: list[str] = []

    def running() -> bool:
        # vLLM reported the adapter running, and the parser read the newest series (on a
        # loaded machine the work may be over by this scrape, the newest series the idle
        # one: the parser must then say idle).
        text = httpx.get(f"{vllm_lora.url}/metrics", timeout=5).text
        seen[:] = [line for line in text.splitlines() if line.startswith("vllm:lora_")]
        series = [line for line in seen if line.startswith("vllm:lora_requests_info{")]
        if not any(f'running_lora_adapters="{ADAPTER}"' in line for line in series):
            return False
        newest = max(series, key=lambda line: float(line.rsplit(" ", 1)[1]))
        wanted = (ADAPTER,) if f'running_lora_adapters="{ADAPTER}"' in newest else ()
        return parse_vllm_metrics(text).lora_running == wanted

    with httpx.stream(
        "POST", f"{vllm_lora.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line.startswith("data: "))
        assert wait_until(running, timeout=30), seen
    load = parse_vllm_metrics(httpx.get(f"{vllm_lora.url}/metrics", timeout=5).text)
    assert load.max_loras == 2  # --max-loras: one adapter and the empty slot (vllm_proc)


def test_the_lora_scorer_prefers_the_vllm_running_the_adapter(
    vllm_lora: VllmServer, tmp_path: Path
) -> None:
    """The picker's lora scorer on vLLM's real report: a pool of this vLLM (kept running
    the adapter by other clients) and an idle simulator (no LoRA report: a free slot).
    By load alone the simulator would take every request; the endpoint running the
    adapter takes them (4 x 1 + 1/(1 + its load) against 4 x 0.5 + 1), counted running."""
    sim = start_simulator("lora-idle")
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: lora-pick
variants:
  - name: main
    model: {ADAPTER}
    endpoints: ["{vllm_lora.url}", "{sim.url}"]
    load_metrics: vllm
picker: {{scorers: {{lora: 4, queue: 1}}, spread_above: 100000, context: {{fit: false}}}}
timeouts: {{first_byte: 120s, total: 300s}}
"""
    )
    gw = start_gateway(folder)
    stop = threading.Event()

    def keep_the_adapter_running(max_tokens: int) -> None:
        # Other clients of this vLLM: staggered lengths, so its batch is never empty.
        # Background load, not what is tested: a dropped connection (the server closing
        # a kept-alive one as the next request goes out, on a loaded machine) is retried.
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                try:
                    client.post(
                        f"{vllm_lora.url}/v1/completions",
                        json={
                            "model": ADAPTER,
                            "prompt": "x",
                            "max_tokens": max_tokens,
                            "ignore_eos": True,
                        },
                    )
                except httpx.TransportError:
                    stop.wait(0.2)

    holders = [
        threading.Thread(target=keep_the_adapter_running, args=(MAX_MODEL_LEN - 16 - 60 * i,))
        for i in range(4)
    ]
    backend = vllm_lora.hostport
    try:
        for thread in holders:
            thread.start()

        def gateway_sees_it_running() -> bool:
            try:  # the gateway's scrape (what the picker reads), not the server's report
                return gw.metric("switchyard_backend_running", backend=backend) > 0
            except httpx.TimeoutException:
                return False

        assert wait_until(gateway_sees_it_running, timeout=90), vllm_lora.log_tail()
        served: Counter[str] = Counter()
        with httpx.Client(timeout=120) as client:
            for _ in range(6):
                # Each pick is made on what the gateway last scraped: on a loaded machine a
                # scrape can land in a gap of the holders' batch (two of six picks did in a
                # CI run), so each request waits until the gateway sees the adapter running.
                # Generously: with the holders keeping vLLM busy on both cores, the
                # gateway's own /metrics answered this poll 7 s, 32 s and 53 s apart in a
                # debug run, and one CI run ran out of a 60 s wait.
                assert wait_until(gateway_sees_it_running, timeout=180), vllm_lora.log_tail()
                r = client.post(
                    f"{gw.url}/v1/chat/completions",
                    json={"model": "lora-pick", "messages": MESSAGES, "max_tokens": 2},
                )
                assert r.status_code == 200, r.text
                served[r.headers["x-switchyard-backend"]] += 1
                if r.headers["x-switchyard-backend"] == backend:
                    assert r.json()["model"] == ADAPTER
        # A scrape may still land between that check and the pick, in the instant between
        # one holder's generation and its next request (the adapter then reads as free,
        # like the simulator's): allow one such pick.
        assert served[backend] >= 5, served
        running = gw.metric("switchyard_picker_lora_total", backend=backend, result="running")
        assert running >= 5
        assert gw.metric("switchyard_picker_picks_total", route="lora-pick", scorer="lora") >= 5
    finally:
        stop.set()
        for thread in holders:
            thread.join(timeout=150)
        gw.proc.stop()
        sim.proc.stop()

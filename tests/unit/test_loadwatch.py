"""Load-aware picking: vLLM's reported queue steers requests to the less loaded endpoint."""

from __future__ import annotations

import httpx

from gateway.controlplane.backends.load import LoadWatcher, parse_vllm_metrics
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.pick import pick
from gateway.dataplane.snapshot import SnapshotRef
from gateway.observability.metrics import GatewayMetrics

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}
"""

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: main
    endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    load_metrics: vllm
"""


def test_parse_sums_models_and_reads_old_kv_name() -> None:
    text = VLLM_METRICS.format(running=3, waiting=7, kv=0.5) + (
        'vllm:num_requests_waiting{model_name="other"} 2.0\n'
        'vllm:gpu_cache_usage_perc{model_name="other"} 0.75\n'
    )
    load = parse_vllm_metrics(text)
    assert (load.waiting, load.running, load.kv_usage) == (9, 3, 0.75)


# What vLLM 0.32 (--enable-lora --max-loras 2) exposes: one series per combination of
# adapters it has seen, each set to the time of its last update; the newest is now.
LORA_SERIES = (
    'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="{running}",'
    'waiting_lora_adapters="{waiting}"}} {at}\n'
)
VLLM_LORA_INFO = (
    "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    "# TYPE vllm:lora_requests_info gauge\n"
    + LORA_SERIES.format(running="", waiting="", at="1.7966377456192312e+09")
    + LORA_SERIES.format(running="sql-lora,tiny-lora", waiting="chat-lora", at="1.79663774661e+09")
    + LORA_SERIES.format(running="tiny-lora", waiting="tiny-lora", at="1.7966377456155438e+09")
)


def test_parse_reads_the_newest_lora_adapters_series() -> None:
    load = parse_vllm_metrics(VLLM_METRICS.format(running=2, waiting=1, kv=0.2) + VLLM_LORA_INFO)
    assert (load.waiting, load.running) == (1, 2)
    assert load.lora_running == ("sql-lora", "tiny-lora")
    assert load.lora_waiting == ("chat-lora",)
    assert load.max_loras == 2
    # Idle again: the empty series is updated last and wins.
    idle = VLLM_LORA_INFO.replace("1.7966377456192312e+09", "1.7966377476192312e+09")
    load = parse_vllm_metrics(idle)
    assert (load.lora_running, load.lora_waiting, load.max_loras) == ((), (), 2)
    # A vLLM without --enable-lora has no such gauge.
    plain = parse_vllm_metrics(VLLM_METRICS.format(running=0, waiting=0, kv=0.0))
    assert (plain.lora_running, plain.lora_waiting, plain.max_loras) == ((), (), 0)


async def test_scraped_queue_moves_picks_to_the_idle_endpoint() -> None:
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY, "t.yaml")
    assert not problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    variant = snap.routes["chat"].variants[0]
    assert variant.load_metrics == "vllm"
    queues = {"127.0.0.1:9001": 12, "127.0.0.1:9002": 0}

    def backend(request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        return httpx.Response(
            200, text=VLLM_METRICS.format(running=4, waiting=queues[host], kv=0.1)
        )

    watcher = LoadWatcher(
        SnapshotRef(snap), client=httpx.AsyncClient(transport=httpx.MockTransport(backend))
    )
    await watcher.scrape_once(watcher.targets().values())
    picks = {pick(variant, 0.0, turn) for turn in range(10)}
    assert picks == {1}  # 9001 has 12 queued: everything goes to 9002
    queues.update({"127.0.0.1:9001": 0, "127.0.0.1:9002": 30})
    await watcher.scrape_once(watcher.targets().values())
    assert {pick(variant, 0.0, turn) for turn in range(10)} == {0}


async def test_unreachable_metrics_fall_back_to_in_flight() -> None:
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, _ = parse_policies(POLICY, "t.yaml")
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    variant = snap.routes["chat"].variants[0]
    variant.endpoints[0].state.queued = 50  # an old report
    variant.endpoints[0].state.load_at = 1.0

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    watcher = LoadWatcher(
        SnapshotRef(snap),
        interval=0.01,
        client=httpx.AsyncClient(transport=httpx.MockTransport(down)),
    )
    await watcher.scrape_once(watcher.targets().values())
    assert variant.endpoints[0].state.queued == 0
    assert watcher.failures == {"127.0.0.1:9001": 1, "127.0.0.1:9002": 1}
    await watcher._client.aclose()


async def test_scraped_lora_adapters_reach_the_endpoint_state_and_go_stale() -> None:
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, _ = parse_policies(POLICY, "t.yaml")
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    states = [e.state for e in snap.routes["chat"].variants[0].endpoints]
    lora = (
        'vllm:lora_requests_info{{max_lora="2",running_lora_adapters="{r}",'
        'waiting_lora_adapters="{w}"}} 5.0\n'
    )
    reports = {
        "127.0.0.1:9001": lora.format(r="sql,law", w=""),  # both slots taken
        "127.0.0.1:9002": lora.format(r="sql", w=""),  # a slot free
    }
    up = True

    def backend(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused")
        host = f"{request.url.host}:{request.url.port}"
        text = VLLM_METRICS.format(running=1, waiting=0, kv=0.1) + reports[host]
        return httpx.Response(200, text=text)

    watcher = LoadWatcher(
        SnapshotRef(snap),
        interval=0.01,
        timeout=0.01,
        client=httpx.AsyncClient(transport=httpx.MockTransport(backend)),
    )
    await watcher.scrape_once(watcher.targets().values())
    assert [(s.lora_running, s.max_loras, s.lora_free) for s in states] == [
        (("law", "sql"), 2, False),
        (("sql",), 2, True),
    ]
    # Unreachable past three rounds: no report, which the lora scorer reads as free.
    up = False
    for state in states:
        state.load_at -= 1.0
    await watcher.scrape_once(watcher.targets().values())
    assert [(s.lora_running, s.max_loras, s.lora_free) for s in states] == [((), 0, True)] * 2
    await watcher._client.aclose()

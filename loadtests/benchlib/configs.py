"""What the benchmark sends and the configuration of every system it starts.

The payloads are fixed so that runs on different days compare: a ~300-byte chat request
and a ~400-byte chat.completion answer, the size of a short real exchange. Every system
under test reaches the same upstream, so the only difference between the rows of the
table is the proxy in the middle.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROUTE: Final = "chat"
CHAT_PATH: Final = "/v1/chat/completions"

REQUEST_BODY: Final = (
    '{"model":"chat","messages":[{"role":"system","content":"You are a concise assistant '
    'for the risk team."},{"role":"user","content":"Summarise the quarterly fraud report '
    "for the risk committee, focusing on card-not-present transactions and chargeback "
    'rates."}],"max_tokens":64,"temperature":0.2}'
)

# Served by nginx with `return 200 '...'`: it must hold no single quote and no `$`
# (nginx would read `$name` as a variable).
RESPONSE_BODY: Final = (
    '{"id":"chatcmpl-bench0000000000000000000000000001","object":"chat.completion",'
    '"created":1767225600,"model":"chat","choices":[{"index":0,"message":{"role":'
    '"assistant","content":"Card-not-present fraud rose 4% quarter on quarter; chargebacks '
    'are flat. New merchant rules cut false positives by 11%."},"logprobs":null,'
    '"finish_reason":"stop"}],"usage":{"prompt_tokens":48,"completion_tokens":31,'
    '"total_tokens":79}}'
)

STREAM_BODY: Final = (
    '{"model":"chat","stream":true,"messages":[{"role":"user","content":"Summarise the '
    'quarterly fraud report for the risk committee."}]}'
)

# Sent by every request to every system, so all of them parse the same headers.
# LiteLLM refuses to start without a strong master key; one per run, loopback only.
API_KEY: Final = "sk-bench-" + secrets.token_hex(24)

# How many distinct x-user-id values the load cycles through: enough that consecutive
# requests always differ (sticky hashing does real work), few enough to precompute.
USERS: Final = 4096


def _nginx_head(workdir: Path) -> str:
    """Process-level nginx settings: one worker, foreground, every path in `workdir`."""
    user = ""
    if os.geteuid() == 0:
        # As root nginx drops its worker to `nobody`, which cannot enter a private temp
        # directory; keep the worker as the invoking user instead.
        name = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        user = f"user {name} {group};\n"
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\n"
        "events { worker_connections 8192; }\n"
    )


def _http_common(workdir: Path) -> str:
    # keepalive_requests is raised so no system pays for reconnects mid-run (nginx's
    # default of 1000 would close wrk's connections every few milliseconds).
    return (
        "    access_log off;\n"
        "    server_tokens off;\n"
        "    keepalive_requests 1000000000;\n"
        "    keepalive_timeout 300s;\n"
        f"    client_body_temp_path {workdir}/client_body;\n"
        f"    proxy_temp_path {workdir}/proxy_temp;\n"
        f"    fastcgi_temp_path {workdir}/fastcgi_temp;\n"
        f"    uwsgi_temp_path {workdir}/uwsgi_temp;\n"
        f"    scgi_temp_path {workdir}/scgi_temp;\n"
    )


def nginx_upstream_conf(workdir: Path, port: int) -> str:
    """A fixed chat.completion for every request: the fastest possible model server."""
    return (
        _nginx_head(workdir) + "http {\n" + _http_common(workdir) + "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        "        location / {\n"
        "            default_type application/json;\n"
        f"            return 200 '{RESPONSE_BODY}';\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def nginx_otlp_sink_conf(workdir: Path, port: int) -> str:
    """An OTLP/HTTP "collector" that accepts every export: 200 with an empty
    ExportTraceServiceResponse (zero protobuf bytes), whatever was sent."""
    return (
        _nginx_head(workdir) + "http {\n" + _http_common(workdir) + "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        "        client_max_body_size 64m;\n"
        "        location / {\n"
        "            default_type application/x-protobuf;\n"
        "            return 200 '';\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def nginx_proxy_conf(workdir: Path, port: int, upstream_port: int, *, streaming: bool) -> str:
    """nginx as a reverse proxy tuned the way people run it in front of model servers.

    `streaming` turns response buffering off, as SSE needs (otherwise nginx holds the
    events until its buffer fills and the TTFB comparison would be meaningless).
    """
    buffering = "            proxy_buffering off;\n" if streaming else ""
    return (
        _nginx_head(workdir) + "http {\n" + _http_common(workdir) + "    upstream backend {\n"
        f"        server 127.0.0.1:{upstream_port};\n"
        "        keepalive 256;\n"
        "        keepalive_requests 1000000000;\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        "        location / {\n"
        "            proxy_pass http://backend;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        f"{buffering}"
        "        }\n"
        "    }\n"
        "}\n"
    )


@dataclass(frozen=True)
class PolicyExtras:
    """Policy sections for request-path features the bench should exercise when they exist."""

    yaml: str
    """YAML appended to the bench route's policy (top-level keys)."""
    shadow: str
    """How the table reports shadow traffic."""
    drift: str
    """How the table reports drift sampling."""


# Issue 4's targets are measured with shadowing and drift sampling on.
SHADOW_SAMPLE: Final = 0.1
DRIFT_SAMPLE: Final = 0.1

# The drift reference: the text descriptors the gateway extracts from chat requests
# (see gateway/drift/features.py), a few rows of the kind the bench sends.
DRIFT_REFERENCE_FILE: Final = "drift-reference.csv"
DRIFT_REFERENCE: Final = (
    "message_count,prompt_chars,prompt_words,mean_word_length,non_ascii_share,digit_share,"
    "uppercase_share,max_tokens,temperature\n"
    "2.0,213.0,33.0,5.3,0.0,0.0,0.014,64.0,0.2\n"
    "2.0,180.0,29.0,5.1,0.0,0.0,0.011,64.0,0.3\n"
    "1.0,150.0,24.0,5.4,0.0,0.007,0.02,128.0,0.2\n"
)


def shadow_and_drift_hook(
    upstream_url: str,
    shadow_sample: float = SHADOW_SAMPLE,
    drift_sample: float = DRIFT_SAMPLE,
) -> PolicyExtras:
    """Policy sections for shadow traffic and drift sampling, the per-request extras.

    The shadow mirrors `shadow_sample` of the requests (0: none) to the same upstream,
    so the copies cost what they cost in production (sampling, a second upstream
    request from the bytes held, the primary's answer kept, the comparison) while the
    backend stays the fixed nginx answer. Drift samples `drift_sample` of the requests
    into the tap; the gateway process extracts their features and sends them every
    200 ms, as in production, to a sink on the worker's address that discards them
    (the bench starts the gateway with --no-drift-worker and the sink beside it:
    Evidently's evaluation is another process's CPU).
    """
    yaml = ""
    shadow = "off"
    drift = "off"
    if shadow_sample > 0:
        yaml += (
            f"shadow: [{{name: mirror, endpoints: [{upstream_url}], sample: {shadow_sample:g},"
            " max_inflight: 64}]\n"
        )
        shadow = f"{shadow_sample:.0%} of requests to the same upstream (max_inflight 64)"
    if drift_sample > 0:
        yaml += (
            f"drift: {{reference: {DRIFT_REFERENCE_FILE}, sample: {drift_sample:g},"
            " window: {size: 500, every: 10s, min_samples: 100}}\n"
        )
        drift = (
            f"{drift_sample:.0%} of requests (features extracted and sent by the gateway "
            "to a discarding sink; no drift worker)"
        )
    return PolicyExtras(yaml=yaml, shadow=shadow, drift=drift)


EXPERIMENT_YAML = "experiment: {baseline: champion}\n"
"""An A/B experiment on the bench route: every response is attributed for feedback."""
GROUND_TRUTH_YAML = (
    'ground_truth: {prediction: "choices[0].finish_reason", classes: [stop, length]}\n'
)
"""Ground truth on the bench route: every response is held until whole, its predicted
class read (`stop`) and a prediction-carrying fb2 feedback id minted into its head."""


def prometheus_conf(targets: list[str], interval: str = "5s") -> str:
    """A Prometheus scraping the gateways' admin `/metrics` (host:port targets)."""
    listed = ", ".join(f'"{t}"' for t in targets)
    return f"""global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}
scrape_configs:
  - job_name: switchyard
    static_configs: [{{targets: [{listed}]}}]
"""


def gateway_policy(upstream_url: str, extras: PolicyExtras) -> str:
    """The bench route: a realistic canary, the features a production route would use.

    Both variants point at the same upstream so the split costs what it costs in
    production (hashing, picking, metrics per variant) without changing the backend.
    No registry `target:`: the bench must not depend on an MLflow server.
    """
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: openai
variants:
  - name: champion
    weight: 90
    endpoints: [{upstream_url}]
  - name: challenger
    weight: 10
    endpoints: [{upstream_url}]
sticky:
  hash_on: header:x-user-id
overrides:
  - match:
      header: {{x-cohort: beta}}
    variant: challenger
fallback: [champion]
timeouts: {{connect: 500ms, first_byte: 30s, total: 5m, idle: 60s}}
retries: {{attempts: 2, budget: 0.2, on: [connect-error, 502, 503]}}
outlier: {{consecutive_failures: 5, base_ejection: 30s, max_ejection: 5m}}
{extras.yaml}"""


def litellm_config(upstream_url: str) -> str:
    """LiteLLM proxy config: the same upstream as an OpenAI-compatible model."""
    return f"""model_list:
  - model_name: {ROUTE}
    litellm_params:
      model: openai/{ROUTE}
      api_base: {upstream_url}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
"""

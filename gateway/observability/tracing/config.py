"""Tracing configuration from the standard `OTEL_*` variables and `switchyard serve` flags.

Tracing is on when an OTLP endpoint is known: `--trace-endpoint` (or
`SWITCHYARD_TRACE_ENDPOINT`), else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it
is), else `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`). `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` turn it off whatever else is set. Only OTLP over HTTP with
protobuf bodies is spoken; asking for gRPC or JSON is a configuration error, reported
at start rather than discovered as missing traces.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from gateway.observability.tracing.sampler import DEFAULT_SAMPLER, SAMPLERS, Sampler

DEFAULT_SERVICE: Final = "switchyard"
TRACES_PATH: Final = "/v1/traces"


class TraceConfigError(ValueError):
    """A tracing setting that cannot be used (the gateway refuses to start)."""


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Everything the tracer and its exporter need, resolved once at start."""

    endpoint: str  # the URL spans are POSTed to
    sampler: str = DEFAULT_SAMPLER
    ratio: float = 1.0
    headers: tuple[tuple[str, str], ...] = ()  # secrets possible: never logged
    timeout: float = 10.0  # seconds per export request
    compression: str | None = None  # "gzip" or None
    certificate: str | None = None  # CA bundle for an https endpoint
    resource: tuple[tuple[str, str], ...] = (("service.name", DEFAULT_SERVICE),)
    # Batch span processor (OTEL_BSP_*): spans held at most, spans per request, and
    # the longest wait before a partial batch goes out.
    max_queue: int = 2048
    batch_size: int = 512
    delay: float = 5.0

    def make_sampler(self) -> Sampler:
        return Sampler(self.sampler, self.ratio)

    def describe(self) -> str:
        """For the start-up log line: the endpoint and the sampler, no header values."""
        return f"{self.endpoint}, sampler {self.make_sampler().describe()}"


def trace_config(
    env: Mapping[str, str],
    *,
    endpoint: str | None = None,
    sampler: str | None = None,
    sampler_arg: str | None = None,
    service_name: str | None = None,
    service_version: str = "",
    instance_id: str | None = None,
) -> TraceConfig | None:
    """The tracing configuration, or None when tracing is off.

    Keyword arguments are the `switchyard serve` settings; each one set wins over its
    `OTEL_*` variable.
    """
    if _flag(env.get("OTEL_SDK_DISABLED")):
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
        if endpoint is None:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
            if base is None:
                return None
            endpoint = base.rstrip("/") + TRACES_PATH
    if exporter != "otlp":
        raise TraceConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: only otlp (or none)")
    if not endpoint.startswith(("http://", "https://")):
        raise TraceConfigError(f"trace endpoint {endpoint!r} is not an http(s) URL")
    protocol = _pick(env, "PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        raise TraceConfigError(
            f"OTLP protocol {protocol!r}: this gateway exports http/protobuf only "
            "(point it at the collector's HTTP port, usually 4318)"
        )
    name = sampler or env.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER
    if name not in SAMPLERS:
        raise TraceConfigError(f"unknown trace sampler {name!r}; one of {', '.join(SAMPLERS)}")
    arg = sampler_arg if sampler_arg is not None else env.get("OTEL_TRACES_SAMPLER_ARG")
    ratio = 1.0
    if "ratio" in name and arg not in (None, ""):
        try:
            ratio = float(str(arg))
        except ValueError:
            raise TraceConfigError(f"trace sampler ratio {arg!r} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise TraceConfigError(f"trace sampler ratio {arg!r} must be within 0..1")
    compression = (_pick(env, "COMPRESSION") or "none").lower()
    if compression not in ("gzip", "none"):
        raise TraceConfigError(f"OTLP compression {compression!r}: gzip or none")
    resource = dict(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES"))
    resource["service.name"] = (
        service_name or env.get("OTEL_SERVICE_NAME") or resource.get("service.name")
    ) or DEFAULT_SERVICE
    if service_version:
        resource.setdefault("service.version", service_version)
    resource.setdefault("service.instance.id", instance_id or socket.gethostname())
    return TraceConfig(
        endpoint=endpoint,
        sampler=name,
        ratio=ratio,
        headers=tuple(_pairs(_pick(env, "HEADERS") or "", "OTEL_EXPORTER_OTLP_HEADERS")),
        timeout=_millis(env, "TIMEOUT", 10_000) / 1000,
        compression=None if compression == "none" else compression,
        certificate=_pick(env, "CERTIFICATE"),
        resource=tuple(resource.items()),
        max_queue=int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, minimum=1)),
        batch_size=int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, minimum=1)),
        delay=_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, minimum=0) / 1000,
    )


def _pick(env: Mapping[str, str], name: str) -> str | None:
    """`OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`."""
    return (
        env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")
    ) or None


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    """`k1=v1,k2=v2` with percent-encoded values (W3C Baggage syntax, as the spec says)."""
    out: list[tuple[str, str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Do not echo the item: header values are often credentials.
            raise TraceConfigError(f"{what}: expected key=value items separated by commas")
        out.append((unquote(key.strip()), unquote(value.strip())))
    return out


def _millis(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _pick(env, name)
    return default if raw is None else _parse(raw, f"OTEL_EXPORTER_OTLP_{name}", 1)


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    return default if not raw else _parse(raw, name, minimum)


def _parse(raw: str, name: str, minimum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TraceConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise TraceConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _flag(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() == "true"

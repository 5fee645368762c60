"""The process's tracing pieces, built once from settings and the `OTEL_*` environment.

`Tracing.build` is what the app factory calls: the tracer and its span exporter when an
endpoint is configured, the access log when it is on; either may be None, which is all
the request path checks. `start` and `aclose` run the exporter's background task.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.config import TraceConfig, trace_config
from gateway.observability.tracing.tracer import Tracer
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.observability.tracing.exporter import SpanExporter


class Tracing:
    """Tracer, exporter and access log of one gateway process (each None when off)."""

    def __init__(
        self,
        config: TraceConfig | None,
        tracer: Tracer | None,
        exporter: SpanExporter | None,
        access_log: AccessLog | None,
    ) -> None:
        self.config = config
        self.tracer = tracer
        self.exporter = exporter
        self.access_log = access_log

    @classmethod
    def build(
        cls,
        settings: Settings,
        counters: TraceCounters,
        loop: asyncio.AbstractEventLoop,
        *,
        version: str = "",
        env: Mapping[str, str] | None = None,
    ) -> Tracing:
        """From settings and the environment; raises `TraceConfigError` on bad config."""
        env = os.environ if env is None else env
        worker = env.get("SWITCHYARD_WORKER_INDEX")
        config = trace_config(
            env,
            endpoint=settings.trace_endpoint,
            sampler=settings.trace_sampler,
            sampler_arg=settings.trace_sampler_arg,
            service_name=settings.trace_service_name,
            service_version=version,
            instance_id=f"{os.uname().nodename}-{worker}" if worker else None,
        )
        tracer = exporter = None
        if config is not None:
            # Imported only when tracing is on: the exporter's httpx client brings ~10 MB
            # of RSS that a gateway without an OTLP endpoint has no use for.
            from gateway.observability.tracing.exporter import SpanExporter

            exporter = SpanExporter(config, counters, scope_version=version)
            tracer = Tracer(config.make_sampler(), exporter, counters)
        access_log = None
        if settings.access_log or settings.access_log_file:
            access_log = AccessLog(
                settings.access_log_file,
                settings.access_log_max_bytes,
                settings.access_log_backups,
                counters.access_log,
                loop,
            )
        return cls(config, tracer, exporter, access_log)

    def describe(self) -> str:
        """For the start-up log."""
        traces = f"OTLP/HTTP to {self.config.describe()}" if self.config else "off"
        if self.access_log is None:
            access = "off"
        else:
            access = str(self.access_log.path) if self.access_log.path else "stderr"
        return f"tracing {traces}; access log {access}"

    def start(self) -> None:
        if self.exporter is not None:
            self.exporter.start()

    async def aclose(self) -> None:
        """Deliver what is queued (bounded), then stop."""
        if self.exporter is not None:
            await self.exporter.aclose()
        if self.access_log is not None:
            await self.access_log.aclose()

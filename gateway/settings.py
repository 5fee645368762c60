"""Process settings: one frozen object built from defaults, environment and CLI flags.

Every knob has an environment variable `SWITCHYARD_<NAME>` (upper-case field name), so
the same image runs anywhere; CLI flags win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    """Protections of the client-facing HTTP/1.1 server (413, 431, 408 when exceeded)."""

    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0  # whole head must arrive within this (slowloris)
    body_timeout: float = 60.0  # whole body must arrive within this
    keepalive_timeout: float = 75.0  # idle client connection is closed after this
    max_pipelined: int = 16  # requests queued behind the one being served


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    max_connections: int = 1024  # per endpoint; past it requests get 503 (circuit breaker)
    max_idle: int = 256  # idle keep-alive connections kept per endpoint
    idle_timeout: float = 30.0  # idle upstream connections are closed after this


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    policies: tuple[str, ...] = ("policies",)
    watch_interval: float = 1.0  # seconds between policy file checks; 0 disables
    admin_token: str | None = None
    log_level: str = "info"
    access_log: bool = False
    drain_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds readiness fails before listeners close
    seed: int | None = None  # fixes the routing RNG (tests, reproducible demos)
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with non-None values applied; nested fields by `limits__name`."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if value is None:
                continue
            if "__" in key:
                group, name = key.split("__", 1)
                nested.setdefault(group, {})[name] = value
            else:
                top[key] = value
        for group, vals in nested.items():
            top[group] = replace(getattr(self, group), **vals)
        return replace(self, **top)


def _coerce(raw: str, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"SWITCHYARD_{name.upper()}: expected true/false, got {raw!r}")
    if isinstance(current, tuple):
        return tuple(p for p in raw.split(",") if p)
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"SWITCHYARD_{name.upper()}: expected a number, got {raw!r}") from None
    if current is None and name == "seed":
        return int(raw)
    return raw


def from_env(env: dict[str, str] | None = None) -> Settings:
    """Settings from `SWITCHYARD_*` variables (`SWITCHYARD_LIMITS__MAX_BODY_BYTES` too)."""
    env = dict(os.environ if env is None else env)
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        current = getattr(base, f.name)
        if f.name in ("limits", "upstream"):
            for sub in fields(current):
                raw = env.get(f"SWITCHYARD_{f.name.upper()}__{sub.name.upper()}")
                if raw is not None:
                    values[f"{f.name}__{sub.name}"] = _coerce(
                        raw, getattr(current, sub.name), sub.name
                    )
            continue
        raw = env.get(f"SWITCHYARD_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _coerce(raw, current, f.name)
    return base.with_overrides(**values)

"""Which requests are traced: the OpenTelemetry samplers an SRE sets by name.

`OTEL_TRACES_SAMPLER` names one of `SAMPLERS`; `OTEL_TRACES_SAMPLER_ARG` is the ratio
of the `traceidratio` ones. The ratio test reads the trace id's lower 64 bits, as the
OpenTelemetry SDKs do, so every service that samples a trace by ratio agrees on it;
`parentbased_*` follows the caller's sampled flag when a `traceparent` came in.
"""

from __future__ import annotations

from typing import Final

from gateway.observability.tracing.context import LOW_64

SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER: Final = "parentbased_always_on"  # the OpenTelemetry default


class Sampler:
    """A sampling decision from a trace id, and from the caller's flag if any."""

    def __init__(self, name: str = DEFAULT_SAMPLER, ratio: float = 1.0) -> None:
        if name not in SAMPLERS:
            raise ValueError(f"unknown trace sampler {name!r}; one of {', '.join(SAMPLERS)}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"trace sampler ratio must be within 0..1, not {ratio!r}")
        self.name = name
        self.ratio = ratio
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        # A trace is sampled when its lower 64 bits are below `bound`.
        if root == "always_on":
            self.bound = 1 << 64
        elif root == "always_off":
            self.bound = 0
        else:
            self.bound = round(ratio * (1 << 64))

    def root(self, low: int) -> bool:
        """A new trace (no caller's context) whose trace id ends in the 64 bits `low`."""
        return low < self.bound

    def child(self, trace_id: int, flags: int) -> bool:
        """A trace the caller started, with its `traceparent` flags."""
        if self.parent_based:
            return bool(flags & 1)
        return (trace_id & LOW_64) < self.bound

    def describe(self) -> str:
        return f"{self.name} ({self.ratio:g})" if "ratio" in self.name else self.name

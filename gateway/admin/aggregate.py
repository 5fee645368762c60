"""One `/metrics` for several worker processes: scrape each, merge, render.

Each worker renders its own plain counters (see observability.metrics); the supervisor
sums samples with identical names and labels, so Prometheus sees one gateway whatever
the worker count. Gauges that are per-backend states (ejected, info) take the maximum
instead of the sum: two workers that both ejected an endpoint still report 1.

A scrape that asks for OpenMetrics gets it as one process serves it: the workers are
scraped in OpenMetrics, their values merged the same way, and each sample keeps the
newest exemplar (trace id) any worker had on it, so a latency spike on a multi-worker
gateway still links to a trace.

Parsing takes prometheus-client, whose package imports its HTTP server and push
gateway with it (a few MB of stdlib a process keeps): imported by the first merge, not
with this module, so a process that never merges never loads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gateway.observability.drift_metrics import WORKER_SOURCED
from gateway.observability.exposition import Sample
from gateway.observability.rollout_metrics import MAX_MERGED as ROLLOUT_MAX_MERGED

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Exemplar

# Sample names whose values must not be summed across workers.
# Every worker watches Kubernetes itself, so its watch state and discovered endpoint
# counts are per-process views of one fact; so are the backends' own load reports and
# active probe results, which every worker scrapes for itself.
_MAX_MERGED = frozenset(
    {
        "switchyard_backend_ejected",
        "switchyard_backend_probe_down",
        "switchyard_backend_queue_depth",
        "switchyard_backend_running",
        "switchyard_backend_kv_cache_usage",
        "switchyard_backend_max_model_len",
        "switchyard_registry_stale",
        "switchyard_kubernetes_watch_synced",
        "switchyard_discovery_endpoints",
        # Every worker reads the same policy source: 1 means some worker holds a reload.
        "switchyard_policy_reload_held",
    }
)

# A sample: its name and its sorted labels.
_Key = tuple[str, tuple[tuple[str, str], ...]]


def _merged(sample_name: str, before: float | None, value: float) -> float:
    """`value` of one more worker merged into what the others had (`before`)."""
    if (
        sample_name.endswith("_info")
        or sample_name in _MAX_MERGED
        or sample_name in WORKER_SOURCED
        or sample_name in ROLLOUT_MAX_MERGED
    ):
        return value if before is None else max(before, value)
    return (0.0 if before is None else before) + value


def merge_expositions(texts: Sequence[str]) -> str:
    """Merge Prometheus text expositions of several processes into one."""
    from prometheus_client.parser import text_string_to_metric_families

    order: list[str] = []
    meta: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[_Key, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in meta:
                order.append(family.name)
                meta[family.name] = (family.type, family.documentation)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged[key] = _merged(sample.name, merged.get(key), sample.value)
    return "".join(_render(name, *meta[name], values[name].items()) for name in order)


def merge_openmetrics(texts: Sequence[str], own: str = "") -> str:
    """Merge OpenMetrics expositions of several processes into one, `# EOF` included.

    Values merge as in `merge_expositions`; a sample with exemplars keeps the newest
    (by its timestamp) of them. `own` (the supervisor's own families, in the classic
    text format) come last.
    """
    from prometheus_client.metrics_core import Metric
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample as ParsedSample

    families: dict[str, Metric] = {}
    values: dict[str, dict[_Key, float]] = {}
    exemplars: dict[_Key, Exemplar] = {}
    for text in texts:
        parsed: Iterable[Metric] = openmetrics_families(text)  # type: ignore[no-untyped-call]
        for family in parsed:
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged[key] = _merged(sample.name, merged.get(key), sample.value)
                if sample.exemplar is not None:
                    kept = exemplars.get(key)
                    if kept is None or _when(sample.exemplar) > _when(kept):
                        exemplars[key] = sample.exemplar
    out: list[Metric] = []
    for name, family in families.items():
        for (sample_name, labels), value in _grouped(values[name]):
            found = exemplars.get((sample_name, labels))
            shown = _shown(found)
            family.samples.append(ParsedSample(sample_name, dict(labels), value, None, shown))
        out.append(family)
    out.extend(text_string_to_metric_families(own))
    rendered: bytes = openmetrics_latest(_Families(out))  # type: ignore[no-untyped-call]
    return rendered.decode()


class _Families:
    """What the exposition renders: a registry's `collect` over ready families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _grouped(samples: dict[_Key, float]) -> list[tuple[_Key, float]]:
    """The samples with each series' together (a histogram's buckets, count and sum),
    as OpenMetrics requires: series in the order they first appeared, whichever worker
    had them first."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[_Key, float]]] = {}
    for key, value in samples.items():
        group = tuple((k, v) for k, v in key[1] if k not in ("le", "quantile"))
        series.setdefault(group, []).append((key, value))
    return [item for items in series.values() for item in items]


def _when(exemplar: Exemplar) -> float:
    return float("-inf") if exemplar.timestamp is None else float(exemplar.timestamp)


def _shown(exemplar: Exemplar | None) -> Exemplar | None:
    """An exemplar as one process writes it: its timestamp a float, not (sec, nsec)."""
    if exemplar is None or exemplar.timestamp is None:
        return exemplar
    return exemplar._replace(timestamp=float(exemplar.timestamp))


def _render(
    name: str,
    kind: str,
    doc: str,
    samples: Iterable[tuple[_Key, float]],
) -> str:
    # As prometheus-client writes them: counters are announced with their _total name.
    shown = name + "_total" if kind == "counter" else name
    lines = [f"# HELP {shown} {_escape_doc(doc)}", f"# TYPE {shown} {kind}"]
    for (sample_name, labels), value in samples:
        lines.append(_sample_line(Sample(sample_name, dict(labels), value)))
    return "\n".join(lines) + "\n"


def _sample_line(sample: Sample) -> str:
    if sample.labels:
        inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
        return f"{sample.name}{{{inner}}} {_fmt(sample.value)}"
    return f"{sample.name} {_fmt(sample.value)}"


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_doc(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")

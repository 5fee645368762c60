"""One `/metrics` for several worker processes: scrape each, merge, render.

Each worker renders its own plain counters (see observability.metrics); the supervisor
sums samples with identical names and labels, so Prometheus sees one gateway whatever
the worker count. Gauges that are per-backend states (ejected, info) take the maximum
instead of the sum: two workers that both ejected an endpoint still report 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.observability.drift_metrics import WORKER_SOURCED
from gateway.observability.rollout_metrics import MAX_MERGED as ROLLOUT_MAX_MERGED

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
        "switchyard_registry_stale",
        "switchyard_kubernetes_watch_synced",
        "switchyard_discovery_endpoints",
        # Every worker reads the same policy source: 1 means some worker holds a reload.
        "switchyard_policy_reload_held",
    }
)


def merge_expositions(texts: Sequence[str]) -> str:
    """Merge Prometheus text expositions of several processes into one."""
    order: list[str] = []
    meta: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in meta:
                order.append(family.name)
                meta[family.name] = (family.type, family.documentation)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if (
                    sample.name.endswith("_info")
                    or sample.name in _MAX_MERGED
                    or sample.name in WORKER_SOURCED
                    or sample.name in ROLLOUT_MAX_MERGED
                ):
                    merged[key] = max(merged.get(key, sample.value), sample.value)
                else:
                    merged[key] = merged.get(key, 0.0) + sample.value
    return "".join(_render(name, *meta[name], values[name].items()) for name in order)


def _render(
    name: str,
    kind: str,
    doc: str,
    samples: Iterable[tuple[tuple[str, tuple[tuple[str, str], ...]], float]],
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

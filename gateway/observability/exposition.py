"""Metric families and their text expositions, without prometheus-client.

The gateway's collectors build their families at scrape time (see
`gateway.observability.metrics`), so what they need of a Prometheus client is small:
families that collect samples, and two renderers. prometheus-client's package
`__init__` imports its own HTTP server and push gateway (http.server, http.client,
email, urllib.request, wsgiref...), a few megabytes of RSS that a worker would keep
for its whole life (docs/operations.md, "Memory"); so the serving process uses these
instead, and only code that parses expositions (the supervisor's merge, a worker
reading its supervisor's `/metrics`) imports prometheus-client, when it first does.

The families have prometheus-client's interface as the collectors call it (the
`*MetricFamily` constructors with `labels=`, `add_metric`, `Exemplar` on histogram
buckets) and its attributes (`name`, `documentation`, `type`, `samples`), and the
renderers write byte for byte what its `generate_latest` (Prometheus text 0.0.4) and
`openmetrics.exposition.generate_latest` (OpenMetrics 1.0.0) write for the same
families with their default (underscore) name escaping; tests/unit/test_exposition.py
holds them to that, with prometheus-client as the oracle. No units and no sample
timestamps: no collector sets them. Nothing here is global state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NamedTuple, Protocol

# The content types of the two formats. The classic one says 0.0.4, the version of the
# format written (prometheus-client's own server answers it with this type too).
CONTENT_TYPE_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_DIGITS: Final = frozenset("0123456789")


class Exemplar(NamedTuple):
    """A trace linked to a sample (a histogram bucket, a counter's total)."""

    labels: dict[str, str]
    value: float
    timestamp: float | None = None  # Unix seconds


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Exemplar | None = None


class Metric:
    """One metric family: its name, help text, type and samples."""

    __slots__ = ("_labelnames", "documentation", "name", "samples", "type")

    def __init__(self, name: str, documentation: str, typ: str, labels: Sequence[str]) -> None:
        if not name:
            raise ValueError("metric name cannot be empty")
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.samples: list[Sample] = []
        self._labelnames = tuple(labels)

    def _labels(self, values: Sequence[str]) -> dict[str, str]:
        return dict(zip(self._labelnames, values, strict=False))

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.samples})"


class CounterMetricFamily(Metric):
    """Samples `<name>_total` (and `<name>_created` when given); a `_total` suffix of
    `name` is dropped, as prometheus-client does."""

    __slots__ = ()

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total"), documentation, "counter", labels)

    def add_metric(
        self,
        labels: Sequence[str],
        value: float,
        created: float | None = None,
        *,
        exemplar: Exemplar | None = None,  # keyword: prometheus-client has a timestamp here
    ) -> None:
        self.samples.append(
            Sample(self.name + "_total", self._labels(labels), value, None, exemplar)
        )
        if created is not None:
            self.samples.append(Sample(self.name + "_created", self._labels(labels), created))


class GaugeMetricFamily(Metric):
    __slots__ = ()

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "gauge", labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name, self._labels(labels), value))


# A histogram bucket: its upper bound as written (`le`), the cumulative count, and
# optionally the exemplar of a value that fell in it.
Bucket = tuple[str, float] | tuple[str, float, Exemplar]


class HistogramMetricFamily(Metric):
    __slots__ = ()

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "histogram", labels)

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[Bucket], sum_value: float | None
    ) -> None:
        """`buckets` sorted, `+Inf` last (its count is the histogram's `_count`)."""
        for b in buckets:
            with_le = [*zip(self._labelnames, labels, strict=False), ("le", b[0])]
            exemplar = b[2] if len(b) == 3 else None
            self.samples.append(Sample(self.name + "_bucket", dict(with_le), b[1], None, exemplar))
        # As prometheus-client: no _count and _sum for negative buckets or without a sum.
        if float(buckets[0][0]) >= 0 and sum_value is not None:
            self.samples.append(Sample(self.name + "_count", self._labels(labels), buckets[-1][1]))
            self.samples.append(Sample(self.name + "_sum", self._labels(labels), sum_value))


class InfoMetricFamily(Metric):
    """Sample `<name>_info` of value 1, the info labels after the family's own."""

    __slots__ = ()

    def __init__(self, name: str, documentation: str, *, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "info", labels)

    def add_metric(self, labels: Sequence[str], value: dict[str, str]) -> None:
        self.samples.append(Sample(self.name + "_info", {**self._labels(labels), **value}, 1))


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Registry:
    """Collectors whose families one exposition renders, in order."""

    def __init__(self, collectors: Iterable[Collector] = ()) -> None:
        self._collectors = list(collectors)

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


# Rendering ------------------------------------------------------------------------


def generate_text(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format 0.0.4, as prometheus-client's `generate_latest`.

    Counters are announced by their `_total` name, info families as gauges named
    `_info`; a counter's `_created` samples follow their family as a gauge family of
    their own (the format has no place for them in the counter).
    """
    out: list[str] = []
    for metric in families:
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
            kind = "gauge"
        doc = _help_text(metric.documentation)
        out.append(f"# HELP {_metric_name(name)} {doc}\n# TYPE {_metric_name(name)} {kind}\n")
        created: list[str] = []
        created_name = metric.name + "_created"
        for s in metric.samples:
            (created if s.name == created_name else out).append(_text_line(s))
        if created:
            shown = _metric_name(created_name)
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} gauge\n")
            out.extend(created)
    return "".join(out).encode()


def generate_openmetrics(families: Iterable[Metric]) -> bytes:
    """OpenMetrics 1.0.0 text, `# EOF` included, as prometheus-client's
    `openmetrics.exposition.generate_latest`: the only format with exemplars."""
    out: list[str] = []
    for metric in families:
        shown = _metric_name(metric.name)
        doc = _escape(metric.documentation)
        out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {metric.type}\n")
        for s in metric.samples:
            labels = _labels(s.labels)
            exemplar = "" if s.exemplar is None else _exemplar(metric, s, s.exemplar)
            stamp = "" if s.timestamp is None else f" {s.timestamp}"
            value = format_float(s.value)
            out.append(f"{_sample_name(s.name)}{labels} {value}{stamp}{exemplar}\n")
    out.append("# EOF\n")
    return "".join(out).encode()


def format_float(value: float) -> str:
    """A value as Prometheus' Go code writes it (prometheus-client's `floatToGoString`):
    `+Inf`, `-Inf`, `NaN`, and exponents from 1e+06 on (Python's repr waits for 1e+16)."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _text_line(s: Sample) -> str:
    labels = _labels(s.labels)
    stamp = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
    return f"{_metric_name(s.name)}{labels} {format_float(s.value)}{stamp}\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{_label_name(k)}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _exemplar(metric: Metric, s: Sample, exemplar: Exemplar) -> str:
    """` # {labels} value [timestamp]` after a counter's total or a histogram bucket."""
    if not (
        (metric.type == "counter" and s.name.endswith("_total"))
        or (metric.type == "histogram" and (s.name.endswith("_bucket") or s.name == metric.name))
    ):
        raise ValueError(
            f"Metric {metric.name} has exemplars, but is not a histogram bucket or counter"
        )
    # Exemplar label names are written as they are (prometheus-client does not escape them).
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(exemplar.labels.items()))
    value = format_float(exemplar.value)
    if exemplar.timestamp is None:
        return f" # {{{inner}}} {value}"
    return f" # {{{inner}}} {value} {exemplar.timestamp}"


def _escape(text: str) -> str:
    """Label values, and OpenMetrics help text: backslash, newline, double quote."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help_text(text: str) -> str:
    """Help text of the classic format: backslash and newline only."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _metric_name(name: str) -> str:
    """A metric name with every character the legacy charset lacks written `_`."""
    if _METRIC_NAME.fullmatch(name) or not name:
        return name
    return _underscored(name, ":")


def _label_name(name: str) -> str:
    if _LABEL_NAME.fullmatch(name) or not name:
        return name
    return _underscored(name, "")


def _sample_name(name: str) -> str:
    """A sample's name in OpenMetrics, escaped as a label name is (prometheus-client's
    quirk: a `:` becomes `_` there, not in HELP and TYPE)."""
    return name if _LABEL_NAME.fullmatch(name) else _underscored(name, "")


def _underscored(name: str, extra: str) -> str:
    return "".join(
        c if c in _LETTERS or c in extra or (i > 0 and c in _DIGITS) else "_"
        for i, c in enumerate(name)
    )

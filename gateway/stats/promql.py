"""PromQL for the fleet's statistics: the queries, label escaping, and their results as samples.

Each read is a few instant queries (`/api/v1/query`) evaluated at one time, so they
see the same scrapes:

- the route's samples, summed over every label but the ones that tell them apart
  (`counts.KEY_LABELS`: the process's `instance` stays, so a restart of one replica
  shows as its counter going down);
- when each switchyard process was last scraped (`timestamp(switchyard_build_info)`):
  which processes count, and how fresh the numbers are;
- how often the supervisors among them replaced a worker (a worker's counters restart
  from zero inside one scraped target).

Label values come from policies (route names), so they are escaped as PromQL string
literals; `selector` is the operator's own matchers (`job="switchyard"`), checked for
form when the gateway starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gateway.stats.counts import KEY_LABELS, ROUTE_SAMPLES, Sample

BUILD_INFO = "switchyard_build_info"
WORKER_RESTARTS = "switchyard_worker_restarts_total"
# One matcher: a label name, an operator, a double- or single-quoted (or backticked)
# string. Commas between matchers; a trailing comma is allowed, as in PromQL.
_MATCHER = re.compile(
    r"""\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*"""
    r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)\s*"""
)


class PromQLError(ValueError):
    """A selector or a query result that is not what it should be."""


def quote(value: str) -> str:
    """`value` as a PromQL double-quoted string literal."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def check_selector(selector: str) -> str:
    """The operator's label matchers without braces; PromQLError if not matchers."""
    text = selector.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    pos = 0
    while pos < len(text):
        found = _MATCHER.match(text, pos)
        if found is None:
            raise PromQLError(
                f"selector {selector!r} is not PromQL label matchers: expected "
                f'name="value" (or =~, !=, !~), comma-separated, at {text[pos:]!r}'
            )
        pos = found.end()
        if pos < len(text):
            if text[pos] != ",":
                raise PromQLError(f"selector {selector!r}: expected a comma at {text[pos:]!r}")
            pos += 1
    return text.rstrip().rstrip(",")


def _matchers(*parts: str) -> str:
    return "{" + ", ".join(p for p in parts if p) + "}"


def route_query(route: str, selector: str = "") -> str:
    """Every sample the route's statistics need, summed over the labels that do not
    tell them apart (job, pod, namespace, ...), keeping each process apart."""
    names = "|".join(re.escape(n) for n in ROUTE_SAMPLES)
    series = _matchers(f"__name__=~{quote(names)}", f"route={quote(route)}", selector)
    return f"sum by (__name__, route, {', '.join(KEY_LABELS)}) ({series})"


def processes_query(selector: str = "") -> str:
    """When each switchyard process (each scraped target) was last scraped."""
    return f"max by (instance) (timestamp({BUILD_INFO}{_matchers(selector)}))"


def restarts_query(selector: str = "") -> str:
    """Workers each supervisor among the targets replaced since it started."""
    return f"sum by (instance) ({WORKER_RESTARTS}{_matchers(selector)})"


def vector(payload: Any) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) pairs of an instant query's JSON answer; PromQLError if it is
    an error answer or not a vector."""
    if not isinstance(payload, dict):
        raise PromQLError("the answer is not a JSON object")
    if payload.get("status") != "success":
        kind = payload.get("errorType", "error")
        raise PromQLError(f"{kind}: {payload.get('error', 'no error message')}")
    data = payload.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        got = data.get("resultType") if isinstance(data, dict) else None
        raise PromQLError(f"expected a vector result, got {got!r}")
    out = []
    for item in data.get("result") or ():
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise PromQLError(f"malformed result entry {str(item)[:200]}") from None
        out.append((labels, value))
    return out


def samples(payload: Any) -> Iterator[Sample]:
    """An instant query's answer as samples (the name from its `__name__` label)."""
    for labels, value in vector(payload):
        name = labels.pop("__name__", "")
        yield Sample(name, labels, value)

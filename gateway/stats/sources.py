"""Where the fleet's statistics come from: this process, its supervisor, or Prometheus.

- `local` (the default of a single `switchyard serve`): this process's own metrics,
  collected in-process from the same families `/metrics` renders.
- `supervisor` (automatic in the workers of `serve --workers N`): the supervisor's
  merged `/metrics` over loopback, so every worker reads every worker's counts.
- `prometheus` (`--stats-source prometheus --prometheus-url URL`): PromQL instant
  queries covering every replica Prometheus scrapes.

Every read is bounded by a timeout and reports where its numbers came from (`Origin`:
kind, URL, when, how fresh). A read that fails raises `StatsUnavailable` with the
reason; nothing is cached, so the next read retries and recovery needs no action. Reads
happen in the rollout controller's rounds and in admin handlers, never on the request
path.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol, cast

from gateway.importing import import_off_loop
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.rollout_metrics import SourceGauge
from gateway.settings import Settings
from gateway.stats import promql
from gateway.stats.counts import ROUTE_SAMPLES, RouteStats, Sample, route_stats

if TYPE_CHECKING:
    import httpx

# What `--stats-source` takes; `supervisor` is chosen for the workers of --workers N.
KINDS = ("local", "prometheus")
_WANTED = frozenset(ROUTE_SAMPLES)
_WORKERS = "switchyard_workers"
_RESTARTS = promql.WORKER_RESTARTS


def _read_errors() -> tuple[type[Exception], ...]:
    """What a failed read raises. httpx's errors among them once httpx is loaded: the
    sources that read over HTTP import it when they first read (it costs ~10 MB of RSS,
    which the local source, that of most gateways, has no use for), and no httpx error
    exists before then."""
    errors: tuple[type[Exception], ...] = (promql.PromQLError, ValueError, OSError)
    httpx = sys.modules.get("httpx")
    return errors if httpx is None else (cast("type[Exception]", httpx.HTTPError), *errors)


class StatsConfigError(ValueError):
    """Options of the statistics source that cannot work."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one read's numbers came from, and how fresh they are."""

    kind: str  # local | supervisor | prometheus
    url: str | None
    read_at: float  # unix time of the read (a Prometheus query's evaluation time)
    # The numbers are at least this fresh: the read itself, or for Prometheus the oldest
    # of the processes' latest scrapes.
    as_of: float | None = None
    newest_scrape_age_s: float | None = None
    oldest_scrape_age_s: float | None = None
    processes: int | None = None  # scraped switchyard processes (Prometheus)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "url": self.url,
            "read_at": round(self.read_at, 3),
            "as_of": None if self.as_of is None else round(self.as_of, 3),
        }
        if self.kind == "prometheus":
            out["newest_scrape_age_s"] = _rounded(self.newest_scrape_age_s)
            out["oldest_scrape_age_s"] = _rounded(self.oldest_scrape_age_s)
            out["processes"] = self.processes
        out["error"] = self.error
        return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One route's numbers and where they came from."""

    stats: RouteStats
    origin: Origin
    samples: tuple[Sample, ...] = ()  # the samples read (ground truth sums its own)


class StatsUnavailable(Exception):
    """The source did not answer, answered an error, or took longer than its timeout."""

    def __init__(self, origin: Origin, reason: str) -> None:
        super().__init__(reason)
        self.origin = origin
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Read:
    samples: list[Sample]
    processes: tuple[str, ...] = ()
    as_of: float | None = None
    newest: float | None = None  # latest scrape of all (Prometheus)
    count: int | None = None


class StatsSource:
    """Reads one route's statistics; keeps count of how reading goes (for /metrics)."""

    kind: ClassVar[str] = ""
    # Modules its reads import (besides httpx, for those over HTTP): loaded like httpx.
    imports: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, url: str | None, timeout: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._clock = clock
        self.up: bool | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.last_read_at: float | None = None

    @property
    def where(self) -> str:
        """`prometheus at http://...`: how messages name this source."""
        return f"{self.kind} at {self.url}" if self.url else self.kind

    def explains(self) -> str:
        """What this source covers, in words."""
        raise NotImplementedError

    async def read(self, route: str) -> Evidence:
        """`route`'s numbers now; StatsUnavailable (counted) if the source fails."""
        now = self._clock()
        if self.url is not None:  # it reads over HTTP: httpx, loaded outside the timed wait
            await import_off_loop("httpx")
        for name in self.imports:
            await import_off_loop(name)
        try:
            got = await asyncio.wait_for(self._read(route, now), self.timeout)
        except TimeoutError:
            self._failed(now, f"no answer within {self.timeout:g}s")
        except _read_errors() as exc:
            self._failed(now, str(exc) or type(exc).__name__)
        self.up, self.last_read_at = True, now
        as_of = got.as_of if got.as_of is not None else now
        origin = Origin(
            self.kind,
            self.url,
            now,
            as_of,
            newest_scrape_age_s=None if got.newest is None else max(0.0, now - got.newest),
            oldest_scrape_age_s=None if got.as_of is None else max(0.0, now - got.as_of),
            processes=got.count,
        )
        stats = route_stats(route, got.samples, got.processes)
        return Evidence(stats, origin, tuple(got.samples))

    def _failed(self, now: float, error: str) -> NoReturn:
        self.up, self.last_read_at = False, now
        self.errors += 1
        self.last_error = error
        reason = f"evidence unavailable from {self.where}: {error}"
        raise StatsUnavailable(Origin(self.kind, self.url, now, error=error), reason)

    async def _read(self, route: str, now: float) -> _Read:
        raise NotImplementedError

    def view(self) -> dict[str, Any]:
        """Which source this is and what it covers (`explain` shows it)."""
        return {"kind": self.kind, "url": self.url, "covers": self.explains()}

    def describe(self) -> dict[str, Any]:
        """The source and how its reads go, for status views."""
        return {
            **self.view(),
            "up": self.up,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_read_at": self.last_read_at,
        }

    def gauge(self) -> SourceGauge:
        return SourceGauge(self.kind, self.up, self.errors)


class _SampleRead(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def value(self) -> float: ...


class _Family(Protocol):
    """A metric family: one of this process's, or one prometheus-client parsed."""

    @property
    def samples(self) -> Sequence[_SampleRead]: ...


def _from_families(families: Iterable[_Family]) -> Iterator[Sample]:
    for family in families:
        for s in family.samples:
            if s.name in _WANTED or s.name in (_WORKERS, _RESTARTS):
                yield Sample(s.name, s.labels, s.value)


class LocalSource(StatsSource):
    """This process's own counters, collected in-process as `/metrics` renders them."""

    kind = "local"

    def __init__(self, metrics: GatewayMetrics, timeout: float = 5.0) -> None:
        super().__init__(None, timeout)
        self._metrics = metrics

    def explains(self) -> str:
        return "this gateway process's own counters (the requests it serves)"

    async def _read(self, route: str, now: float) -> _Read:
        return _Read(list(_from_families(self._metrics.families())))


class SupervisorSource(StatsSource):
    """The merged `/metrics` of the supervisor of `--workers N` (every worker's counts)."""

    kind = "supervisor"
    # Its parser: prometheus-client, which a worker that never reads it does not load
    # (its package brings an HTTP server and push gateway: a few MB of RSS per worker).
    imports = ("prometheus_client.parser",)

    def explains(self) -> str:
        return "the supervisor's /metrics, merged over every worker of this gateway"

    async def _read(self, route: str, now: float) -> _Read:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        assert self.url is not None
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            reply = await client.get(f"{self.url}/metrics")
        if reply.status_code != 200:
            raise ValueError(f"GET /metrics answered {reply.status_code}")
        found = list(_from_families(text_string_to_metric_families(reply.text)))
        workers = sum(s.value for s in found if s.name == _WORKERS)
        restarts = sum(s.value for s in found if s.name == _RESTARTS)
        # A worker that stopped answering or was replaced changes these: its counters
        # left the sums, or restarted from zero inside them.
        processes = (f"workers={workers:g}", f"worker_restarts={restarts:g}")
        return _Read(found, processes)


class PrometheusSource(StatsSource):
    """PromQL instant queries over every switchyard process Prometheus scrapes."""

    kind = "prometheus"

    def __init__(self, url: str, selector: str, timeout: float, **kw: Any) -> None:
        super().__init__(url.rstrip("/"), timeout, **kw)
        self.selector = selector

    def explains(self) -> str:
        narrowed = f" matching {{{self.selector}}}" if self.selector else ""
        return f"every switchyard process Prometheus scrapes{narrowed}, summed"

    async def _read(self, route: str, now: float) -> _Read:
        import httpx

        queries = (
            promql.route_query(route, self.selector),
            promql.processes_query(self.selector),
            promql.restarts_query(self.selector),
        )
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            data, scraped, restarts = await asyncio.gather(
                *(self._query(client, q, now) for q in queries)
            )
        seen = {labels.get("instance", ""): ts for labels, ts in promql.vector(scraped)}
        if not seen:
            narrowed = f" matching {{{self.selector}}}" if self.selector else ""
            raise promql.PromQLError(
                f"Prometheus has no fresh {promql.BUILD_INFO}{narrowed}: it scrapes no "
                "switchyard process (check its targets and --prometheus-selector)"
            )
        replaced = {labels.get("instance", ""): n for labels, n in promql.vector(restarts)}
        processes = tuple(
            f"{instance}#{replaced[instance]:g}" if instance in replaced else instance
            for instance in sorted(seen)
        )
        return _Read(
            list(promql.samples(data)),
            processes,
            as_of=min(seen.values()),
            newest=max(seen.values()),
            count=len(seen),
        )

    async def _query(self, client: httpx.AsyncClient, query: str, now: float) -> Any:
        reply = await client.get(
            f"{self.url}/api/v1/query", params={"query": query, "time": f"{now:.3f}"}
        )
        try:
            payload = reply.json()
        except ValueError:
            raise promql.PromQLError(
                f"HTTP {reply.status_code}, not a Prometheus API answer: {reply.text[:200]!r}"
            ) from None
        if reply.status_code != 200 and isinstance(payload, dict) and "error" in payload:
            raise promql.PromQLError(
                f"HTTP {reply.status_code}: {payload.get('errorType', 'error')}: {payload['error']}"
            )
        return payload


# ---- from settings ----------------------------------------------------------------------


def options_problem(settings: Settings) -> str | None:
    """What is wrong with the statistics options, in the words of the flags; None if fine."""
    kind = settings.stats_source
    if kind not in KINDS:
        return (
            f"--stats-source {kind!r}: expected one of {', '.join(KINDS)} (the workers of "
            "--workers N read their supervisor by themselves)"
        )
    if not (math.isfinite(settings.stats_timeout) and settings.stats_timeout > 0):
        return f"--stats-timeout {settings.stats_timeout:g}: expected seconds above 0"
    if kind != "prometheus":
        if settings.prometheus_url:
            return (
                "--prometheus-url is read only with --stats-source prometheus "
                "(SWITCHYARD_STATS_SOURCE=prometheus)"
            )
        if settings.prometheus_selector:
            return "--prometheus-selector is read only with --stats-source prometheus"
        return None
    if not settings.prometheus_url:
        return (
            "--stats-source prometheus needs --prometheus-url (or SWITCHYARD_PROMETHEUS_URL), "
            "e.g. http://prometheus:9090"
        )
    import httpx

    try:
        url = httpx.URL(settings.prometheus_url)
    except httpx.InvalidURL as exc:
        return f"--prometheus-url {settings.prometheus_url!r}: {exc}"
    if url.scheme not in ("http", "https") or not url.host:
        return (
            f"--prometheus-url {settings.prometheus_url!r}: expected http(s)://HOST[:PORT], "
            "e.g. http://prometheus:9090"
        )
    if url.query or url.fragment:
        return f"--prometheus-url {settings.prometheus_url!r}: no query or fragment, please"
    try:
        promql.check_selector(settings.prometheus_selector or "")
    except promql.PromQLError as exc:
        return f"--prometheus-selector: {exc}"
    return None


def build_source(settings: Settings, metrics: GatewayMetrics) -> StatsSource:
    """The source these settings name; StatsConfigError if they cannot work."""
    problem = options_problem(settings)
    if problem is not None:
        raise StatsConfigError(problem)
    if settings.stats_source == "prometheus":
        assert settings.prometheus_url is not None
        selector = promql.check_selector(settings.prometheus_selector or "")
        return PrometheusSource(settings.prometheus_url, selector, settings.stats_timeout)
    if settings.supervisor_admin:
        return SupervisorSource(settings.supervisor_admin.rstrip("/"), settings.stats_timeout)
    return LocalSource(metrics, settings.stats_timeout)


def describe_settings(settings: Settings) -> dict[str, Any]:
    """Where a gateway started with these settings reads its statistics (no read)."""
    problem = options_problem(settings)
    if problem is not None:
        return {"kind": settings.stats_source, "url": None, "covers": f"invalid: {problem}"}
    if settings.stats_source == "prometheus":
        assert settings.prometheus_url is not None
        selector = promql.check_selector(settings.prometheus_selector or "")
        source: StatsSource = PrometheusSource(settings.prometheus_url, selector, 1.0)
    elif settings.workers > 1 or settings.supervisor_admin:
        source = SupervisorSource(settings.supervisor_admin, 1.0)
    else:
        source = LocalSource(GatewayMetrics())
    return source.view()

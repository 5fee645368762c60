"""Resolve registry targets continuously, and remember the last good answer.

Two layers of state, both owned by one `RegistryResolver` per gateway process:

- *Facts*: what the registry last said about each lookup (`NAME@ALIAS` or
  `NAME/VERSION`): the model version with its tags, when that was, and whether the
  latest lookup failed. A failed lookup (registry down, alias deleted) keeps the old
  fact and marks it stale: a registry blink must never fail a request.
- *Bindings*: each variant's target bound to endpoints (`binding.bind`). When a new
  fact cannot be bound (bad tags on the version an alias moved to), the variant keeps
  its last good binding and the problem is reported, again without failing requests.
- *Signatures* (routes with a `signature` block): each version's MLflow signature, read
  once per version off the request path. A version incompatible with its route's
  champion (`signatures.incompatibility`) is bound like a version with bad tags: the
  variant keeps its last compatible version, or with none is `Refused` (no traffic),
  unless the policy's `signature.allow_incompatible` names it.

Facts can be saved to a small JSON cache file, so a gateway restarted while the
registry is down still serves the versions it served before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.controlplane.registry.binding import (
    Binding,
    Need,
    Refused,
    Resolved,
    VariantKey,
    bind,
)
from gateway.controlplane.registry.client import (
    MlflowRegistry,
    ModelVersion,
    RegistryError,
    RegistryNotFound,
)
from gateway.controlplane.registry.signatures import (
    VersionFacts,
    fetch_signature,
    incompatibility,
)
from gateway.dataplane.signature import Signature
from gateway.observability.metrics import AliasGauge, GatewayMetrics

CACHE_FORMAT = 1
# A signature that could not be read is asked for again after this many seconds (one
# that was read never changes: model version artifacts are immutable).
SIGNATURE_RETRY = 60.0


@dataclass(frozen=True, slots=True)
class SignatureFact:
    """What reading one version's signature gave: the signature or why there is none."""

    signature: Signature | None
    problem: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Fact:
    """The registry's last good answer to one lookup, and how the latest one went."""

    found: ModelVersion | None  # None until a lookup has succeeded once
    ok_at: float = 0.0  # wall-clock time of the last successful lookup
    error: str | None = None  # the latest lookup's failure; None when it succeeded

    @property
    def stale(self) -> bool:
        """The registry could not confirm this fact on the latest lookup."""
        return self.error is not None


class RegistryResolver:
    """Looks registry targets up and binds them to endpoints, keeping the last good."""

    def __init__(
        self,
        registry: MlflowRegistry,
        metrics: GatewayMetrics,
        logger: logging.Logger,
        *,
        cache_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._metrics = metrics
        self._logger = logger
        self._clock = clock
        self._cache = Path(cache_path) if cache_path else None
        self._facts: dict[str, Fact] = self._load_cache()
        self._served: dict[tuple[VariantKey, str], Resolved] = {}  # (key, target) -> last good
        self._problems: dict[VariantKey, str] = {}
        self._needs: tuple[Need, ...] = ()
        self._poked = asyncio.Event()
        self._signatures: dict[tuple[str, str], SignatureFact] = {}  # (model, version)
        # Incompatible versions served because the policy allows them (admin view only:
        # traffic follows the alias, so neither a problem nor stale).
        self._allowed: dict[VariantKey, str] = {}

    # Looking up -----------------------------------------------------------------

    async def refresh(self, needs: Sequence[Need], *, only_missing: bool = False) -> bool:
        """Ask the registry about every lookup `needs` depend on, concurrently.

        `only_missing` asks only about lookups never answered (a policy reload must not
        wait on lookups the poll loop keeps fresh). Returns whether any fact changed.
        """
        wanted = {n.lookup: n for n in needs if not n.static}
        if only_missing:
            wanted = {k: n for k, n in wanted.items() if self._facts.get(k) is None}
        results = await asyncio.gather(*(self._lookup(n) for n in wanted.values()))
        changed = False
        for lookup, result in zip(wanted, results, strict=True):
            changed |= self._record(lookup, result)
        if changed:
            self._save_cache()
        changed |= await self._read_signatures(needs)
        return changed

    async def _read_signatures(self, needs: Sequence[Need]) -> bool:
        """Read the signature of every version a route with a `signature` block serves
        (or is about to), once per version; returns whether any was read."""
        now = self._clock()
        wanted: dict[tuple[str, str], None] = {}
        for need in needs:
            if not need.signatures:
                continue
            fact = self._facts.get(need.lookup)
            version = fact.found.version if fact is not None and fact.found else need.version
            if not version:
                continue
            known = self._signatures.get((need.model, version))
            if known is None or (known.problem and now - known.at >= SIGNATURE_RETRY):
                wanted[(need.model, version)] = None
        if not wanted:
            return False
        results = await asyncio.gather(
            *(fetch_signature(self.registry, model, version) for model, version in wanted)
        )
        changed = False
        for key, (signature, problem) in zip(wanted, results, strict=True):
            old = self._signatures.get(key)
            if problem is not None and (old is None or old.problem != problem):
                # Served all the same, unvalidated: an unreadable artifact must never
                # take a version out of traffic.
                self._logger.warning("registry: %s; served without signature checks", problem)
            self._signatures[key] = SignatureFact(signature, problem, now)
            changed |= old is None or old.signature != signature or old.problem != problem
        return changed

    def _with_signature(self, need: Need, resolved: Resolved) -> Resolved:
        if not need.signatures:
            return resolved
        fact = self._signatures.get((need.model, resolved.version))
        if fact is None:
            problem = f"{need.model} version {resolved.version}: signature not read yet"
            return dataclasses.replace(resolved, signature=None, signature_problem=problem)
        return dataclasses.replace(
            resolved, signature=fact.signature, signature_problem=fact.problem
        )

    async def _lookup(self, need: Need) -> ModelVersion | RegistryError:
        try:
            if need.alias is not None:
                found = await self.registry.get_alias(need.model, need.alias)
            else:
                found = await self.registry.get_version(need.model, need.version or "")
        except RegistryNotFound as exc:
            self._metrics.registry_lookups["not_found"] += 1
            return exc
        except RegistryError as exc:
            self._metrics.registry_lookups["error"] += 1
            return exc
        self._metrics.registry_lookups["ok"] += 1
        return found

    def _record(self, lookup: str, result: ModelVersion | RegistryError) -> bool:
        old = self._facts.get(lookup)
        if isinstance(result, ModelVersion):
            if old is not None and old.stale:
                self._logger.info(
                    "registry: %s answered again (version %s)", lookup, result.version
                )
            if old is None or old.found is None or old.found.version != result.version:
                before = old.found.version if old is not None and old.found else "unresolved"
                self._logger.info(
                    "registry: %s -> version %s (was %s)", lookup, result.version, before
                )
            self._facts[lookup] = Fact(result, self._clock())
            return old is None or old.found != result or old.stale
        kind = "not found" if isinstance(result, RegistryNotFound) else "failed"
        error = f"registry lookup of models:/{lookup} {kind}: {result}"
        if old is None or old.error != error:
            serving = (
                f"keeping version {old.found.version} (stale)"
                if old is not None and old.found is not None
                else "no resolution to fall back on"
            )
            self._logger.warning("%s; %s", error, serving)
        found, ok_at = (old.found, old.ok_at) if old is not None else (None, 0.0)
        self._facts[lookup] = Fact(found, ok_at, error)
        return old is None or old.error != error

    # Binding --------------------------------------------------------------------

    def bind(self, needs: Sequence[Need]) -> dict[VariantKey, Binding]:
        """Bind every need to endpoints from the facts, falling back to the last good.

        Updates the registry gauges; the result is what `compile_snapshot` takes.
        """
        out: dict[VariantKey, Binding] = {}
        problems: dict[VariantKey, str] = {}
        served: dict[tuple[VariantKey, str], Resolved] = {}
        for need in needs:
            fact = self._facts.get(need.lookup)
            found = fact.found if fact is not None else None
            result = bind(need, found)
            if isinstance(result, Resolved):
                result = self._with_signature(need, result)
            last = self._served.get((need.key, need.target))
            if isinstance(result, Resolved):
                served[(need.key, need.target)] = out[need.key] = result
                if fact is not None and fact.error and not need.static:
                    problems[need.key] = fact.error
                continue
            if found is None and fact is not None and fact.error:
                result = f"{fact.error}; no cached resolution"
            if result != self._problems.get(need.key):
                self._logger.error(
                    "registry target of %s/%s: %s%s",
                    need.route,
                    need.variant,
                    result,
                    f"; keeping version {last.version}" if last else "",
                )
            problems[need.key] = result
            if last is not None:
                served[(need.key, need.target)] = out[need.key] = last
            else:
                out[need.key] = result
        self._check_compatible(needs, out, served, problems)
        self._served, self._problems, self._needs = served, problems, tuple(needs)
        self._update_gauges()
        return out

    def _check_compatible(
        self,
        needs: Sequence[Need],
        out: dict[VariantKey, Binding],
        served: dict[tuple[VariantKey, str], Resolved],
        problems: dict[VariantKey, str],
    ) -> None:
        """Keep versions incompatible with their route's champion off the route: the
        variant keeps its last compatible version, else it is `Refused` (no traffic)."""
        champions: dict[str, VersionFacts] = {}
        self._allowed = {}
        for need in needs:
            found = out.get(need.key)
            if need.champion and isinstance(found, Resolved):
                champions[need.route] = _facts(need.model, found)
        for need in needs:
            found = out.get(need.key)
            champion = champions.get(need.route)
            if need.champion or champion is None or not isinstance(found, Resolved):
                continue
            why = incompatibility(_facts(need.model, found), champion)
            if why is None:
                continue
            name = need.variant.removeprefix("shadow:")
            if need.allow_incompatible:
                self._allowed[need.key] = f"{why}; served (signature.allow_incompatible)"
                continue
            reason = (
                f"{why}: not served on route {need.route!r} (list {name!r} in "
                "signature.allow_incompatible to allow it)"
            )
            last = self._served.get((need.key, need.target))
            if (
                last is not None
                and last.version != found.version
                and incompatibility(_facts(need.model, last), champion) is None
            ):
                served[(need.key, need.target)] = out[need.key] = last
                reason += f"; keeping version {last.version}"
            else:
                served.pop((need.key, need.target), None)
                out[need.key] = Refused(reason)
            if reason != self._problems.get(need.key):
                self._logger.error("registry target of %s/%s: %s", need.route, need.variant, reason)
            problems[need.key] = reason

    def _update_gauges(self) -> None:
        gauges: dict[tuple[str, str], AliasGauge] = {}
        routes: dict[str, int] = {}
        for need in self._needs:
            routes.setdefault(need.route, 0)
            if need.key in self._problems:
                routes[need.route] += 1
            if need.alias is None:
                continue
            fact = self._facts.get(need.lookup)
            gauge = gauges.setdefault(
                (need.model, need.alias), AliasGauge(need.model, need.alias, stale=False)
            )
            if fact is not None and fact.found is not None:
                gauge.version, gauge.resolved_at = fact.found.version, fact.ok_at
            # Stale: traffic may not follow the alias (lookup failing, or the version it
            # points at could not be bound and an older one keeps serving).
            gauge.stale = gauge.stale or fact is None or fact.stale or need.key in self._problems
        self._metrics.registry_aliases = gauges
        self._metrics.registry_problems = routes

    # Waiting --------------------------------------------------------------------

    def poke(self) -> None:
        """Ask for an immediate refresh (a registry webhook said an alias moved)."""
        self._poked.set()

    async def wait(self, interval: float) -> None:
        """Sleep until the next poll is due or `poke()` is called, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poked.wait(), interval)
        self._poked.clear()

    # Views ----------------------------------------------------------------------

    def view(self) -> dict[VariantKey, dict[str, Any]]:
        """Per variant: alias -> version -> endpoints, staleness and problem (admin API)."""
        out: dict[VariantKey, dict[str, Any]] = {}
        for need in self._needs:
            fact = self._facts.get(need.lookup)
            served = self._served.get((need.key, need.target))
            out[need.key] = {
                "target": need.target,
                "registry_version": fact.found.version if fact and fact.found else None,
                "version": served.version if served else None,
                "endpoints": list(served.endpoints) if served else [],
                "endpoints_from": served.source if served else None,
                "resolved_at": fact.ok_at if fact and fact.ok_at else None,
                "stale": fact is None or fact.stale or need.key in self._problems,
                "problem": self._problems.get(need.key),
            }
            if need.signatures:
                out[need.key].update(
                    semver=served.semver if served else None,
                    signature=served.signature.describe() if served and served.signature else None,
                    signature_problem=served.signature_problem if served else None,
                    champion=need.champion,
                    incompatible_allowed=self._allowed.get(need.key),
                )
        return out

    async def aclose(self) -> None:
        """Close the registry client."""
        await self.registry.aclose()

    # Cache ----------------------------------------------------------------------

    def _load_cache(self) -> dict[str, Fact]:
        if self._cache is None or not self._cache.exists():
            return {}
        try:
            data = json.loads(self._cache.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            facts = {
                lookup: Fact(
                    ModelVersion.from_json(entry["model_version"]),
                    float(entry["resolved_at"]),
                    "loaded from the cache; the registry has not answered yet",
                )
                for lookup, entry in data["lookups"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._logger.warning("registry cache %s ignored: %s", self._cache, exc)
            return {}
        self._logger.info("registry cache %s: %d lookup(s) loaded", self._cache, len(facts))
        return facts

    def _save_cache(self) -> None:
        if self._cache is None:
            return
        lookups = {
            lookup: {"model_version": fact.found.to_json(), "resolved_at": fact.ok_at}
            for lookup, fact in sorted(self._facts.items())
            if fact.found is not None
        }
        text = json.dumps({"format": CACHE_FORMAT, "lookups": lookups}, indent=1, sort_keys=True)
        # Write, then rename: a crash mid-write must not leave a cache that loads wrong.
        # The temporary name is per process, as worker processes may share one cache.
        tmp = self._cache.with_name(f"{self._cache.name}.{os.getpid()}.tmp")
        try:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self._cache)
        except OSError as exc:
            self._logger.warning("registry cache %s not written: %s", self._cache, exc)


def _facts(model: str, resolved: Resolved) -> VersionFacts:
    return VersionFacts(model, resolved.version, resolved.semver, resolved.signature)

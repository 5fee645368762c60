"""The feedback settings of a process: the fleet secret and the claims store.

- The secret: `SWITCHYARD_FLEET_SECRET` (the secret itself; keep it off argv) or
  `--fleet-secret-file PATH` (`SWITCHYARD_FLEET_SECRET_FILE`). None: a single process
  makes a random one at start; the supervisor of `--workers N` makes one and hands it
  to its workers in their environment, so each verifies the others' ids.
- The store: `--feedback-store` (`SWITCHYARD_FEEDBACK_STORE`): `memory`,
  `sqlite:PATH` or `redis://HOST:PORT/DB`. None: memory for one process,
  `sqlite:.state/feedback/claims.sqlite` under `--workers N`.

A Redis store without a configured secret is refused at start: every replica would
make its own, and none could verify another's ids. Neither the secret nor a store's
credentials are ever logged or shown.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.dataplane.feedback.claims import (
    ClaimsStore,
    MemoryClaims,
    RedisClaims,
    SqliteClaims,
    redacted,
)
from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.settings import Settings

WORKERS_STORE = "sqlite:.state/feedback/claims.sqlite"
MIN_SECRET_BYTES = 16
_REDIS_SCHEMES = ("redis://", "rediss://")

log = logging.getLogger("switchyard.feedback")


class FeedbackConfigError(Exception):
    """Feedback settings the gateway cannot start with."""


def fleet_secret(settings: Settings) -> tuple[bytes | None, str]:
    """The configured secret and where it came from; (None, "") when none is."""
    if settings.fleet_secret:
        secret, source = settings.fleet_secret.strip().encode(), "SWITCHYARD_FLEET_SECRET"
    elif settings.fleet_secret_file:
        path = settings.fleet_secret_file
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise FeedbackConfigError(
                f"cannot read the fleet secret file {path}: {exc.strerror or exc}"
            ) from None
        source = f"file {path}"
    else:
        return None, ""
    if len(secret) < MIN_SECRET_BYTES:
        raise FeedbackConfigError(
            f"the fleet secret from {source} is {len(secret)} bytes long; use at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | base64 > "
            "fleet-secret`)"
        )
    return secret, source


def check(settings: Settings) -> None:
    """Refuse settings no process could serve feedback correctly with."""
    spec = settings.feedback_store
    if spec is None or spec == "memory":
        return
    if spec.startswith(_REDIS_SCHEMES):
        if not settings.fleet_secret and not settings.fleet_secret_file:
            raise FeedbackConfigError(
                f"--feedback-store {shown(spec)} is shared by replicas, which must verify "
                "each other's feedback ids: give every replica the same secret with "
                "--fleet-secret-file PATH or SWITCHYARD_FLEET_SECRET"
            )
        return
    if spec.startswith("sqlite:") and spec[len("sqlite:") :]:
        return
    raise FeedbackConfigError(
        f"--feedback-store {spec!r}: expected memory, sqlite:PATH or redis://HOST:PORT/DB"
    )


def for_workers(settings: Settings) -> Settings:
    """The settings the supervisor hands its workers: one secret (made here unless
    configured) and, unless configured, a store the processes of this machine share."""
    check(settings)
    fleet_secret(settings)  # a bad secret file fails here, not in every worker
    source = "SWITCHYARD_FLEET_SECRET" if settings.fleet_secret else "--fleet-secret-file"
    if not settings.fleet_secret and not settings.fleet_secret_file:
        settings = replace(settings, fleet_secret=secrets.token_urlsafe(32))
        source = "one made by the supervisor for its workers"
    if settings.feedback_store is None:
        settings = replace(settings, feedback_store=WORKERS_STORE)
    log.info(
        "feedback: the workers sign ids with the fleet secret from %s and claim duplicates in %s",
        source,
        shown(settings.feedback_store or ""),
    )
    return settings


def shown(spec: str) -> str:
    """A store as logs and messages show it: a Redis URL without its credentials."""
    return redacted(spec) if spec.startswith(_REDIS_SCHEMES) else spec


def open_store(spec: str | None, window: float) -> ClaimsStore:
    if spec is None or spec == "memory":
        return MemoryClaims(window)
    if spec.startswith("sqlite:"):
        import sqlite3  # only for this store (see SqliteClaims)

        path = spec[len("sqlite:") :]
        try:
            return SqliteClaims(path)
        except (OSError, sqlite3.Error) as exc:  # a folder it cannot make, a bad file
            raise FeedbackConfigError(f"cannot open the feedback store {spec}: {exc}") from None
    try:
        return RedisClaims(spec)
    except ValueError as exc:
        raise FeedbackConfigError(f"--feedback-store {shown(spec)}: {exc}") from None


@dataclass(eq=False)
class FeedbackFleet:
    """One process's signer and claims store, and how to describe them."""

    ids: FeedbackIds
    claims: ClaimsStore
    secret_source: str  # where the secret came from, never the secret

    @classmethod
    def open(cls, settings: Settings) -> FeedbackFleet:
        check(settings)
        secret, source = fleet_secret(settings)
        if secret is None:
            secret, source = os.urandom(32), "generated at start (this process only)"
        return cls(
            FeedbackIds(secret),
            open_store(settings.feedback_store, settings.feedback_window),
            source,
        )

    @property
    def secret_kind(self) -> str:
        """env, file or generated: how the secret was given (a metric label)."""
        if self.secret_source.startswith("file "):
            return "file"
        return "env" if self.secret_source == "SWITCHYARD_FLEET_SECRET" else "generated"

    def describe(self) -> str:
        reach = {
            "memory": "this process",
            "sqlite": "the processes of this machine",
            "redis": "every replica using it",
        }[self.claims.kind]
        return (
            f"feedback: ids signed with the fleet secret from {self.secret_source}; "
            f"duplicates claimed in {self.claims.description} (shared by {reach})"
        )

    async def check_store(self) -> None:
        """Log whether a shared store answers now (serving starts either way)."""
        why = await self.claims.ping()
        if why:
            log.warning(
                "feedback store %s does not answer (%s): inference is served, and feedback "
                "is answered 503 until the store is back",
                self.claims.description,
                why,
            )

    async def aclose(self) -> None:
        await self.claims.aclose()

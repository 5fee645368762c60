"""The command-line options of quotas across a fleet, and the lease task they start."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.dataplane.auth import ApiKeys
from gateway.observability.quota_metrics import QuotaMetrics
from gateway.quota.sync import QuotaStoreError, QuotaSync, check
from gateway.settings import Settings


def add_quota_options(parser: argparse.ArgumentParser) -> None:
    quota = parser.add_argument_group(
        "quotas",
        "The rpm, tpm and budget limits of --api-keys across workers and replicas. Without "
        "a store each process enforces every limit itself.",
    )
    quota.add_argument(
        "--quota-store",
        metavar="URL",
        help="redis://HOST:PORT/DB every process takes its share of each limit from, in "
        "leases refilled off the request path (may be the --feedback-store Redis)",
    )
    quota.add_argument(
        "--quota-redis-down",
        choices=["open", "closed"],
        help="while the store is down: open (default) keeps each process to its lease plus "
        "an even share of what each limit had left; closed answers 503 once a request "
        "needs a new lease",
    )
    quota.add_argument(
        "--quota-sync-interval",
        type=float,
        metavar="S",
        help="seconds between lease batches (default 0.2)",
    )
    quota.add_argument(
        "--quota-processes",
        type=int,
        metavar="N",
        help="processes sharing the limits until the store has counted them (default: "
        "this replica's workers)",
    )


def quota_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "quota_store": getattr(args, "quota_store", None),
        "quota_redis_down": getattr(args, "quota_redis_down", None),
        "quota_sync_interval": getattr(args, "quota_sync_interval", None),
        "quota_processes": getattr(args, "quota_processes", None),
    }


def settings_problem(settings: Settings) -> str | None:
    try:
        check(settings.quota_store, settings.quota_redis_down)
    except QuotaStoreError as exc:
        return str(exc)
    if settings.quota_sync_interval <= 0 or settings.quota_timeout <= 0:
        return "--quota-sync-interval and SWITCHYARD_QUOTA_TIMEOUT must be positive"
    return None


def open_sync(settings: Settings, auth: ApiKeys | None, metrics: QuotaMetrics) -> QuotaSync | None:
    """The lease task of this process, when a store is configured and keys have limits
    to share (no network until it runs)."""
    if not settings.quota_store or auth is None:
        return None
    return QuotaSync(
        auth.quotas,
        metrics,
        settings.quota_store,
        mode=settings.quota_redis_down,
        interval=settings.quota_sync_interval,
        timeout=settings.quota_timeout,
        processes=settings.quota_processes or settings.workers,
    )

"""Build the rollout controller of one gateway process from its settings and parts."""

from __future__ import annotations

import logging

from gateway.controlplane.k8s.client import KubeAccess, identity
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.feedback import ExposureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.rollout.accuracy import worker_accuracy
from gateway.rollout.controller import RolloutController, WeightTarget
from gateway.rollout.writer import writer_lock
from gateway.settings import Settings
from gateway.stats.sources import build_source


def build_controller(
    settings: Settings,
    target: WeightTarget,
    metrics: GatewayMetrics,
    exposures: ExposureLog,
    kube: KubeAccess,
    *,
    resolver: RegistryResolver | None,
    logger: logging.Logger,
) -> RolloutController:
    """The controller of one gateway process, wired to its registry, its writer lock and
    its statistics source (StatsConfigError if the settings name one that cannot work)."""
    log = logger.getChild("rollout")
    return RolloutController(
        target,
        metrics.rollout,
        exposures,
        writer_lock(settings, kube, log),
        build_source(settings, metrics),
        state_dir=settings.rollout_dir,
        registry=resolver.registry if resolver is not None else None,
        poke=resolver.poke if resolver is not None else None,
        logger=log,
        identity=identity(),
        accuracy=worker_accuracy(metrics.drift),
    )

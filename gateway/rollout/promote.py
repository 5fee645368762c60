"""Promotion: the challenger's version becomes the champion alias in the registry.

The alias moves exactly as `switchyard registry promote` moves it (`move_alias`): the
version the alias left is recorded in the `switchyard.previous.<alias>` tag first, so
`switchyard registry rollback` undoes a promotion whoever made it.
"""

from __future__ import annotations

from typing import Any

from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.registry.cli import move_alias
from gateway.controlplane.registry.client import MlflowRegistry
from gateway.rollout.state import RolloutState


async def promote(
    registry: MlflowRegistry,
    target: str,
    alias: str,
    state: RolloutState,
    summary: dict[str, Any],
    now: float,
) -> RolloutState:
    """Point the challenger's model's `alias` at the rolled-out version; the promoted
    state (with its event). Raises `RegistryError` if the registry does not take it."""
    model = split_target(target)[0]
    previous = await move_alias(registry, model, alias, state.subject)
    return state.with_event(
        "promoted",
        now,
        f"{model}@{alias}: version {previous or 'none'} -> {state.subject}",
        status="promoted",
        promoted_to=alias,
        previous_champion=previous or "",
        details={**summary, "model": model, "alias": alias, "previous": previous},
    )

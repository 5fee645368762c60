"""What changed between two policy sets, as lines an SRE can review before a reload.

Variants are compared by name, not position, so `chat: variants[challenger].weight
10 -> 25` reads the way the change was meant. A change of variant *order* is reported on
its own line because it moves the bands of the weight line that sticky users hash onto.

`route_removals` decides which removed routes a reload may apply and which it must
hold (see `reload.py`); `switchyard policy diff` asks it too, so both say the same.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.controlplane.policy.loader import LoadedPolicy
from gateway.controlplane.policy.schema import RoutingPolicy


def diff_policies(
    old: Iterable[LoadedPolicy | RoutingPolicy], new: Iterable[LoadedPolicy | RoutingPolicy]
) -> list[str]:
    """Per-route differences, one line each; empty when the effective policies are equal."""
    before = _by_route(old)
    after = _by_route(new)
    lines: list[str] = []
    for route in sorted(before.keys() | after.keys()):
        if route not in after:
            lines.append(f"{route}: route removed")
        elif route not in before:
            names = ", ".join(v["name"] for v in after[route]["variants"])
            lines.append(f"{route}: route added (variants: {names})")
        else:
            lines.extend(
                f"{route}: {change}" for change in _route_changes(before[route], after[route])
            )
    return lines


ALL_ROUTES = "*"  # in a confirmation: every route the reload removes
HoldReason = Literal["empty", "removes_routes"]  # observability.metrics.RELOAD_HOLD_REASONS


@dataclass(frozen=True, slots=True)
class Removals:
    """The serving routes a new policy set drops, and which of them nobody asked to drop.

    A removal is asked for when the route is confirmed (by name or `*`), or when the
    file (or ConfigMap key) that defined it is gone. A route that merely vanished from
    a file still there is not: that is what a truncated, emptied or half-saved file
    looks like. A new set with no routes at all (`empty`) is held unless every route is
    confirmed by name or `*`: deleting files never takes the last route away.
    """

    removed: tuple[str, ...]
    unconfirmed: tuple[str, ...]
    empty: bool

    @property
    def reason(self) -> HoldReason | None:
        """Why a reload to the new set must be held; None when it may be applied."""
        if not self.unconfirmed:
            return None
        return "empty" if self.empty else "removes_routes"


def route_removals(
    old: Iterable[LoadedPolicy],
    new: Iterable[LoadedPolicy],
    *,
    file_kept: Callable[[str], bool] = lambda _file: True,
    confirmed: Collection[str] = (),
) -> Removals:
    """Which routes of `old` are missing from `new`, and which of those are unconfirmed.

    `file_kept(file)` says whether the file a policy came from (`PolicySource.file`)
    is still in the source; `confirmed` names routes that may go (`*`: all).
    """
    before = {p.policy.route: p.source.file for p in old}
    after = {p.policy.route for p in new}
    removed = tuple(sorted(before.keys() - after))
    empty = bool(before) and not after
    everything = ALL_ROUTES in confirmed
    unconfirmed = tuple(
        route
        for route in removed
        if not everything and route not in confirmed and (empty or file_kept(before[route]))
    )
    return Removals(removed, unconfirmed, empty)


def hold_message(removals: Removals) -> str:
    """Why a reload is held and how to apply it anyway, for logs, the admin API,
    Kubernetes Events and `switchyard policy diff`."""
    routes = ", ".join(removals.unconfirmed)
    if removals.empty:
        what = (
            "the new policies define no routes at all (an empty or comment-only file?), "
            f"which would remove every route ({routes})"
        )
        confirm = "*"
        also = ""
    else:
        count = len(removals.unconfirmed)
        what = f"the new policies would remove {count} serving route(s) ({routes})"
        confirm = ",".join(removals.unconfirmed)
        also = ", delete the file (or ConfigMap key) that defines the route,"
    return (
        f"{what}; the serving policies stay until it is confirmed: "
        f"POST /admin/reload?remove={confirm}{also} or annotate the ConfigMap "
        f"switchyard.io/remove-routes={confirm}"
    )


def _by_route(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        policy = p.policy if isinstance(p, LoadedPolicy) else p
        out[policy.route] = policy.model_dump(mode="json", by_alias=True)
    return out


def _route_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes: list[str] = []
    for key in old:
        if key == "variants":
            changes.extend(_variant_changes(old[key], new[key]))
        else:
            _diff(key, old[key], new[key], changes)
    return changes


def _variant_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    changes: list[str] = []
    before = {v["name"]: v for v in old}
    after = {v["name"]: v for v in new}
    for name, variant in before.items():
        if name not in after:
            changes.append(f"variants[{name}] removed")
            continue
        for key in variant:
            _diff(f"variants[{name}].{key}", variant[key], after[name][key], changes)
    for name, variant in after.items():
        if name not in before:
            changes.append(f"variants[{name}] added (weight {_show(variant['weight'])})")
    kept_old = [n for n in before if n in after]
    kept_new = [n for n in after if n in before]
    if kept_old != kept_new:
        changes.append(
            f"variant order {', '.join(kept_old)} -> {', '.join(kept_new)} "
            "(moves sticky users between variants)"
        )
    return changes


def _diff(path: str, old: Any, new: Any, out: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in (*old, *(k for k in new if k not in old)):
            if key not in new:
                out.append(f"{path}.{key} removed ({_show(old[key])})")
            elif key not in old:
                out.append(f"{path}.{key} added ({_show(new[key])})")
            else:
                _diff(f"{path}.{key}", old[key], new[key], out)
        return
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and any(isinstance(item, dict) for item in (*old, *new))
    ):
        # Lists of objects (overrides) are compared item by item.
        for i in range(max(len(old), len(new))):
            if i >= len(new):
                out.append(f"{path}[{i}] removed")
            elif i >= len(old):
                out.append(f"{path}[{i}] added")
            else:
                _diff(f"{path}[{i}]", old[i], new[i], out)
        return
    out.append(f"{path} {_show(old)} -> {_show(new)}")


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)

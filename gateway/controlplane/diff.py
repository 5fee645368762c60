"""What changed between two policy sets, as lines an SRE can review before a reload.

Variants are compared by name, not position, so `chat: variants[challenger].weight
10 -> 25` reads the way the change was meant. A change of variant *order* is reported on
its own line because it moves the bands of the weight line that sticky users hash onto.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.controlplane.loader import LoadedPolicy
from gateway.controlplane.schema import RoutingPolicy


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

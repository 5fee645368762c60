"""Per-route differences between two policy sets."""

from __future__ import annotations

from gateway.controlplane.policy.diff import diff_policies
from gateway.controlplane.policy.loader import LoadedPolicy, parse_policies

BASE = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: 10
    endpoints: [http://127.0.0.1:9102]
sticky: {hash_on: header:x-user-id}
overrides:
  - match: {header: {x-cohort: beta}}
    variant: challenger
timeouts: {total: 60s}
"""
EMBED = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: embed
variants: [{name: only, endpoints: ['http://127.0.0.1:9101']}]
"""


def load(*texts: str) -> list[LoadedPolicy]:
    out: list[LoadedPolicy] = []
    for text in texts:
        found, problems = parse_policies(text, "p.yaml")
        assert problems == []
        out.extend(found)
    return out


def test_identical_sets_have_no_changes() -> None:
    assert diff_policies(load(BASE, EMBED), load(EMBED, BASE)) == []
    # Spelling a duration differently is not a change.
    assert diff_policies(load(BASE), load(BASE.replace("total: 60s", "total: 1m"))) == []


def test_field_changes_name_variants_by_name() -> None:
    new = (
        BASE.replace("weight: 10", "weight: 25")
        .replace("total: 60s", "total: 2m")
        .replace("x-cohort: beta", "x-cohort: alpha")
        .replace(
            "    endpoints: [http://127.0.0.1:9102]", "    endpoints: [http://h:1, http://h:2]"
        )
        + "fallback: [champion]\nmax_body_bytes: 1024\n"
    )
    assert diff_policies(load(BASE), load(new)) == [
        "chat: variants[challenger].weight 10 -> 25",
        "chat: variants[challenger].endpoints [http://127.0.0.1:9102] -> [http://h:1, http://h:2]",
        "chat: overrides[0].match.header.x-cohort beta -> alpha",
        "chat: fallback [] -> [champion]",
        "chat: timeouts.total 60 -> 120",
        "chat: max_body_bytes unset -> 1024",
    ]


def test_routes_and_variants_added_removed_and_reordered() -> None:
    reordered = BASE.replace(
        """  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: 10
    endpoints: [http://127.0.0.1:9102]
""",
        """  - name: challenger
    weight: 10
    endpoints: [http://127.0.0.1:9102]
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: canary
    weight: 5
    endpoints: [http://127.0.0.1:9103]
""",
    ).replace("sticky: {hash_on: header:x-user-id}\n", "")
    assert diff_policies(load(BASE, EMBED), load(reordered)) == [
        "chat: variants[canary] added (weight 5)",
        "chat: variant order champion, challenger -> challenger, champion "
        "(moves sticky users between variants)",
        "chat: sticky {hash_on: header:x-user-id} -> unset",
        "embed: route removed",
    ]
    assert diff_policies(load(BASE), load(BASE, EMBED)) == ["embed: route added (variants: only)"]
    dropped = BASE.replace(
        "  - name: challenger\n    weight: 10\n    endpoints: [http://127.0.0.1:9102]\n", ""
    ).replace("overrides:\n  - match: {header: {x-cohort: beta}}\n    variant: challenger\n", "")
    assert diff_policies(load(BASE), load(dropped)) == [
        "chat: variants[challenger] removed",
        "chat: overrides[0] removed",
    ]

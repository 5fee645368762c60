"""The README is a user's guide: its references must match the code."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.controlplane.reference import END, START, render_markdown
from gateway.observability.metrics import GatewayMetrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_policy_reference_is_generated_from_the_schema() -> None:
    start = README.index(START)
    end = README.index(END) + len(END)
    assert README[start:end] + "\n" == render_markdown(), (
        "README policy reference is stale: paste `switchyard policy schema --markdown`"
    )


def test_every_metric_is_documented() -> None:
    text = generate_latest(GatewayMetrics().registry()).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    assert len(names) >= 15
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"metrics missing from the README's metrics reference: {missing}"


def test_two_command_quick_start() -> None:
    assert "make run" in README
    assert "make test" in README

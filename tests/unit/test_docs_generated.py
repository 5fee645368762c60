"""The docs' figures and references are generated, never typed: they cannot go stale.

docs/gen.py renders docs/_generated/ from the results files in loadtests/results/, the
policy models and the declared metrics; these tests regenerate it and compare, check
that the metrics reference covers every metric the code declares, and that the
hand-written pages quote no measurement of their own.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = DOCS / "_generated"


def _load_gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen", DOCS / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_gen"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_gen()


def test_committed_snippets_match_the_generator(tmp_path: Path) -> None:
    assert gen.main(["--out", str(tmp_path)]) == 0
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in GENERATED.glob("*.md")}
    assert sorted(committed) == sorted(fresh), "docs/_generated/ has missing or extra files"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale or hand-edited docs/_generated/{stale}: run `make docs`"


def test_every_snippet_is_included_by_a_page() -> None:
    pages = "".join(p.read_text() for p in DOCS.rglob("*.md") if GENERATED not in p.parents)
    unused = [name for name in gen.GENERATORS if f'--8<-- "{name}"' not in pages]
    assert not unused, f"generated but shown on no page: {unused}"


def _declared_in_source() -> set[str]:
    """Metric names as the code spells them, found independently of the generator."""
    names: set[str] = set()
    family = re.compile(r'(Counter|Gauge|Histogram|Info)MetricFamily\(\s*"(switchyard_\w+)"')
    for path in (ROOT / "gateway").rglob("*.py"):
        text = path.read_text()
        for kind, name in family.findall(text):
            names.add(name + {"Counter": "_total", "Info": "_info"}.get(kind, ""))
        names.update(re.findall(r"# TYPE (switchyard_\w+) ", text))
    return names


def test_metrics_reference_covers_every_declared_metric() -> None:
    declared = _declared_in_source()
    assert len(declared) >= 70
    reference = (GENERATED / "metrics-reference.md").read_text()
    missing = sorted(n for n in declared if f"`{n}`" not in reference)
    assert not missing, f"metrics missing from the metrics reference: {missing}"
    # And the generator's own view of the code agrees with the source scan.
    assert {m.name for m in gen.declared_metrics()} == declared


def test_policy_reference_is_the_schema_renderer() -> None:
    from gateway.controlplane.policy.reference import render_markdown

    assert render_markdown() in (GENERATED / "policy-reference.md").read_text()


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({"git_commit": "db16558791c5", "dirty": True}, "commit `db16558` (uncommitted changes)"),
        ({"git_commit": "db16558791c5", "dirty": False}, "commit `db16558`"),
        ({"git_commit": "db16558791c5+dirty"}, "commit `db16558` (uncommitted changes)"),
        ({"git_commit": "db16558791c5"}, "commit `db16558` (tree state not recorded)"),
        ({"git_commit": "unknown", "dirty": None}, "commit not recorded"),
        ({}, "commit not recorded"),
    ],
)
def test_commit_says_when_the_tree_was_dirty(machine: dict[str, object], expected: str) -> None:
    assert gen.commit_text(machine) == expected


def test_litellm_ratio_is_from_one_run() -> None:
    # The ratio must be the same-run figure the file records, not one run's gateway
    # divided by another run's LiteLLM.
    import json

    # `make bench` measures LiteLLM in the main run; a separate `--litellm` run's file
    # is the fallback when the main run has no LiteLLM row.
    main = json.loads((ROOT / "loadtests/results/bench-latest.json").read_text())
    name = "bench-latest.json" if "litellm" in main["systems"] else "bench-litellm-latest.json"
    result = json.loads((ROOT / "loadtests/results" / name).read_text())
    ratio = result["ratios"]["gateway_vs_litellm_rps"]
    assert "litellm" in result["systems"]
    assert f"**{ratio:,.0f}x**" in gen.bench_litellm()
    assert f"{ratio:,.0f}x" in gen.bench_targets()


# A measurement typed into a page: a number with a unit of time, size or rate, or a
# ratio like "2.7x". Durations in seconds and sizes in KiB/MiB are settings, not this.
MEASUREMENT = re.compile(r"\d[\d,.]*\s?(?:us|µs|ms|MB|GB|req/s)\b|\b\d+(?:\.\d+)?x\b")


def _prose(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks: commands, YAML
    return re.sub(r"`[^`\n]*`", "", text)  # code spans: option values like `500ms`


def test_hand_written_pages_quote_no_measurement() -> None:
    pages = [ROOT / "README.md", *(p for p in DOCS.rglob("*.md") if GENERATED not in p.parents)]
    found = {str(p.relative_to(ROOT)): MEASUREMENT.findall(_prose(p.read_text())) for p in pages}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"measurements typed by hand (include a generated snippet): {found}"


def test_measurement_check_catches_a_typed_figure() -> None:
    # The check above must be able to fail.
    assert MEASUREMENT.findall(_prose("the gateway adds +0.12 ms at 22,410 req/s, 2.7x"))

"""The `drift` block of a policy: schema, cross-field checks and file roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.controlplane.policy.compile import load_checked
from gateway.controlplane.policy.loader import PolicyError, parse_policies

HEAD = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: {protocol}
variants:
  - {{name: champion, endpoints: ["http://127.0.0.1:9"]}}
"""


def write(tmp_path: Path, drift: str, protocol: str = "openai") -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    path = folder / "p.yaml"
    path.write_text(HEAD.format(protocol=protocol) + drift)
    return path


def problems(path: Path, roots: tuple[str, ...] = ()) -> list[str]:
    try:
        load_checked(path, file_roots=roots)
    except PolicyError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_a_full_drift_block_validates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """drift:
  reference: ref/train.parquet
  features:
    - {descriptor: prompt_chars}
    - {path: temperature, name: temp}
  sample: 0.25
  window: {size: 5000, duration: 10m, every: 60s, min_samples: 200}
  drift_share: 0.3
  method: psi
  methods: {prompt_chars: wasserstein}
  threshold: 0.2
  cooldown: 1h
  clear_after: 3
  on_drift:
    save_to: windows/
    kubeflow:
      endpoint: https://kfp.example/pipeline
      pipeline_id: p
      pipeline_version_id: v
      experiment_id: e
      params: {epochs: 3}
      token_env: KFP_TOKEN
      retries: {attempts: 5, backoff: 500ms, timeout: 5s}
    webhook: {url: "http://alerts:9093/hook", secret_env: HOOK_SECRET}
""",
    )
    [loaded] = load_checked(path)
    drift = loaded.policy.drift
    assert drift is not None
    assert drift.window.duration == 600.0 and drift.cooldown == 3600.0
    assert [f.column for f in drift.features] == ["prompt_chars", "temp"]
    assert drift.on_drift.kubeflow is not None
    assert drift.on_drift.kubeflow.retries.backoff == 0.5


@pytest.mark.parametrize(
    ("drift", "protocol", "expected"),
    [
        ("drift: {reference: r.csv, windw: {}}", "openai", "unknown field 'windw'"),
        ("drift: {reference: r.csv, method: fancy}", "openai", "drift.method"),
        ("drift: {reference: r.txt}", "openai", "must be .parquet, .pq or .csv"),
        ("drift: {reference: r.csv, sample: 0}", "openai", "drift.sample"),
        (
            "drift: {reference: r.csv, features: [{descriptor: prompt_chars}]}",
            "kserve-v2",
            "text descriptors need an openai or ollama route",
        ),
        (
            "drift: {reference: r.csv, features: [{tensor: x, index: 0}]}",
            "json",
            "tensor features need a kserve-v2 route",
        ),
        (
            "drift: {reference: r.csv, features: [{tensor: x}]}",
            "kserve-v2",
            "`tensor` and `index` go together",
        ),
        (
            "drift: {reference: r.csv, features: [{path: a, descriptor: prompt_chars}]}",
            "openai",
            "exactly one of descriptor, path or tensor",
        ),
        (
            "drift: {reference: r.csv, features: [{path: a}], methods: {b: ks}}",
            "json",
            "no feature column 'b'",
        ),
        ("drift: {reference: 'models:/x@'}", "json", "invalid registry target"),
        ("drift: {reference: r.csv, features: [{path: 'a..b'}]}", "json", "simple JSON path"),
        (
            "drift: {reference: r.csv, on_drift: {kubeflow: {endpoint: 'ftp://x', "
            "pipeline_id: p, pipeline_version_id: v}}}",
            "json",
            "http:// or https://",
        ),
        (
            "drift: {reference: r.csv, on_drift: {webhook: {url: 'http://h', secret_env: '1x'}}}",
            "json",
            "not an environment variable name",
        ),
    ],
)
def test_bad_drift_blocks_are_rejected(
    tmp_path: Path, drift: str, protocol: str, expected: str
) -> None:
    found = problems(write(tmp_path, drift, protocol))
    assert any(expected in p for p in found), found


def test_local_files_must_stay_inside_the_policy_folder_or_a_root(tmp_path: Path) -> None:
    escaping = write(tmp_path, "drift: {reference: ../../etc/ref.csv}")
    found = problems(escaping)
    assert len(found) == 1 and "outside the allowed roots" in found[0]
    assert "drift.reference" in found[0] and ":7:" in found[0]  # file:line:col of the field
    absolute = write(tmp_path, f"drift: {{reference: {tmp_path / 'data' / 'ref.csv'}}}")
    assert problems(absolute) and not problems(absolute, (str(tmp_path / "data"),))
    save = write(tmp_path, "drift: {reference: ok.csv, on_drift: {save_to: 'file:///var/tmp/w'}}")
    assert any("drift.on_drift.save_to" in p for p in problems(save))
    link = tmp_path / "policies" / "link"
    link.symlink_to("/etc")
    through_link = write(tmp_path, "drift: {reference: link/ref.csv}")
    assert problems(through_link), "a symlink must not lead out of the root"
    inside = write(tmp_path, "drift: {reference: ./data/../ref.csv}")
    assert not problems(inside)
    remote = write(tmp_path, "drift: {reference: 's3://bucket/ref.parquet'}")
    assert not problems(remote)


def test_configmap_entries_resolve_against_the_configmap_folder(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\ndata:\n  p.yaml: |\n" + "".join(
        "    " + line + "\n"
        for line in (HEAD.format(protocol="openai") + "drift: {reference: ../x.csv}").splitlines()
    )
    _, found = parse_policies(text, str(tmp_path / "cm.yaml"))
    assert not found
    path = tmp_path / "cm.yaml"
    path.write_text(text)
    assert any("outside the allowed roots" in p for p in problems(path))


POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_the_shipped_drift_policies_validate() -> None:
    [support] = load_checked(POLICIES / "drift")
    assert support.policy.drift is not None
    assert (POLICIES / "drift" / support.policy.drift.reference).is_file()
    [fraud] = load_checked(POLICIES / "examples" / "kserve-fraud.yaml")
    assert fraud.policy.drift is not None and len(fraud.policy.drift.features) == 3

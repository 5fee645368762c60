"""The loader of the mypyc-compiled request path: used only when it matches the source.

`make test` runs the suite twice: with SWITCHYARD_COMPILED=require (the compiled
modules must be the ones imported) and with SWITCHYARD_COMPILED=0 (the Python ones).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
from pathlib import Path

import pytest

import gateway
from gateway.dataplane import exchange
from gateway.native.loader import (
    HOT_MODULES,
    MANIFEST,
    OUTPUT_DIR,
    SHARED,
    STALE,
    CompiledStatus,
    check,
    compiled_path,
    install,
    source_digest,
)

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _fake_build(directory: Path, **changes: object) -> Path:
    """A manifest as `switchyard compile` writes it, over empty files (never imported)."""
    modules = {name: str(compiled_path(name, SUFFIX)) for name in (*HOT_MODULES, SHARED)}
    for rel in modules.values():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(b"")
    manifest = {"digest": source_digest(), "suffix": SUFFIX, "modules": modules, **changes}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_a_build_matching_the_sources_is_used(tmp_path: Path) -> None:
    files, reason = check(_fake_build(tmp_path))
    assert files is not None, reason
    assert set(files) == {*HOT_MODULES, SHARED}
    assert files["gateway.dataplane.exchange"] == (
        tmp_path / "gateway" / "dataplane" / f"exchange{SUFFIX}"
    )


def test_no_build_says_how_to_make_one(tmp_path: Path) -> None:
    files, reason = check(tmp_path)
    assert files is None
    assert "switchyard compile" in reason


def test_edited_sources_fall_back_to_python(tmp_path: Path) -> None:
    files, reason = check(_fake_build(tmp_path, digest="0" * 64))
    assert files is None
    assert reason == "sources changed since `switchyard compile`; run it again"
    assert CompiledStatus(False, reason).stale


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    files, reason = check(_fake_build(tmp_path, suffix=".cpython-39-x86_64-linux-gnu.so"))
    assert files is None
    assert "another Python" in reason


def test_a_build_of_another_module_list_is_not_used(tmp_path: Path) -> None:
    directory = _fake_build(tmp_path)
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["modules"]["gateway.dataplane.pick"]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    files, reason = check(directory)
    assert files is None
    assert "module list" in reason


def test_missing_files_and_broken_manifests_are_reported(tmp_path: Path) -> None:
    directory = _fake_build(tmp_path / "a")
    (directory / "gateway" / "dataplane" / "http" / f"server{SUFFIX}").unlink()
    files, reason = check(directory)
    assert files is None
    assert f"server{SUFFIX}" in reason
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / MANIFEST).write_text("{not json")
    files, reason = check(broken)
    assert files is None
    assert reason.startswith("unreadable manifest")


def test_the_modules_imported_are_the_ones_the_environment_asks_for() -> None:
    mode = os.environ.get("SWITCHYARD_COMPILED", "auto")
    origins = {name: importlib.import_module(name).__file__ or "" for name in HOT_MODULES}
    if mode == "require":
        assert gateway.COMPILED.active, gateway.COMPILED.reason
        assert all(o.startswith(str(OUTPUT_DIR)) and o.endswith(SUFFIX) for o in origins.values())
    elif mode == "0":
        assert not gateway.COMPILED.active
        assert gateway.COMPILED.reason == "SWITCHYARD_COMPILED=0"
        assert all(o.endswith(".py") for o in origins.values()), origins
    else:
        # `auto`: either is right, as long as what was imported is what the process
        # reports (the build_info metric and the startup line read `COMPILED`).
        compiled = [o.startswith(str(OUTPUT_DIR)) and o.endswith(SUFFIX) for o in origins.values()]
        assert all(compiled) if gateway.COMPILED.active else not any(compiled), origins


@pytest.mark.parametrize(
    ("head", "named"),
    [
        # No Connection line: the search for one finds nothing and slices backwards
        # (start > end), which mypyc's runtime turned into a SystemError until
        # `switchyard compile` patched it; Python gives b"".
        (b"\nx-request-id: 1\r\n", frozenset()),
        (b"\nconnection: keep-alive\r\nx-request-id: 1\r\n", frozenset()),
        (b"\nconnection: close, x-trace\r\nx-trace: 1\r\n", frozenset({b"x-trace"})),
    ],
)
def test_backwards_bytes_slices_behave_as_in_python(head: bytes, named: frozenset[bytes]) -> None:
    assert exchange._nominated(head) == named


def test_the_mode_comes_from_the_environment_variable(tmp_path: Path) -> None:
    # The hot modules are imported by now, so no finder goes in; the mode still counts.
    required = install(tmp_path, "require")
    assert required.required
    assert not required.active
    assert required.reason.startswith("imported before the finder")
    off = install(tmp_path, "0")
    assert (off.active, off.required, off.reason) == (False, False, "SWITCHYARD_COMPILED=0")


def test_serve_refuses_to_start_on_python_when_compiled_is_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway import app
    from gateway.settings import Settings

    monkeypatch.setattr(app, "COMPILED", CompiledStatus(False, STALE, required=True))
    assert app.run_gateway(Settings()) == 2
    err = capsys.readouterr().err
    assert "SWITCHYARD_COMPILED=require" in err
    assert STALE in err

"""`switchyard compile`: only a missing toolchain may fall back to the Python path.

`make compile` runs `switchyard compile --if-possible`. A machine without mypyc, a C
compiler or the Python headers gets a warning and exit 0 (the gateway runs the same
code interpreted). A machine that has them and whose build fails gets an error and
exit 1: otherwise `make test` would run both of its passes on the Python path and pass.
The toolchain is pointed at through the command's own seams (environment, headers
directory, modules and root to build), never patched.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.native.build import missing_toolchain, run_compile


def compile_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["compile", *flags])


def program(path: Path) -> Path:
    """An executable that exists (what the detection looks for); it is never run."""
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def toolchain(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A present toolchain as the detection sees it: $CC names an existing program
    (with arguments, as CC often has), the headers directory holds Python.h."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cc = program(bin_dir / "cc")
    include = tmp_path / "include"
    include.mkdir()
    (include / "Python.h").write_text("")
    return {**os.environ, "CC": f"{cc} -O2"}, include


def test_a_failed_build_with_the_toolchain_present_is_an_error_even_if_possible(
    tmp_path: Path, toolchain: tuple[dict[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env, include = toolchain
    assert missing_toolchain(env, include) is None
    # A module mypyc rejects: the build fails in mypy, before any C is compiled.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "bad.py").write_text('count: int = "three"\n')
    output = tmp_path / "out" / "_compiled"
    args = compile_args("--if-possible")
    code = run_compile(
        args, output=output, env=env, include_dir=include, modules=("pkg.bad",), root=tmp_path
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "mypyc build failed" in err and "Incompatible types in assignment" in err
    assert "the toolchain is present, so this is an error" in err
    assert "pure-Python" not in err
    assert not output.exists()


@pytest.mark.parametrize("where", ["CC names no program", "no cc on PATH"])
def test_no_c_compiler_falls_back_to_python_only_if_possible(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    if where == "CC names no program":
        env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    else:
        env = {k: v for k, v in os.environ.items() if k != "CC"} | {"PATH": str(empty)}
    output = tmp_path / "_compiled"

    code = run_compile(compile_args("--if-possible"), output=output, env=env)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no C compiler" in err
    assert "the gateway will run its pure-Python code" in err
    assert not output.exists()

    assert run_compile(compile_args(), output=output, env=env) == 1
    assert "no C compiler" in capsys.readouterr().err


def test_missing_python_headers_fall_back_too(
    tmp_path: Path, toolchain: tuple[dict[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env, _ = toolchain
    no_headers = tmp_path / "no-headers"
    no_headers.mkdir()
    assert run_compile(compile_args("--if-possible"), env=env, include_dir=no_headers) == 0
    assert "no Python headers" in capsys.readouterr().err


def test_toolchain_says_whether_this_machine_can_compile(
    tmp_path: Path, toolchain: tuple[dict[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env, include = toolchain
    assert run_compile(compile_args("--toolchain"), env=env, include_dir=include) == 0
    assert "mypyc, a C compiler and the Python headers" in capsys.readouterr().out
    gone = {**env, "CC": str(tmp_path / "gone")}
    assert run_compile(compile_args("--toolchain"), env=gone, include_dir=include) == 1
    assert "no C compiler: $CC" in capsys.readouterr().out

"""Read policy files into validated `RoutingPolicy` objects, or into precise problems.

An SRE fixing a policy at 3 a.m. needs every mistake at once, each with file, line and
field, so nothing here stops at the first error: YAML syntax errors, duplicate keys and
pydantic errors of every document are collected, and pydantic's error locations are
mapped back to YAML positions by walking the composed node tree.

Accepted inputs: a file (one or more `---` documents, each a policy), a directory (its
`*.yaml` / `*.yml` files, not recursive, hidden files skipped, as Kubernetes mounts a
ConfigMap), or a Kubernetes ConfigMap manifest whose `data` values are policy files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.controlplane.policy.schema import KIND, RoutingPolicy, fields_at

POLICY_SUFFIXES = (".yaml", ".yml")
# A policy holds hundreds of values, a few levels deep; YAML aliases could expand one
# without bound (see _shape_problem), so documents past these are refused, not walked.
MAX_VALUES = 100_000
MAX_DEPTH = 64
PathsArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
Loc = tuple[str | int, ...]


class _PolicyYAMLLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans.

    YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, which would turn the
    `retries.on` key into `True`; only true/false are booleans here.
    """


_PolicyYAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy, located as precisely as the input allows."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    field_path: str  # like variants[1].weight; "" for the document or file itself
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        if self.field_path:
            return f"{where}: {self.field_path}: {self.message}"
        return f"{where}: {self.message}"


class PolicyError(Exception):
    """Policies that cannot be served; `.problems` lists every problem found."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid policy")


def field_path(loc: Loc) -> str:
    """Render a location like `variants[1].weight`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where a policy document came from, able to locate any field inside it."""

    file: str  # display name: a path, or `cm.yaml:data[chat.yaml]` for a ConfigMap entry
    document: int  # 0-based index of the document within the file
    node: yaml.Node | None = field(default=None, compare=False, repr=False)

    def locate(self, loc: Loc) -> tuple[int, int]:
        """1-based (line, column) of the deepest node along `loc`; (0, 0) if unknown."""
        node = self.node
        if node is None:
            return 0, 0
        mark = node.start_mark
        for part in loc:
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        # The key is where a field "is"; its value may start lines later.
                        mark, child = key.start_mark, value
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
                mark = child.start_mark
            if child is None:
                break
            node = child
        return mark.line + 1, mark.column + 1

    def problem(self, loc: Loc, message: str) -> PolicyProblem:
        """A problem at `loc` within this document."""
        line, column = self.locate(loc)
        return PolicyProblem(self.file, line, column, field_path(loc), message)

    def where(self) -> str:
        """`file:line` of the document's start, naming it unambiguously in messages."""
        line, _ = self.locate(())
        return f"{self.file}:{line}" if line else self.file


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy and where it came from."""

    policy: RoutingPolicy
    source: PolicySource


def policy_files(paths: PathsArg) -> list[Path]:
    """The files a set of paths stands for; missing paths are kept (loading reports them)."""
    out: list[Path] = []
    for path in _as_paths(paths):
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
                )
            )
        else:
            out.append(path)
    return out


def collect_policies(paths: PathsArg) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
    """Every valid policy under `paths`, and every problem with the others."""
    policies: list[LoadedPolicy] = []
    problems: list[PolicyProblem] = []
    for path in _as_paths(paths):
        if path.is_dir() and not policy_files(path):
            problems.append(PolicyProblem(str(path), 0, 0, "", "no *.yaml or *.yml files"))
    for path in policy_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(PolicyProblem(str(path), 0, 0, "", "no such file or directory"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(str(path), 0, 0, "", f"cannot read: {exc}"))
            continue
        found, bad = parse_policies(text, str(path))
        policies.extend(found)
        problems.extend(bad)
    return policies, problems


def load_policies(paths: PathsArg) -> list[LoadedPolicy]:
    """Every policy under `paths`; raises `PolicyError` listing all problems."""
    policies, problems = collect_policies(paths)
    if problems:
        raise PolicyError(problems)
    return policies


def parse_policies(
    text: str, file: str, *, allow_configmap: bool = True
) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
    """Policies in one file's text (`file` is the name used in problems)."""
    policies: list[LoadedPolicy] = []
    problems: list[PolicyProblem] = []
    for index, node, data in _documents(text, file, problems):
        source = PolicySource(file, index, node)
        if data is None:  # an empty document, e.g. after a trailing `---`
            continue
        shape = _shape_problem(node)
        if shape is not None:
            problems.append(source.problem((), shape))
            continue
        duplicates = _duplicate_keys(node, (), source)
        problems.extend(duplicates)
        if isinstance(data, dict) and data.get("kind") == "ConfigMap" and allow_configmap:
            found, bad = _configmap(data, source)
            policies.extend(found)
            problems.extend(bad)
            continue
        policy, bad = _validate(data, source)
        problems.extend(bad)
        if policy is not None and not duplicates:
            policies.append(LoadedPolicy(policy, source))
    problems.sort(key=lambda p: (p.file, p.line, p.column))
    return policies, problems


def _as_paths(paths: PathsArg) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _documents(
    text: str, file: str, problems: list[PolicyProblem]
) -> Iterator[tuple[int, yaml.Node, Any]]:
    index = 0
    loader: _PolicyYAMLLoader | None = None
    try:
        loader = _PolicyYAMLLoader(text)  # its reader refuses control characters at once
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield index, node, loader.construct_document(node)
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = ": ".join(str(m) for m in (exc.context, exc.problem) if m) or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problems.append(PolicyProblem(file, line, column, "", f"YAML syntax error: {message}"))
    except yaml.YAMLError as exc:
        problems.append(PolicyProblem(file, 0, 0, "", f"YAML error: {exc}"))
    except RecursionError:  # PyYAML composes nested collections recursively
        problems.append(
            PolicyProblem(file, 0, 0, "", f"YAML nested too deeply (policies allow {MAX_DEPTH})")
        )
    finally:
        if loader is not None:
            loader.dispose()


def _shape_problem(root: yaml.Node) -> str | None:
    """Why a document is too big to walk, or None.

    Aliases make a YAML graph, not a tree: `&a [*a]` refers to itself, and ten levels of
    ten aliases each expand to 10^10 values (the billion laughs), which the duplicate
    key walk and validation would expand. Counted iteratively, each node once.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded values, depth)
    expanding: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            expanding.discard(key)
            size = 1 + sum(sizes[id(c)][0] for c in children)
            depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
            if size > MAX_VALUES:
                return f"the document expands to more than {MAX_VALUES} values (YAML aliases)"
            if depth > MAX_DEPTH:
                return f"the document is nested deeper than {MAX_DEPTH} levels"
            sizes[key] = (size, depth)
            continue
        if key in sizes:
            continue
        if key in expanding:
            return "a YAML alias refers to the collection it is in (a recursive document)"
        expanding.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _duplicate_keys(node: yaml.Node, loc: Loc, source: PolicySource) -> list[PolicyProblem]:
    # PyYAML keeps the last of duplicate keys silently; in a policy that hides a typo.
    out: list[PolicyProblem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in first:
                out.append(
                    PolicyProblem(
                        source.file,
                        key.start_mark.line + 1,
                        key.start_mark.column + 1,
                        field_path((*loc, key.value)),
                        f"duplicate key (first at line {first[key.value]})",
                    )
                )
            else:
                first[key.value] = key.start_mark.line + 1
            out.extend(_duplicate_keys(value, (*loc, key.value), source))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.extend(_duplicate_keys(item, (*loc, i), source))
    return out


def _validate(data: Any, source: PolicySource) -> tuple[RoutingPolicy | None, list[PolicyProblem]]:
    if not isinstance(data, dict):
        message = "a policy document must be a mapping (apiVersion, kind, route, variants, ...)"
        return None, [source.problem((), message)]
    kind = data.get("kind")
    if "kind" in data and kind != KIND:
        # Another kind of manifest: its fields are not worth listing one by one.
        message = f"expected kind {KIND} (or a ConfigMap holding policies), got {kind!r}"
        return None, [source.problem(("kind",), message)]
    try:
        return RoutingPolicy.model_validate(data), []
    except ValidationError as exc:
        return None, _from_validation(exc, source)


def _from_validation(exc: ValidationError, source: PolicySource) -> list[PolicyProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = _unknown_field(loc)
        problems.append(source.problem(loc, message))
    return problems


def _unknown_field(loc: Loc) -> str:
    import difflib  # for a misspelt field only: not kept by every serving process

    name = str(loc[-1])
    known = fields_at(loc[:-1])
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    if known:
        return f"unknown field {name!r} (allowed: {', '.join(known)})"
    return f"unknown field {name!r}"


def _configmap(
    data: dict[str, Any], source: PolicySource
) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
    entries = data.get("data")
    if not isinstance(entries, dict) or not entries:
        return [], [source.problem(("data",), "a ConfigMap of policies needs a `data` mapping")]
    return configmap_policies(entries, source.file, source)


def configmap_policies(
    entries: Mapping[str, Any], file: str, source: PolicySource | None = None
) -> tuple[list[LoadedPolicy], list[PolicyProblem]]:
    """Policies in a ConfigMap's `data`: each *.yaml / *.yml key is one policy file.

    Shared by ConfigMap manifests on disk and ConfigMaps read from the Kubernetes API
    (`file` names the ConfigMap in problems; `source` locates keys in a manifest).
    """
    where = source or PolicySource(file, 0)
    policies: list[LoadedPolicy] = []
    problems: list[PolicyProblem] = []
    found_any = False
    # Sorted like the files Kubernetes mounts, so both forms load in the same order.
    for key in sorted(entries, key=str):
        if not str(key).endswith(POLICY_SUFFIXES):
            continue
        found_any = True
        value = entries[key]
        if not isinstance(value, str):
            problems.append(where.problem(("data", key), "expected the policy file as a string"))
            continue
        # Line numbers inside an entry count from the entry's first line.
        found, bad = parse_policies(value, f"{file}:data[{key}]", allow_configmap=False)
        policies.extend(found)
        problems.extend(bad)
    if not found_any:
        problems.append(where.problem(("data",), "no *.yaml or *.yml keys in the ConfigMap"))
    return policies, problems

"""Where rollout state lives: registered-model tags in the registry, or a local file.

With a registry, each rollout's state is one tag on the challenger's registered model,
`switchyard.rollout.<route>` (JSON), next to the aliases it moves: a restarted gateway,
another replica or an operator's CLI all read the same record. Operator commands
(pause, resume, abort) that reach a replica which is not the writer are left in a
second tag, `switchyard.rollout.<route>.command`, for the writer to apply: only the
writer ever writes the state, so two processes can never interleave steps.

Without a registry (endpoint variants, no MLflow) the same two records are JSON files
in a folder (`--rollout-dir`, default .state/rollouts). They survive a restart of this
gateway but are not shared with replicas on other machines; the gateway says so when it
starts such a rollout.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import orjson

from gateway.controlplane.registry.client import MlflowRegistry, RegistryNotFound
from gateway.rollout.state import RolloutState

STATE_TAG = "switchyard.rollout.{route}"
COMMAND_TAG = "switchyard.rollout.{route}.command"
ACTIONS = ("pause", "resume", "abort")
# MLflow tag keys: letters, digits, _ - . / space; file names: no slashes.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Command:
    """An operator's request to a rollout, to be applied by the writer."""

    id: str
    action: str  # pause | resume | abort
    at: float
    by: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Command | None:
        """Parse a stored command; None if it is not one (a broken record is ignored)."""
        try:
            data = orjson.loads(raw)
            command = cls(**data)
        except (orjson.JSONDecodeError, TypeError):
            return None
        return command if command.action in ACTIONS else None


class RolloutStore(Protocol):
    """Reads and writes one route's rollout records."""

    @property
    def description(self) -> str:
        """Where the records are, for logs and the status view."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other machines see these records (the registry) or not (a file)."""
        ...

    async def read(self, route: str) -> tuple[RolloutState | None, Command | None]:
        """The stored state and pending command (None where there is none)."""
        ...

    async def save(self, state: RolloutState) -> None:
        """Store the state (the writer only)."""
        ...

    async def put_command(self, route: str, command: Command) -> None:
        """Leave a command for the writer."""
        ...


def safe_name(route: str) -> str:
    """`route` with characters tag keys and file names cannot hold replaced by `_`."""
    return _TAG_UNSAFE.sub("_", route)


class RegistryStore:
    """Rollout records as tags of one registered model in MLflow."""

    shared = True

    def __init__(self, registry: MlflowRegistry, model: str, route: str) -> None:
        self._registry = registry
        self.model = model
        self.route = route

    @property
    def description(self) -> str:
        tag = STATE_TAG.format(route=safe_name(self.route))
        return f"registry tag {tag} of model {self.model!r}"

    async def read(self, route: str) -> tuple[RolloutState | None, Command | None]:
        try:
            tags = (await self._registry.get_model(self.model)).tags
        except RegistryNotFound:
            return None, None
        name = safe_name(route)
        raw_state = tags.get(STATE_TAG.format(route=name))
        raw_command = tags.get(COMMAND_TAG.format(route=name))
        state = _state_or_none(raw_state)
        command = Command.from_json(raw_command) if raw_command else None
        return state, command

    async def save(self, state: RolloutState) -> None:
        key = STATE_TAG.format(route=safe_name(state.route))
        await self._registry.set_model_tag(self.model, key, state.to_json().decode())

    async def put_command(self, route: str, command: Command) -> None:
        key = COMMAND_TAG.format(route=safe_name(route))
        await self._registry.set_model_tag(self.model, key, command.to_json().decode())


class FileStore:
    """Rollout records as JSON files in a local folder (no registry)."""

    shared = False

    def __init__(self, folder: str | os.PathLike[str], route: str) -> None:
        self.folder = Path(folder)
        self.route = route

    @property
    def description(self) -> str:
        path = self._path(self.route, ".json")
        return f"local file {path} (not shared with other machines)"

    def _path(self, route: str, suffix: str) -> Path:
        return self.folder / f"{safe_name(route)}{suffix}"

    async def read(self, route: str) -> tuple[RolloutState | None, Command | None]:
        # Small local files: read inline (microseconds), off the request path anyway.
        raw_state = _read(self._path(route, ".json"))
        raw_command = _read(self._path(route, ".command.json"))
        state = _state_or_none(raw_state)
        command = Command.from_json(raw_command) if raw_command else None
        return state, command

    async def save(self, state: RolloutState) -> None:
        _write(self._path(state.route, ".json"), state.to_json())

    async def put_command(self, route: str, command: Command) -> None:
        _write(self._path(route, ".command.json"), command.to_json())


def _state_or_none(raw: str | bytes | None) -> RolloutState | None:
    if not raw:
        return None
    try:
        return RolloutState.from_json(raw)
    except ValueError:
        return None  # an unreadable record starts the rollout afresh rather than wedge it


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically, so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

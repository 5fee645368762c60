"""Request validation against a model version's MLflow signature.

An MLflow model logged with a signature declares its inputs in the MLmodel file,
either column-based (`[{"name": "amount", "type": "double"}, ...]`) or tensor-based
(`[{"name": "features", "type": "tensor", "tensor-spec": {"dtype": "float64",
"shape": [-1, 4]}}]`). The control plane reads it when a registry target resolves to a
version (`gateway.controlplane.registry.signatures`); the compiler turns it into a
`SignatureCheck` once per snapshot, and the fronts run that check on the request the
decision routed to the version: a few dict lookups and `type()` tests, no allocation
on the happy path (error texts are only built when raised).

What is checked, per protocol:

- kserve-v2: each input tensor's name, datatype and shape (the values are the
  backend's business, as in `gateway.dataplane.kserve`).
- json: the body's inputs by name, and the JSON type of every value, because plain
  JSON declares no types: a record `{"amount": 12.5, ...}` (values or columns of
  values), MLflow's scoring forms `dataframe_records`, `dataframe_split`, `inputs` and
  `instances`, or for tensors nested lists under the tensor's name (or `inputs`).

A mismatch is a 400 naming the input and what was expected against what came, such
as "input 'amount': expected double, got string".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import BadRequest

# MLflow column types -> the Python types a JSON value of that type parses to, and the
# KServe v2 datatypes that carry it (narrower ones widen safely: INT32 into long).
_INT: Final = frozenset({int})
_FLOAT: Final = frozenset({int, float})
_STR: Final = frozenset({str})
_BOOL: Final = frozenset({bool})
JSON_TYPES: Final[Mapping[str, frozenset[type]]] = {
    "boolean": _BOOL,
    "integer": _INT,
    "long": _INT,
    "float": _FLOAT,
    "double": _FLOAT,
    "string": _STR,
    "binary": _STR,  # base64 in JSON
    "datetime": _STR,
}
V2_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "boolean": frozenset({"BOOL"}),
    "integer": frozenset({"INT32", "INT16", "INT8", "UINT16", "UINT8"}),
    "long": frozenset({"INT64", "INT32", "INT16", "INT8", "UINT32", "UINT16", "UINT8"}),
    "float": frozenset({"FP32", "FP16", "BF16"}),
    "double": frozenset({"FP64", "FP32", "FP16", "BF16"}),
    "string": frozenset({"BYTES"}),
    "binary": frozenset({"BYTES"}),
    "datetime": frozenset({"BYTES"}),
}
# Tensor dtypes (numpy names, as MLflow writes them) -> the column type of their values.
DTYPES: Final[Mapping[str, str]] = {
    "bool": "boolean",
    "int8": "integer",
    "int16": "integer",
    "int32": "integer",
    "uint8": "integer",
    "uint16": "integer",
    "int64": "long",
    "uint32": "long",
    "uint64": "long",
    "float16": "float",
    "float32": "float",
    "float64": "double",
    "str": "string",
    "object": "string",
    "bytes": "binary",
}
# The one v2 datatype that names each dtype exactly (what a client should send).
V2_OF_DTYPE: Final[Mapping[str, str]] = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "str": "BYTES",
    "object": "BYTES",
    "bytes": "BYTES",
}
V2_OF_TYPE: Final[Mapping[str, str]] = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
# How widening goes: a type accepts itself and these (the candidate of a compatibility
# check may widen an input, never narrow it).
WIDENS: Final[Mapping[str, frozenset[str]]] = {
    "long": frozenset({"integer"}),
    "double": frozenset({"float", "integer", "long"}),
    "float": frozenset({"integer"}),
}
_JSON_NAME: Final[Mapping[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


class SignatureMismatch(BadRequest):
    """A request whose inputs do not match the signature of the version it was routed to."""

    code = "signature_mismatch"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of a signature: a column (`type` is a column type) or a tensor (`type`
    is its numpy dtype and `shape` its dimensions, -1 meaning any)."""

    name: str | None
    type: str
    shape: tuple[int, ...] | None = None
    required: bool = True

    @property
    def column_type(self) -> str:
        """The column type of the values: the dtype's for a tensor."""
        return DTYPES.get(self.type, self.type) if self.shape is not None else self.type

    def describe(self) -> str:
        """`'amount' double`, `'features' float64 [-1, 4]`."""
        name = f"'{self.name}'" if self.name else "(unnamed)"
        if self.shape is None:
            return f"{name} {self.type}" + ("" if self.required else " (optional)")
        return f"{name} {self.type} {list(self.shape)}"


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs of a model version's MLflow signature."""

    inputs: tuple[InputSpec, ...]
    tensors: bool = False  # tensor-based (else column-based)

    def describe(self) -> str:
        """One line: `columns 'amount' double, 'country' string`."""
        kind = "tensors" if self.tensors else "columns"
        return f"{kind} " + ", ".join(i.describe() for i in self.inputs)

    def input(self, name: str | None) -> InputSpec | None:
        """The input called `name` (an unnamed single tensor for any name)."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        if self.tensors and len(self.inputs) == 1 and self.inputs[0].name is None:
            return self.inputs[0]
        return None


def parse_signature(inputs: str | list[Any]) -> Signature:
    """The inputs of an MLmodel file's `signature.inputs` (its JSON text, or parsed);
    raises ValueError saying what is wrong."""
    try:
        raw = orjson.loads(inputs) if isinstance(inputs, str) else inputs
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"signature inputs are not JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError("signature inputs must be a non-empty list")
    specs: list[InputSpec] = []
    kinds: set[bool] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"signature input {i} is not an object")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"signature input {i}: name must be a string")
        kind = item.get("type")
        if kind == "tensor":
            spec = item.get("tensor-spec")
            if not isinstance(spec, dict):
                raise ValueError(f"signature input {i}: tensor without tensor-spec")
            dtype, shape = spec.get("dtype"), spec.get("shape")
            if not isinstance(dtype, str):
                raise ValueError(f"signature input {i}: tensor-spec has no dtype")
            if not isinstance(shape, list) or not all(type(d) is int for d in shape):
                raise ValueError(f"signature input {i}: tensor-spec shape must list integers")
            specs.append(InputSpec(name, dtype, tuple(shape)))
            kinds.add(True)
        elif isinstance(kind, str):
            if not name:
                raise ValueError(f"signature input {i}: a column needs a name")
            specs.append(InputSpec(name, kind, None, bool(item.get("required", True))))
            kinds.add(False)
        else:
            raise ValueError(f"signature input {i}: no type")
    if len(kinds) > 1:
        raise ValueError("signature mixes columns and tensors")
    return Signature(tuple(specs), tensors=True in kinds)


def _json_name(value: object) -> str:
    return _JSON_NAME.get(type(value), type(value).__name__)


class _Input:
    """One input, compiled: what the per-request loops read (no property, no lookup)."""

    __slots__ = ("json", "name", "shape", "spec", "v2")

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.name = spec.name or ""
        self.shape = spec.shape
        self.json = JSON_TYPES.get(spec.column_type)  # None: not checked (array, map...)
        self.v2 = V2_TYPES.get(spec.column_type)


def _fits(value: Any, shape: tuple[int, ...], accepted: frozenset[type]) -> bool | None:
    """Whether nested lists `value` have `shape` and `accepted` leaves: the fast path of
    the one- and two-dimensional tensors requests carry; None for other ranks."""
    rank = len(shape)
    if type(value) is not list:
        return False
    if rank == 1:
        if shape[0] != -1 and len(value) != shape[0]:
            return False
        for x in value:  # noqa: SIM110 - a loop, not all(): no generator per request
            if type(x) not in accepted:
                return False
        return True
    if rank != 2:
        return None
    if shape[0] != -1 and len(value) != shape[0]:
        return False
    width = shape[1]
    for row in value:
        if type(row) is not list:
            return False
        if width == -1:
            width = len(row)
        elif len(row) != width:
            return False
        for x in row:
            if type(x) not in accepted:
                return False
    return True


class SignatureCheck:
    """A signature compiled for one route's protocol: `check(body, api)` raises
    `SignatureMismatch` naming the first input that does not fit."""

    __slots__ = (
        "_inputs",
        "_required",
        "_specs",
        "_unnamed",
        "apis",
        "protocol",
        "signature",
        "where",
    )

    def __init__(
        self,
        signature: Signature,
        protocol: str,
        *,
        where: str = "",
        apis: frozenset[bytes] = frozenset(),
    ) -> None:
        self.signature = signature
        self.protocol = protocol
        self.apis = apis  # json routes: the APIs checked (empty: every API)
        self.where = where  # "fraud-detector version 4", for the error text
        self._specs: dict[str, InputSpec] = {s.name: s for s in signature.inputs if s.name}
        self._required = tuple(s for s in signature.inputs if s.required and s.name)
        self._inputs = {s.name: _Input(s) for s in signature.inputs if s.name}
        only = signature.inputs[0]
        unnamed = signature.tensors and len(signature.inputs) == 1 and only.name is None
        self._unnamed = _Input(only) if unnamed else None

    def applies(self, api: bytes) -> bool:
        """Whether requests to `api` (json routes) are checked."""
        apis = self.apis
        return not apis or api in apis

    def fail(self, message: str, param: str | None = None) -> SignatureMismatch:
        """The 400 to raise: the message and which version's signature said so."""
        suffix = f" (signature of {self.where})" if self.where else ""
        return SignatureMismatch(message + suffix, param=param)

    # KServe v2 -----------------------------------------------------------------

    def check_v2(self, body: Mapping[str, Any]) -> None:
        """Names, datatypes and shapes of a checked v2 inference request's inputs."""
        compiled = self._inputs
        inputs: list[dict[str, Any]] = body["inputs"]
        for tensor in inputs:
            name: str = tensor["name"]
            item = compiled.get(name) or self._unnamed
            if item is None:
                names = ", ".join(f"'{n}'" for n in compiled)
                raise self.fail(
                    f"input '{name[:64]}' is not an input of the model (inputs: {names})", name
                )
            datatype: str = tensor["datatype"]
            accepted = item.v2
            if accepted is not None and datatype not in accepted:
                spec = item.spec
                column = spec.column_type
                exact = (
                    V2_OF_DTYPE.get(spec.type, "?")
                    if spec.shape is not None
                    else V2_OF_TYPE[column]
                )
                raise self.fail(
                    f"input '{name[:64]}': expected {exact} ({spec.type}), got {datatype}", name
                )
            shape: list[int] = tensor["shape"]
            want = item.shape
            rank = len(shape)
            if want is None:
                # A column: one value per row, [n] or [n, 1].
                if not (rank == 1 or (rank == 2 and shape[1] == 1)):
                    raise self.fail(
                        f"input '{name[:64]}': expected shape [-1] (a column), got {shape}", name
                    )
                continue
            if rank != len(want):
                raise self.fail(
                    f"input '{name[:64]}': expected shape {list(want)}, got {shape}", name
                )
            for i in range(rank):
                if want[i] != -1 and want[i] != shape[i]:
                    raise self.fail(
                        f"input '{name[:64]}': expected shape {list(want)}, got {shape}", name
                    )
        required = self._required
        if len(required) == 1 and len(inputs) == 1:
            if inputs[0]["name"] != required[0].name:
                spec = required[0]
                raise self.fail(
                    f"input '{spec.name}' is missing: expected {spec.describe()}", spec.name
                )
        elif required:
            given = {t["name"] for t in inputs}
            for spec in required:
                if spec.name not in given:
                    raise self.fail(
                        f"input '{spec.name}' is missing: expected {spec.describe()}", spec.name
                    )

    # Plain JSON ----------------------------------------------------------------

    def check_json(self, body: Mapping[str, Any]) -> None:
        """The inputs of a JSON request body, in any of the forms the module names."""
        if self.signature.tensors:
            self._json_tensors(body)
            return
        if "dataframe_records" in body:
            records = body["dataframe_records"]
            if type(records) is not list:
                raise self.fail("'dataframe_records' must be a list of records", "inputs")
            for record in records:
                self._record(record, "dataframe_records")
            return
        if "dataframe_split" in body:
            self._split(body["dataframe_split"])
            return
        for form in ("inputs", "instances"):
            if form in body:
                value = body[form]
                if type(value) is list:
                    for record in value:
                        self._record(record, form)
                else:
                    self._record(value, form)
                return
        self._record(body, "")

    def _record(self, record: object, form: str) -> None:
        """A record (or columns: each value a list of values) holding every input."""
        if type(record) is not dict:
            where = f"'{form}'" if form else "the request body"
            raise self.fail(
                f"{where} must hold records (objects of inputs), got {_json_name(record)}", form
            )
        for name, item in self._inputs.items():
            value = record.get(name)
            if value is None:
                if item.spec.required:
                    spec = item.spec
                    raise self.fail(f"input '{name}' is missing: expected {spec.describe()}", name)
                continue  # an optional input left out
            accepted = item.json
            if accepted is None:
                continue  # array, object, map, any: not checked here
            kind = type(value)
            if kind is list:
                for x in value:
                    if type(x) not in accepted:
                        raise self._type_error(item.spec, x)
            elif kind not in accepted:
                raise self._type_error(item.spec, value)

    def _values(self, spec: InputSpec, value: Any) -> None:
        accepted = JSON_TYPES.get(spec.type)
        if accepted is None:
            return  # array, object, map, any: not checked here
        kind = type(value)
        if kind is list:
            for item in value:
                if type(item) not in accepted:
                    raise self._type_error(spec, item)
        elif kind not in accepted:
            raise self._type_error(spec, value)

    def _type_error(self, spec: InputSpec, value: object) -> SignatureMismatch:
        shown = _json_name(value)
        return self.fail(f"input '{spec.name}': expected {spec.type}, got {shown}", spec.name)

    def _split(self, split: object) -> None:
        if type(split) is not dict:
            raise self.fail("'dataframe_split' must be an object with columns and data", "inputs")
        columns = split.get("columns")
        data = split.get("data")
        if type(columns) is not list or type(data) is not list:
            raise self.fail(
                "'dataframe_split' needs 'columns' (a list of names) and 'data' (rows)", "inputs"
            )
        for spec in self._required:
            if spec.name not in columns:
                raise self.fail(
                    f"input '{spec.name}' is missing from dataframe_split.columns: expected "
                    f"{spec.describe()}",
                    spec.name,
                )
        positions = [
            (i, self._specs.get(c) if type(c) is str else None) for i, c in enumerate(columns)
        ]
        checked = [(i, s) for i, s in positions if s is not None]
        width = len(columns)
        for row in data:
            if type(row) is not list or len(row) != width:
                raise self.fail(
                    f"each row of dataframe_split.data must list {width} values, one per column",
                    "inputs",
                )
            for i, spec in checked:
                value = row[i]
                if value is not None:
                    self._values(spec, value)

    def _json_tensors(self, body: Mapping[str, Any]) -> None:
        sig = self.signature
        holder: Mapping[str, Any] = body
        for form in ("inputs", "instances"):
            if form in body and form not in self._inputs:
                value = body[form]
                if type(value) is dict:
                    holder = value
                    break
                if len(sig.inputs) == 1:
                    self._tensor(sig.inputs[0], value)
                    return
                raise self.fail(
                    f"'{form}' must be an object of named tensors ({sig.describe()})", form
                )
        if self._unnamed is not None:
            raise self.fail(f"expected 'inputs': a tensor {sig.inputs[0].describe()}", "inputs")
        for name, item in self._inputs.items():
            value = holder.get(name)
            if value is None:
                spec = item.spec
                raise self.fail(f"input '{name}' is missing: expected {spec.describe()}", name)
            shape = item.shape
            if shape and _fits(value, shape, item.json or _FLOAT):
                continue
            self._tensor(item.spec, value)

    def _tensor(self, spec: InputSpec, value: Any) -> None:
        shape = spec.shape or ()
        accepted = JSON_TYPES.get(spec.column_type, _FLOAT)
        if shape and _fits(value, shape, accepted):
            return
        # Not the fast path's (or wrong): walk it again to say where it goes wrong.
        lengths: list[int] = [-1] * len(shape)
        # Walk the nested lists level by level: every list at depth d has the same length
        # (the shape's, or the first one seen where the shape says -1).
        level: list[Any] = [value]
        for depth, want in enumerate(shape):
            following: list[Any] = []
            for item in level:
                if type(item) is not list:
                    raise self.fail(
                        f"input '{spec.name or 'inputs'}': expected shape {list(shape)}, got "
                        f"{_json_name(item)} at depth {depth}",
                        spec.name,
                    )
                size = len(item)
                expected = want if want != -1 else lengths[depth]
                if expected == -1:
                    lengths[depth] = expected = size
                if size != expected:
                    raise self.fail(
                        f"input '{spec.name or 'inputs'}': expected shape {list(shape)}, got "
                        f"{size} values at depth {depth} where {expected} were expected",
                        spec.name,
                    )
                following.extend(item)
            level = following
        for item in level:
            if type(item) not in accepted:
                name = spec.name or "inputs"
                raise self.fail(
                    f"input '{name}': expected {spec.type} values, got {_json_name(item)}", name
                )

    def check(self, body: Mapping[str, Any]) -> None:
        """The protocol's check: KServe v2 inputs or plain JSON."""
        if self.protocol == "kserve-v2":
            self.check_v2(body)
        else:
            self.check_json(body)


def compatible_type(old: str, new: str) -> bool:
    """Whether clients sending `old` values are served by a model taking `new`."""
    return old == new or old in WIDENS.get(new, frozenset())

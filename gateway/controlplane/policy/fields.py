"""Value types of policy fields: durations, endpoint URLs (http:// and k8s://), registry
targets, header names and retry conditions.

Each type validates and normalises in one place and raises a pydantic error whose
message is meant for the SRE reading `switchyard policy validate` output; each also
declares the JSON schema editors see, since the Python-side parsing (units, `https`
hints) is richer than a plain pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
BODY_FIELD = re.compile(r"^[A-Za-z0-9_-]+$")
_TARGET = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9._ -]*?)"
    r"(?:@(?P<alias>[A-Za-z0-9_][A-Za-z0-9_-]*)|/(?P<version>[1-9][0-9]*))$"
)
# A `backends:` key: the registered model's name and one of its versions.
# No named groups: the pattern goes into the JSON schema, whose regexes are ECMA-262.
_BACKEND_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*/[1-9][0-9]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_TEXT = r"^\s*(\d+(\.\d+)?(ms|s|m|h))+\s*$|^\s*\d+(\.\d+)?\s*$"
_UNIT_SECONDS = MappingProxyType({"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0})
RETRY_CONDITIONS = ("connect-error", "reset", "timeout")
K8S_SCHEME = "k8s://"
# DNS-1123 labels for namespace and Service; a port is a number or an IANA_SVC_NAME
# (at most 15 lower-case letters, digits and dashes), as Kubernetes validates them.
_SERVICE_URL = re.compile(
    r"k8s://(?P<namespace>[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)"
    r"/(?P<service>[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)"
    r":(?P<port>[0-9]{1,5}|[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?)"
    r"(?P<base>/[^?#\s]*)?"
)


def problem(kind: str, message: str) -> PydanticCustomError:
    """A validation error shown exactly as `message` (no "Value error, " prefix)."""
    # The message goes in through the context so braces in user input are not templates.
    return PydanticCustomError(kind, "{reason}", {"reason": message})


def parse_duration(value: object) -> object:
    """Seconds from `250ms`, `10s`, `2m`, `1h`, `1m30s` or a plain number of seconds.

    Values that are neither numbers nor strings pass through so pydantic reports the
    type error; the `> 0` bound is checked by the field after this runs.
    """
    if isinstance(value, bool):
        raise problem("duration", "expected a duration such as 250ms, 10s or 2m, not a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise problem(
            "duration",
            f"invalid duration {value!r}: use a number of seconds or units ms, s, m, h "
            "(for example 250ms, 10s, 2m, 1m30s)",
        )
    return total


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION_TEXT},
            ]
        }
    ),
]


def split_endpoint(url: str) -> tuple[str, int, str]:
    """(host, port, base_path) of a plain `http://host[:port][/base]` endpoint URL.

    Raises `ValueError` with an SRE-facing message for anything else.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("endpoint must be a non-empty http:// URL")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(
            f"{url!r}: https:// endpoints are not supported yet; use http:// "
            "(terminate TLS in a sidecar or the backend's Service)"
        )
    if scheme != "http":
        raise ValueError(f"{url!r}: endpoints must be plain http:// URLs (host, port, base path)")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: credentials in endpoint URLs are not supported")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{url!r}: endpoint URLs take no query string or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: port must be a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: endpoint URL has no host")
    if port == 0:
        raise ValueError(f"{url!r}: port must be a number from 1 to 65535")
    return host, port or 80, parts.path.rstrip("/")


def format_endpoint(host: str, port: int, base_path: str = "") -> str:
    """The canonical URL of an endpoint (explicit port, no trailing slash)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{base_path}"


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A `k8s://namespace/service:port[/base]` pool: the ready pods behind a Service.

    `port` is the name of the Service port (as EndpointSlices carry it) or the number
    the pods listen on (the Service's targetPort): EndpointSlices list pod ports, and
    reading the Service itself to map its port number would need more RBAC.
    """

    namespace: str
    service: str
    port: str
    base_path: str = ""

    @property
    def url(self) -> str:
        """The canonical `k8s://` form, as written in policies and shown in metrics."""
        return f"{K8S_SCHEME}{self.namespace}/{self.service}:{self.port}{self.base_path}"

    @property
    def slice_key(self) -> tuple[str, str]:
        """(namespace, service): what one EndpointSlice watch covers."""
        return self.namespace, self.service


def split_service_url(url: str) -> ServiceRef:
    """Parse `k8s://namespace/service:port[/base]`; `ValueError` says what is wrong."""
    match = _SERVICE_URL.fullmatch(url.strip())
    if match is None:
        raise ValueError(
            f"{url!r}: Kubernetes endpoints are k8s://NAMESPACE/SERVICE:PORT (for example "
            "k8s://models/vllm:http), PORT the Service port's name or the pods' port number"
        )
    port = match["port"]
    if port.isdigit() and not 1 <= int(port) <= 65535:
        raise ValueError(f"{url!r}: port must be a number from 1 to 65535 or a port name")
    base = (match["base"] or "").rstrip("/")
    return ServiceRef(match["namespace"], match["service"], port, base)


def is_service_url(url: str) -> bool:
    """Whether an endpoint is a `k8s://` Service reference rather than an http:// URL."""
    return url.strip().lower().startswith(K8S_SCHEME)


def _endpoint_url(value: str) -> str:
    try:
        if is_service_url(value):
            return split_service_url(value).url
        return format_endpoint(*split_endpoint(value))
    except ValueError as exc:
        raise problem("endpoint_url", str(exc)) from None


EndpointURL = Annotated[
    str,
    AfterValidator(_endpoint_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": "^(http|k8s)://"}),
]


def split_target(target: str) -> tuple[str, str | None, str | None]:
    """(model name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    match = _TARGET.fullmatch(target)
    if match is None:
        raise ValueError(
            f"invalid registry target {target!r}: use models:/NAME@ALIAS "
            "(for example models:/chat@champion) or models:/NAME/VERSION"
        )
    return match["name"], match["alias"], match["version"]


def _target(value: str) -> str:
    try:
        split_target(value)
    except ValueError as exc:
        raise problem("registry_target", str(exc)) from None
    return value


RegistryTarget = Annotated[
    str, AfterValidator(_target), WithJsonSchema({"type": "string", "pattern": _TARGET.pattern})
]


def backend_key(model: str, version: str) -> str:
    """The `backends:` key of one registered model version: `NAME/VERSION`."""
    return f"{model}/{version}"


def _backend_key(value: str) -> str:
    if not _BACKEND_KEY.fullmatch(value):
        raise problem(
            "backend_key",
            f"{value!r}: backends are keyed by NAME/VERSION of a registered model "
            "version (for example fraud-detector/7)",
        )
    return value


BackendKey = Annotated[
    str,
    AfterValidator(_backend_key),
    WithJsonSchema({"type": "string", "pattern": _BACKEND_KEY.pattern}),
]


def header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise problem("header_name", f"{value!r} is not a valid HTTP header name")
    return value.lower()


HeaderName = Annotated[str, AfterValidator(header_name)]


def request_key(value: str, kind: str) -> str:
    """A `header:NAME` (the name lower-cased) or `body:FIELD` (a top-level JSON field)
    request key, checked; `kind` names the problem a bad body field raises."""
    source, _, name = value.partition(":")
    if source == "header":
        return "header:" + header_name(name)
    if not BODY_FIELD.fullmatch(name):
        raise problem(kind, f"{name!r}: body fields are top-level names (letters, digits, _ -)")
    return value


def _retry_on(value: object) -> str | int:
    if isinstance(value, str) and value.strip().lower() in RETRY_CONDITIONS:
        return value.strip().lower()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    raise problem(
        "retry_on",
        f"{value!r}: expected connect-error, reset, timeout or an HTTP status from 400 to 599",
    )


RetryOn = Annotated[
    str | int,
    PlainValidator(_retry_on),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "enum": list(RETRY_CONDITIONS)},
                {"type": "integer", "minimum": 400, "maximum": 599},
            ]
        }
    ),
]


# Drift ---------------------------------------------------------------------------------

# Column names of drift windows: they become the `column` metric label and Parquet
# column names, so they stay short and printable. `input-0[3]` (a tensor element) fits.
# Variant names end up in metric labels and response headers, so no spaces or slashes.
VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A backend model version as KServe v2 puts it in the URL (/v2/models/NAME/versions/V).
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
COLUMN_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\[\]-]{0,127}$"
# A simple JSON path: dotted keys with optional list indices, `inputs.amount`,
# `instances[0].features[3]`. No wildcards: one path is one value.
_PATH_KEY = r"[A-Za-z0-9_-]+(?:\[[0-9]+\])*"
_FEATURE_PATH = re.compile(rf"^{_PATH_KEY}(?:\.{_PATH_KEY})*$")
_PATH_PART = re.compile(r"([A-Za-z0-9_-]+)|\[([0-9]+)\]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Evidently's drift methods for numerical and categorical columns (its stat-test names).
StatTest = Literal[
    "ks",
    "chisquare",
    "z",
    "jensenshannon",
    "kl_div",
    "psi",
    "wasserstein",
    "anderson",
    "cramer_von_mises",
    "fisher_exact",
    "g_test",
    "hellinger",
    "mannw",
    "ed",
    "es",
    "t_test",
    "empirical_mmd",
    "TVD",
]


def split_path(path: str) -> tuple[str | int, ...]:
    """The keys and indices of a simple JSON path: `a.b[0].c` -> ("a", "b", 0, "c")."""
    if not _FEATURE_PATH.fullmatch(path):
        raise ValueError(
            f"{path!r} is not a simple JSON path: use dotted keys with optional list "
            "indices, such as inputs.amount or instances[0].features[3]"
        )
    return tuple(
        key if key else int(index) for key, index in _PATH_PART.findall(path.replace(".", " "))
    )


def _feature_path(value: str) -> str:
    try:
        split_path(value)
    except ValueError as exc:
        raise problem("feature_path", str(exc)) from None
    return value


FeaturePath = Annotated[
    str,
    AfterValidator(_feature_path),
    WithJsonSchema({"type": "string", "pattern": _FEATURE_PATH.pattern}),
]


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise problem("env_name", f"{value!r} is not an environment variable name")
    return value


EnvName = Annotated[
    str, AfterValidator(_env_name), WithJsonSchema({"type": "string", "pattern": _ENV_NAME.pattern})
]


def _web_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise problem("web_url", f"{value!r}: expected an http:// or https:// URL")
    if parts.username or parts.password:
        raise problem("web_url", f"{value!r}: put credentials in the environment, not the URL")
    return value.strip().rstrip("/")


WebURL = Annotated[
    str,
    AfterValidator(_web_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": "^https?://"}),
]

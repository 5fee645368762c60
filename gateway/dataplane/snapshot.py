"""The runtime snapshot: what the control plane compiles and the data plane reads.

Everything here is built once per policy change and then only read. A request reads
`SnapshotRef.current` once and keeps that object to its end, so in-flight requests
finish on the snapshot they started with while a reload swaps the reference.

The only mutable parts reachable from a snapshot are deliberately *shared across*
snapshots: endpoint health (`EndpointState`), retry budgets and metric series. They
describe the backends and the traffic, not the policy, and must survive a reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from zlib import crc32

from gateway.dataplane.feedback.groundtruth import GroundTruth
from gateway.dataplane.flow import FlowGate
from gateway.dataplane.health import EndpointState, RetryBudget
from gateway.dataplane.scorers import Picker
from gateway.dataplane.shadow.verdict import Tolerance
from gateway.dataplane.signature import SignatureCheck
from gateway.observability.metrics import RequestSeries, RouteCounters
from gateway.observability.shadow_metrics import ShadowSeries


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend server of a variant's pool."""

    url: str
    host: str
    port: int
    base_path: str
    backend: str  # metric label: "host:port"
    host_header: bytes
    state: EndpointState

    base_path_bytes: bytes = b""  # base_path, encoded once
    # host:port of the same server's KServe v2 gRPC service ("" = none): the variant's
    # `grpc_port` on this endpoint's host, what the gRPC front dials.
    grpc_target: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_path_bytes", self.base_path.encode())


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active probe: GET `path` on each endpoint every `interval` seconds."""

    path: str  # absolute path on the endpoint, after its base path
    interval: float = 5.0
    timeout: float = 2.0
    unhealthy_after: int = 3  # failed probes in a row that take an endpoint out
    healthy_after: int = 2  # passed probes in a row that bring it back


@dataclass(frozen=True, slots=True)
class Variant:
    """A weighted choice within a route: a pool of endpoints serving one model version."""

    name: str
    index: int
    weight: float
    endpoints: tuple[Endpoint, ...]
    series: tuple[RequestSeries, ...]  # parallel to `endpoints`
    version: str = ""
    upstream_model: str | None = None
    target: str | None = None  # the policy's `target`, e.g. models:/name@alias
    # Bytes of the response headers naming this variant, precomputed per endpoint.
    header_lines: tuple[bytes, ...] = ()
    # The backends' API when it differs from the route's ("" = the same): translated.
    backend_protocol: str = ""
    # Where the backends report their own load ("vllm": scrape /metrics), "" = nowhere.
    load_metrics: str = ""
    # Fronts that name the model in the URL (KServe v2): the backend's name for it,
    # URL-quoted, plus "/versions/V" when the policy pins the backend version
    # (`model_version`; "" = pass on the client's).
    model_path: bytes = b""
    model_version: str = ""
    # Active health probe of each endpoint (off the request path), None = passive only.
    health_check: HealthCheck | None = None
    # The route's flow control of this pool (limits, priorities, its queue); None = off,
    # and the request path tests only that.
    flow: FlowGate | None = None
    # Scored picking (the policy's `picker`: weighted scorers, prefix and session
    # affinity, context fit); None = the least loaded endpoint (`pick.pick`).
    picker: Picker | None = None
    # The version's MLflow signature, compiled for the route's protocol, when the route
    # validates requests (`signature.validate_requests`) and it could be read.
    signature: SignatureCheck | None = None


@dataclass(frozen=True, slots=True)
class Sticky:
    """Where the sticky key comes from: a request header or a top-level body field."""

    source: str  # "header" | "body"
    key: str  # lower-case header name, or body field name
    key_bytes: bytes = b""


@dataclass(frozen=True, slots=True)
class Override:
    """Send requests whose headers all match to one variant."""

    headers: tuple[tuple[bytes, bytes], ...]  # (lower-case name, exact value)
    variant: int


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 0.5
    first_byte: float = 30.0
    total: float = 300.0
    idle: float = 60.0  # longest silence between two chunks of a streamed response


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2  # total tries, the first included
    budget: float = 0.2  # retries may add at most this share of the route's requests
    min_per_second: float = 3.0  # always allowed, so a quiet route can still retry
    on_connect_error: bool = True
    on_timeout: bool = False  # a first-byte timeout may have run the model already
    on_reset: bool = True
    statuses: frozenset[int] = frozenset({502, 503})


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 50.0


# A shadow waits less than a client would: nobody reads its answer in real time.
SHADOW_TIMEOUTS = Timeouts(connect=0.5, first_byte=10.0, total=30.0, idle=10.0)


@dataclass(frozen=True, slots=True)
class Shadow:
    """A model version that gets a copy of a sample of the route's requests.

    Its answers are compared with the primary's and never reach the client; see
    `gateway.dataplane.shadow.mirror`.
    """

    name: str
    sample: float  # share of the route's requests copied, 0..1
    max_inflight: int
    max_body_bytes: int  # larger request bodies are not copied
    timeouts: Timeouts
    endpoints: tuple[Endpoint, ...]
    series: ShadowSeries
    version: str = ""
    target: str | None = None
    upstream_model: str | None = None  # replaces the body's `model` (openai, ollama)
    model_path: bytes = b""  # kserve-v2: the model name in the backend's URL, quoted
    tolerance: Tolerance = field(default_factory=Tolerance)  # when answers count as same
    # Why copies cannot be sent now (a registry target without resolution), else None.
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled routing policy."""

    name: str
    protocol: str
    variants: tuple[Variant, ...]
    cumulative: tuple[float, ...]  # running sum of weights, parallel to variants
    total_weight: float
    sticky: Sticky | None
    overrides: tuple[Override, ...]
    fallback: tuple[int, ...]
    timeouts: Timeouts
    retries: RetryPolicy
    outlier: OutlierPolicy
    salt: bytes
    budget: RetryBudget
    counters: RouteCounters
    source: str = ""  # file (and document) the policy came from
    max_body_bytes: int | None = None
    salt_crc: int = 0  # crc32(salt), the seed of every sticky hash on this route
    # Why the route answers 503 (a registry target it needs has no resolution yet).
    unavailable: str | None = None
    # Versions that get copies of a sample of the requests (empty: the request path
    # checks only this).
    shadows: tuple[Shadow, ...] = ()
    shadow_sample: float = 0.0  # the largest `sample` of the shadows (one draw for all)
    # Where responses say what was predicted (a `ground_truth` block; None: the request
    # path checks only this).
    ground_truth: GroundTruth | None = None
    # For each variant index: that variant, then the fallbacks to try after it (what a
    # decision carries), built once here instead of per request.
    orders: tuple[tuple[Variant, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "salt_crc", crc32(self.salt))
        variants = self.variants
        object.__setattr__(
            self,
            "orders",
            tuple(
                (variants[i], *(variants[j] for j in self.fallback if j != i))
                for i in range(len(variants))
            ),
        )
        object.__setattr__(
            self, "shadow_sample", max((s.sample for s in self.shadows), default=0.0)
        )


@dataclass(frozen=True, slots=True)
class RuntimeSnapshot:
    """All routes now serving, plus precomputed responses that need no backend."""

    routes: Mapping[str, Route]
    version: str  # content hash of the policies it was compiled from
    created_at: float
    sources: tuple[str, ...] = ()
    models_body: bytes = b'{"object":"list","data":[]}'
    problems: tuple[str, ...] = field(default=())


class SnapshotRef:
    """The one reference the data plane reads and the control plane swaps."""

    __slots__ = ("current",)

    def __init__(self, snapshot: RuntimeSnapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: RuntimeSnapshot) -> RuntimeSnapshot:
        old, self.current = self.current, snapshot
        return old

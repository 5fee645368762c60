"""Quotas across a fleet: 3 replicas x `--workers 2`, one real Redis, concurrent
streaming clients through every replica; then Redis killed and started again.

Two keys: `tok` limited to TPM tokens and `req` to RPM requests per WINDOW seconds
(the keys file's `window`; windows are aligned to the epoch, as the gateway's are).
Every request streams "hi" with max_tokens 8 from a simulator that answers 8 tokens:
1 + 8 = 9 tokens of usage (estimated 1 + 3 + 8 = 12). Clients send far more than the
limits allow; each admitted request is counted in the window its response head came
back in (the pool runs dry well before a window ends, so no admission is near a
boundary but the ones that open a window).

Replicas a and b run `--quota-redis-down open`, c `closed`: with Redis gone, a and b
each keep to their even share (limit / 6 processes per process), c answers 503 with
Retry-After once the leases it held are spent; nothing hangs (5 s client timeouts,
every request answered); when Redis is back the fleet holds the limits again.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from tests.procs import _LISTEN_GW, GatewayProc, Simulator, spawn, start_simulator
from tests.redisrig import running_redis

WINDOW = 8
TPM = 3000  # tokens per window: 333 requests of 9 tokens
RPM = 150  # requests per window
TOK_KEY = "sk-fleet-tokens-0123456789"
REQ_KEY = "sk-fleet-requests-0123456"
BODY = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 8,
    "stream": True,
    "stream_options": {"include_usage": True},
}


class Load:
    """Client threads sending streamed requests round-robin over the replicas."""

    def __init__(self, replicas: dict[str, GatewayProc]) -> None:
        self.replicas = list(replicas.items())
        self.stop = threading.Event()
        # (key, replica, status, window of the response head, tokens)
        self.results: list[tuple[str, str, int, int, int]] = []
        self.retry_after_missing = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, threads_per_key: dict[str, int]) -> None:
        n = 0
        for name, count in threads_per_key.items():
            key = TOK_KEY if name == "tok" else REQ_KEY
            for _ in range(count):
                t = threading.Thread(target=self._run, args=(name, key, n), daemon=True)
                n += 1
                t.start()
                self.threads.append(t)

    def _run(self, name: str, key: str, offset: int) -> None:
        headers = {"authorization": f"Bearer {key}"}
        # A new connection per request: the kernel spreads them over both workers.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5.0, limits=limits, headers=headers) as client:
            i = offset
            while not self.stop.is_set():
                replica, gw = self.replicas[i % len(self.replicas)]
                i += 1
                try:
                    self._one(client, name, replica, gw)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(f"{replica}: {type(exc).__name__}: {exc}")

    def _one(self, client: httpx.Client, name: str, replica: str, gw: GatewayProc) -> None:
        with client.stream("POST", f"{gw.url}/v1/chat/completions", json=BODY) as reply:
            at = math.floor(time.time() / WINDOW)
            tokens = 0
            if reply.status_code == 200:
                for line in reply.iter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            tokens = usage["total_tokens"]
                assert tokens == 9, "a stream without its usage chunk"
            else:
                reply.read()
                if "retry-after" not in reply.headers:
                    self.retry_after_missing += 1
                time.sleep(0.01)  # still far more than the limits allow, on 2 cores
        with self.lock:
            self.results.append((name, replica, reply.status_code, at, tokens))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        assert not any(t.is_alive() for t in self.threads), "a client hung"

    def admitted(self, name: str, window: int, replica: str | None = None) -> int:
        """Tokens (tok) or requests (req) admitted in `window`."""
        total = 0
        for key, rep, status, at, tokens in self.results:
            if key == name and at == window and status == 200 and replica in (None, rep):
                total += tokens if name == "tok" else 1
        return total


def wait_for_window(offset: float = 0.3) -> int:
    """Sleep to `offset` seconds into the next window; its number."""
    now = time.time()
    nxt = math.floor(now / WINDOW) + 1
    time.sleep(nxt * WINDOW + offset - now)
    return nxt


def start_replicas(policy_dir: Path, keys: Path, redis_url: str) -> dict[str, GatewayProc]:
    procs = {}
    for name, mode in (("a", "open"), ("b", "open"), ("c", "closed")):
        procs[name] = spawn(
            [
                "serve",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--grpc-port",
                "-1",
                "--policies",
                str(policy_dir),
                "--workers",
                "2",
                "--api-keys",
                str(keys),
                "--quota-store",
                redis_url,
                "--quota-redis-down",
                mode,
                "--drain-timeout",
                "2",
            ],
            # A killed Redis is seen at once (connection refused); a slow answer only
            # after this: on a loaded 2-core machine 0.5 s would flap.
            env={"SWITCHYARD_QUOTA_TIMEOUT": "2"},
        )
    replicas = {}
    try:
        for name, proc in procs.items():
            m = proc.wait_for(_LISTEN_GW, 60)
            replicas[name] = GatewayProc(proc, m.group(1), m.group(2), policy_dir)
    except Exception:
        for proc in procs.values():
            proc.stop()
        raise
    return replicas


def within(value: int, limit: int, share: float = 0.05) -> bool:
    return limit * (1 - share) <= value <= limit * (1 + share)


def test_three_replicas_of_two_workers_hold_the_limits_through_redis_and_its_loss(
    tmp_path: Path,
) -> None:
    sim: Simulator = start_simulator("sim-fleet", "--tokens", "8")
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "chat.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: chat\n"
        f'variants: [{{name: main, endpoints: ["{sim.url}"]}}]\n'
    )
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {
                        "name": "tok",
                        "key": TOK_KEY,
                        "limits": [{"route": "chat", "tpm": TPM, "window": WINDOW}],
                    },
                    {
                        "name": "req",
                        "key": REQ_KEY,
                        "limits": [{"route": "*", "rpm": RPM, "window": WINDOW}],
                    },
                ]
            }
        )
    )
    replicas: dict[str, GatewayProc] = {}
    load: Load | None = None
    try:
        with running_redis(tmp_path / "redis") as redis:
            replicas = start_replicas(policy_dir, keys, redis.url)
            load = Load(replicas)
            load.start({"tok": 6, "req": 3})
            first = wait_for_window()
            healthy = [first + 1, first + 2, first + 3]
            time.sleep((first + 4) * WINDOW + 1.0 - time.time())
            redis.kill()  # mid-window first + 4
            outage = first + 5
            time.sleep((first + 6) * WINDOW + 0.5 - time.time())
            redis.start()  # mid-window first + 6
            recovered = first + 7
            time.sleep((first + 8) * WINDOW + 0.2 - time.time())
            load.finish()

            by_status = Counter(status for _, _, status, _, _ in load.results)
            print(  # what each window admitted, for the record (pytest -s)
                {
                    w - first: (load.admitted("tok", w), load.admitted("req", w))
                    for w in range(first + 1, first + 8)
                },
                by_status,
            )
            assert not load.errors, load.errors[:5]  # every request answered
            assert set(by_status) <= {200, 429, 503}, by_status
            assert load.retry_after_missing == 0
            # The fleet admits each limit within 5% per window, Redis up.
            for window in [*healthy, recovered]:
                tokens = load.admitted("tok", window)
                requests = load.admitted("req", window)
                assert within(tokens, TPM), (window - first, tokens, by_status)
                assert within(requests, RPM), (window - first, requests)
            # Redis gone: a and b keep to their share of each limit (2 of 6 processes
            # each); c refuses with 503 once its leases are spent.
            for name in ("a", "b"):
                share = 2 * TPM / 6
                assert 0 < load.admitted("tok", outage, name) <= share * 1.05
                assert load.admitted("req", outage, name) <= 2 * RPM / 6 * 1.05
            assert load.admitted("tok", outage, "c") == 0
            outage_503 = [r for r in load.results if r[1] == "c" and r[3] == outage and r[2] == 503]
            assert outage_503, "the closed replica did not answer 503"
            counts: dict[str, Counter[str]] = defaultdict(Counter)
            for name, gw in replicas.items():
                output = gw.proc.output()
                counts[name].update(
                    unreachable=output.count("is unreachable"),
                    back=output.count("answers again"),
                )
                assert gw.metric("switchyard_quota_store_up") == 2  # both workers, again
                assert gw.metric("switchyard_quota_store_errors_total") > 0
                assert gw.metric("switchyard_quota_lease_refills_total") > 0
            for name in replicas:  # logged once per outage, by each worker
                assert counts[name] == Counter(unreachable=2, back=2), counts
            # The admin API reads the fleet's usage from Redis (any worker answers).
            view = httpx.get(f"{replicas['a'].admin}/admin/keys/tok", timeout=5).json()
            assert view["store"]["up"] is True and view["store"]["processes"] == 6
            assert view["limits"][0]["used_from"] == "fleet"
    finally:
        if load is not None:
            load.stop.set()
        for gw in replicas.values():
            gw.proc.stop()
        sim.proc.stop()

"""What a chaos scenario is, what it reports, and the context it runs in.

A scenario starts its own processes (through the run's `Launcher`), applies one fault
under bounded load, and returns a `Result`: how many requests it sent, how many failed
as a client would judge them, the criterion in words, and whether it held. Criteria are
counted, never timed, so a slow shared machine changes how long a run takes, not its
verdict.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from loadtests.chaos.procs import Launcher


@dataclass(frozen=True, slots=True)
class Scale:
    """How big a run is: `quick` for CI (tens of seconds), full for `make chaos`."""

    quick: bool = False

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Result:
    """One row of the chaos table."""

    scenario: str
    requests: int
    failures: int
    criterion: str
    passed: bool
    skipped: str = ""  # why the scenario did not run ("" when it ran)
    details: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    def as_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "requests": self.requests,
            "failures": self.failures,
            "criterion": self.criterion,
            "verdict": self.verdict,
            "skipped": self.skipped or None,
            "seconds": round(self.seconds, 2),
            "details": self.details,
        }


@dataclass
class Context:
    """What a scenario gets: where to start processes, how big to be, an HTTP client."""

    launcher: Launcher
    scale: Scale
    client: httpx.AsyncClient
    verbose: bool = False
    _started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        """Progress on stderr (the table and JSON go to stdout)."""
        if self.verbose:
            print(f"  [{time.monotonic() - self._started:6.1f}s] {message}", file=sys.stderr)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named fault with its pass criterion; `unavailable` says why it cannot run here."""

    name: str
    criterion: str
    run: Callable[[Context], Awaitable[Result]]
    unavailable: Callable[[], str | None] = lambda: None
    in_quick: bool = True  # part of the short CI run (`--quick` without `--scenario`)


def pool_policy(route: str, endpoints: list[str], extra: str = "", protocol: str = "") -> str:
    """One variant over `endpoints`, with retries and quick outlier ejection."""
    eps = ", ".join(f'"{e}"' for e in endpoints)
    proto = f"protocol: {protocol}\n" if protocol else ""
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
{proto}variants:
  - name: main
    endpoints: [{eps}]
retries: {{attempts: 3, budget: 1.0, on: [connect-error, reset, 502, 503]}}
{extra}"""


def canary_policy(route: str, champion: str, challenger: str, weights: tuple[int, int]) -> str:
    """A sticky weighted canary with a fallback, as an SRE would write one."""
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - name: champion
    weight: {weights[0]}
    endpoints: ["{champion}"]
  - name: challenger
    weight: {weights[1]}
    endpoints: ["{challenger}"]
sticky: {{hash_on: "header:x-user-id"}}
fallback: [champion]
retries: {{attempts: 2, on: [connect-error, reset, 502, 503]}}
"""

"""Every chaos scenario, in the order the table shows them.

To add one: write a module here with `SCENARIO = Scenario(name, criterion, run, ...)`
(see `loadtests/chaos/scenario.py`) and list it in `all_scenarios`. A scenario whose
feature is optional says why it cannot run through `unavailable` and is skipped, not
failed; one too slow for the CI run sets `in_quick=False`.
"""

from __future__ import annotations

from loadtests.chaos.scenario import Scenario


def all_scenarios() -> tuple[Scenario, ...]:
    """The registry (imported lazily: `--help` stays fast)."""
    from loadtests.chaos.scenarios import (
        alias,
        disconnect,
        drain,
        drift_kill,
        endpoint_kill,
        reload,
        shadow,
        stream_cut,
    )

    return (
        reload.SCENARIO,
        alias.SCENARIO,
        endpoint_kill.SCENARIO,
        shadow.SCENARIO,
        stream_cut.SCENARIO,
        disconnect.SCENARIO,
        drain.SCENARIO,
        drift_kill.SCENARIO,
    )

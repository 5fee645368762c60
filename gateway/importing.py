"""Loading a module some configurations need, on first use, without stalling the loop.

Modules only some gateways use (httpx and what it imports: ~10 MB of RSS per worker)
are imported when first needed (see docs/operations.md, "Memory"). Imported on the
event loop, that first use would stall every connection of the worker for the import's
duration (hundreds of milliseconds on a loaded machine) and, inside a timed wait, count
against the timeout; so the import runs in a worker thread while the loop serves on.
"""

from __future__ import annotations

import asyncio
import importlib
import sys


async def import_off_loop(name: str) -> None:
    """Import `name` in a worker thread unless it is loaded already; afterwards a plain
    `import name` is a lookup."""
    if name not in sys.modules:
        await asyncio.to_thread(importlib.import_module, name)

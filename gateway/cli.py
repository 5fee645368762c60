"""`switchyard` command line: serve, policy tools, registry tools, simulators.

Each area registers its own subcommands (`add_commands(subparsers)`), so this module
only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command="serve"`, only `serve` is registered.

    Each area's `add_commands` imports that area's CLI module (the simulators, the demo,
    the compiler...): a few MB a long-running `serve` process would keep for nothing.
    """
    from gateway.app import add_commands as add_serve

    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Inference gateway with traffic control (canary, sticky, fallback).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve(sub)
    if command == "serve":
        return parser

    from gateway.controlplane.policy.cli import add_commands as add_policy
    from gateway.controlplane.registry.cli import add_commands as add_registry
    from gateway.drift.cli import add_commands as add_drift
    from gateway.native.build import add_commands as add_compile
    from gateway.quickstart.demo import add_demo_command as add_demo
    from gateway.rollout.cli import add_commands as add_rollout
    from gateway.simulate.cli import add_commands as add_simulate

    add_demo(sub)  # serve, then demo: the order `switchyard --help` lists them
    add_policy(sub)
    add_registry(sub)
    add_simulate(sub)
    add_drift(sub)
    add_rollout(sub)
    add_compile(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # The first word names the command (no top-level option takes a value).
    parser = build_parser("serve" if words[:1] == ["serve"] else None)
    args = parser.parse_args(words)
    handler = args.handler
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

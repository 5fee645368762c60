"""Chaos scenarios: faults applied to a real gateway under load, judged by counts.

Run `python -m loadtests.chaos --help` (or `make chaos`); see `cli.py`.
"""

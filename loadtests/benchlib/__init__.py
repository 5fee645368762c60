"""Helpers of `loadtests/bench`: the systems under test, the load drivers and the report.

Standard library only, on purpose: the harness must run under any Python 3.11+ and
must not share an import with the gateway it measures. The gateway itself runs in its
own process from the project's virtual environment.
"""

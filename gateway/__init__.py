"""Switchyard: an inference gateway with traffic control."""

from gateway.native.loader import install as _install_compiled

__version__ = "0.1.0"

# Before any request-path module is imported: serve them compiled when the build
# matches the source (see native/loader.py). What this process runs, for logs and /metrics.
COMPILED = _install_compiled()

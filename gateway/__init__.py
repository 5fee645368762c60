"""Switchyard: an inference gateway with traffic control."""

__version__ = "0.1.0"

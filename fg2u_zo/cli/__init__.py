"""The ``fg2u-zo`` command line: ``main`` (argument parsing and commands) and
``config`` (the TOML run configuration)."""

from .main import main

__all__ = ["main"]

"""The ``fg2u-zo`` command line: ``main`` (argument parsing and commands) and the TOML
run configuration: ``config`` (:func:`~fg2u_zo.cli.config.load_config`), ``schema``
(the keys and the checks of their values) and ``build`` (tables -> library objects)."""

from .main import main

__all__ = ["main"]

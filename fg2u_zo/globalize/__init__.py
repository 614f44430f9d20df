"""Globalization on top of the run: continuation in the horizon and parallel multi-start.

``horizons`` (:func:`~fg2u_zo.horizon_schedule`, :func:`~fg2u_zo.horizon_phases`: a
continuation is a list of phases of one run) and ``multistart``
(:class:`~fg2u_zo.MultiStart`, :func:`~fg2u_zo.multistart`: several local runs in one
run, in lockstep). This package imports the run (:mod:`fg2u_zo.outer`), never the
reverse.
"""

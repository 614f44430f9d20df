"""Runnable examples (scripts); a package only so that benchmarks can import ``examples._peers``."""

"""The outer loop: minimize/resume, the run loop, phases, signals, checkpoints, history,
schedules, parameter transforms and plots. Public names are re-exported by ``fg2u_zo``."""

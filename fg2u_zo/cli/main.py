"""The ``fg2u-zo`` command line.

    fg2u-zo run config.toml            # optimize as the config says
    fg2u-zo run config.toml --resume   # ... continuing its checkpoint when there is one
    fg2u-zo resume run.ckpt --config config.toml   # continue a stopped or finished run
    fg2u-zo plot run.jsonl -o run.png  # value vs step / nfev / time, gradient SNR
    fg2u-zo check-gradient config.toml # the estimator against a reference gradient

Exit codes: 0 success; 1 the run failed (the inner solver, a bug); 2 bad input (config,
checkpoint, usage), reported before anything is written; 130 interrupted (SIGINT);
143 terminated (SIGTERM). Both interruptions leave a checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .._version import __version__
from ..errors import CheckpointError, ConfigError, FG2UError

EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143


class _UsageError(Exception):
    """Bad input found by the CLI itself; exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fg2u-zo",
        description="Meta-gradients and outer optimization of bilevel problems whose inner "
                    "solver is a black box (FG2U-ZO).")
    parser.add_argument("--version", action="version", version=f"fg2u-zo {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v: each phase and checkpoint, -vv: each step)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the optimization described by a TOML config",
                         description="Run the outer optimization described by a TOML "
                                     "config (see fg2u_zo.cli.config for the schema).")
    run.add_argument("config", help="the .toml file")
    run.add_argument("--steps", type=int, help="override the number of steps (the last "
                                               "phase's, with phases)")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true",
                       help="delete an existing checkpoint of this config and start over")
    start.add_argument("--resume", action="store_true",
                       help="continue the config's checkpoint when it exists, else start "
                            "(the idiom of a batch job that the scheduler may requeue)")
    _progress_flags(run)

    resume = sub.add_parser("resume", help="continue a run from its checkpoint",
                            description="Continue a run exactly where its checkpoint "
                                        "stopped; the problem is rebuilt from the config "
                                        "file you name (a checkpoint never chooses what "
                                        "runs).")
    resume.add_argument("checkpoint", help="the .ckpt file written by `fg2u-zo run`")
    resume.add_argument("--steps", type=int, help="new total number of steps")
    resume.add_argument("--config", help="the config file the run was started with "
                                         "(required)")
    resume.add_argument("--force", action="store_true",
                        help="resume although the config file changed since the checkpoint "
                             "(its settings are still checked against the checkpoint)")
    _progress_flags(resume)

    plot = sub.add_parser("plot", help="plot a run's JSONL history (or its uncertainty) to "
                                       "a PNG",
                          description="Plot the outer loss against step, nfev and wall "
                                      "time, and the gradient SNR (1200 x 800 px); or, for a "
                                      ".json uncertainty written by `fg2u-zo run`, the "
                                      "correlation matrix, confidence ellipses and profiles.")
    plot.add_argument("history", help="the .jsonl history, or a .uncertainty.json")
    plot.add_argument("-o", "--output", help="PNG file (default: HISTORY with .png)")
    plot.add_argument("--title", help="figure title (default: the file name)")

    check = sub.add_parser("check-gradient",
                           help="compare the configured estimator with a reference gradient",
                           description="Estimate the meta-gradient at the config's initial "
                                       "phi and compare it with a reference (RGU for torch "
                                       "solvers, CoordinateFD otherwise), like scipy's "
                                       "check_grad.")
    check.add_argument("config", help="the .toml file")
    check.add_argument("--reference", help="reference estimator name (default: automatic)")
    check.add_argument("--tol", type=float,
                       help="exit with code 1 when the relative error exceeds TOL")
    return parser


def _progress_flags(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar (default: when stderr is a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_false")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _configure_logging({0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG))
    command = {"run": _cmd_run, "resume": _cmd_resume, "plot": _cmd_plot,
               "check-gradient": _cmd_check}[args.command]
    try:
        return command(args)
    except (ConfigError, CheckpointError, _UsageError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if not str(exc).startswith("stopped by"):  # else the run has logged it already
            _error(str(exc) or "interrupted")
        return EXIT_SIGINT
    except FG2UError as exc:
        _error(str(exc))
        return EXIT_FAILED


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(level):
    # The package's logger only, once: the root logger belongs to the application.
    log = logging.getLogger("fg2u_zo")
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("fg2u-zo: %(message)s"))
        log.addHandler(handler)


def _error(message):
    print(f"fg2u-zo: error: {message}", file=sys.stderr)


# -- commands ---------------------------------------------------------------------------
def _steps_override(cfg, options, steps):
    """Apply --steps: the total for a single phase, the last phase's share with phases."""
    if steps is None:
        return cfg.phases
    if steps < 1:
        raise _UsageError(f"--steps must be >= 1, got {steps}")
    if cfg.phases is None:
        options["steps"] = steps
        return None
    import dataclasses
    earlier = sum(p.steps for p in cfg.phases[:-1])
    if steps <= earlier:
        raise _UsageError(f"--steps must exceed the {earlier} steps of the phases before the "
                          f"last one, got {steps}")
    return cfg.phases[:-1] + [dataclasses.replace(cfg.phases[-1], steps=steps - earlier)]


def _run(cfg, options, phases, *, progress, resume):
    import fg2u_zo as fz

    with cfg.make_evaluator() as evaluator:
        return fz.minimize(cfg.problem, cfg.phi0, cfg.estimator, phases=phases,
                           multistart=cfg.multistart, evaluator=evaluator,
                           metadata=cfg.metadata, progress=progress, resume=resume,
                           **options)


def _vector(values, names=None):
    import numpy as np

    values = np.asarray(values)
    if names is not None and len(names) == values.size:
        return ", ".join(f"{name}={value:.6g}" for name, value in zip(names, values))
    return np.array2string(values, precision=6, separator=", ")


def _report(res, cfg, start_value=None):
    print(f"fg2u-zo: {res.message}")
    line = f"  value       {res.value:.6e}"
    if start_value is not None and len(res.runs) == 1:
        line += f"  (first step: {start_value:.6e})"
    print(line)
    if res.phi.size <= 10:
        print(f"  phi         {_vector(res.phi, cfg.names)}")
    replayed = getattr(res, "nfev_replayed", 0)
    print(f"  steps {res.nit}, nfev {res.nfev}"
          + (f" (+{replayed} answered from the journal)" if replayed else "")
          + f", solver time {res.solver_time:.3g} s, wall time {res.wall_time:.3g} s")
    print(f"  groups      {len(res.groups)} (parallel rounds at {res.workers} worker(s): "
          f"{res.rounds()})")
    if len(res.phases) > 1:
        for k, phase in enumerate(res.phases):
            print(f"  phase {k}     {phase.name}, {phase.steps} steps, value {phase.value:.6e}")
    if len(res.runs) > 1:
        for r in sorted(res.runs, key=lambda r: (r.value, r.index)):
            line = f"  run {r.index:<3d}     value {r.value:.6e}, {r.status}"
            if res.phi.size <= 10:
                line += f"  phi {_vector(r.phi, cfg.names)}"
            if r.stopped_at is not None:
                line += f"  (halved at rung {r.stopped_at})"
            print(line)
    if res.failures:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(res.failures.items()))
        print(f"  failures    {sum(res.failures.values())} evaluations dropped ({kinds})")
    if res.lost:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(res.lost.items()))
        print(f"  lost        {sum(res.lost.values())} evaluations lost with a worker or "
              f"the scheduler and run again ({kinds})")
    if res.checkpoint:
        print(f"  checkpoint  {res.checkpoint}")
    return EXIT_SIGTERM if res.status == "sigterm" else 0


def _cmd_run(args):
    from ..persist.checkpoint import read_checkpoint
    from .config import load_config

    cfg = load_config(args.config)
    options = dict(cfg.minimize_options)
    phases = _steps_override(cfg, options, args.steps)
    ckpt = cfg.checkpoint
    resume = False
    if ckpt is not None and os.path.exists(ckpt):
        if args.resume:
            resume = True
            if args.steps is None:
                phases = _saved_length(cfg, options, read_checkpoint(ckpt), phases)
        elif args.overwrite:
            os.unlink(ckpt)
        elif _holds_steps(read_checkpoint(ckpt)):
            raise _UsageError(
                f"checkpoint {ckpt} already exists: continue it with `fg2u-zo run "
                f"{args.config} --resume` (or `fg2u-zo resume {ckpt} --config "
                f"{args.config}`), or pass --overwrite to start over")
        # else: a run that stopped before its first step; this run replaces it
    res = _run(cfg, options, phases, progress=args.progress, resume=resume)
    code = _report(res, cfg, res.history[0].value if res.history else None)
    if cfg.history:
        print(f"  history     {cfg.history}")
    _report_uncertainty(cfg, res)
    return code


def _holds_steps(ck) -> bool:
    from ..outer.setup import blocks_a_new_run

    return blocks_a_new_run(ck)


def _saved_length(cfg, options, ck, phases):
    """Continue to the length the run was started with, not the config's (edited) one."""
    saved_total = sum(ck.config.get("phase_steps", []))
    if saved_total and not cfg.continuation:
        return _steps_override(cfg, options, saved_total)
    return phases


def _cmd_resume(args):
    from ..persist.checkpoint import read_checkpoint
    from .config import file_sha256, load_config

    path = os.path.abspath(args.checkpoint)
    ck = read_checkpoint(path)
    recorded = ck.metadata.get("config_path") if isinstance(ck.metadata, dict) else None
    if args.config is None:
        hint = (f" (it was written from {recorded})" if isinstance(recorded, str) else
                " (it records none: it was not written by `fg2u-zo run`; resume it from "
                "Python with fz.resume(path, problem))")
        raise _UsageError(
            f"name the config to resume {args.checkpoint} with: `fg2u-zo resume "
            f"{args.checkpoint} --config CONFIG.toml`{hint}. A checkpoint never chooses "
            "what runs: the solver commands and Python entry points come from the config "
            "you name")
    config_path = args.config
    if not os.path.isfile(config_path):
        raise _UsageError(f"config {config_path} not found")
    saved_hash = ck.metadata.get("config_sha256") if isinstance(ck.metadata, dict) else None
    if saved_hash and file_sha256(config_path) != saved_hash and not args.force:
        raise _UsageError(
            f"{config_path} is not the config {args.checkpoint} was written with (its bytes "
            "differ); name the right one, or pass --force to resume with this one (settings "
            "that change the trajectory are still refused)")
    cfg = load_config(config_path)
    options = dict(cfg.minimize_options)
    options["checkpoint"] = path
    if ck.history_path is not None:
        options["history"] = ck.history_path
    phases = _steps_override(cfg, options, args.steps)
    if args.steps is None:
        phases = _saved_length(cfg, options, ck, phases)
    res = _run(cfg, options, phases, progress=args.progress, resume=True)
    code = _report(res, cfg)
    if options.get("history"):
        print(f"  history     {options['history']}")
    _report_uncertainty(cfg, res)
    return code


def _report_uncertainty(cfg, res):
    from .uncertainty import report_uncertainty
    report_uncertainty(cfg, res)


def _cmd_plot(args):
    from .plotting import plot_history
    from .uncertainty import is_uncertainty_file, plot_uncertainty_file

    if not os.path.isfile(args.history):
        raise _UsageError(f"history file {args.history} not found")
    plot = plot_uncertainty_file if is_uncertainty_file(args.history) else plot_history
    try:
        out = plot(args.history, args.output, title=args.title)
    except ImportError as exc:
        raise _UsageError(str(exc)) from None
    except ValueError as exc:
        raise _UsageError(f"{args.history}: {exc}") from None
    print(out)
    return 0


def _cmd_check(args):
    import fg2u_zo as fz

    from ..estimators import estimator_classes
    from .config import load_config

    cfg = load_config(args.config)
    reference = None
    if args.reference is not None:
        classes = estimator_classes()
        if args.reference not in classes:
            raise _UsageError(f"--reference must be one of {', '.join(classes)}, got "
                              f"{args.reference!r}")
        reference = classes[args.reference]()
    estimator = cfg.estimator
    if estimator is None:  # no [estimator]: the first-order default, central differences
        from ..outer.defaults import default_estimator
        estimator = default_estimator(cfg.problem, "first-order")
    with cfg.make_evaluator() as evaluator:
        check = fz.check_meta_gradient(cfg.problem, cfg.phi0, estimator=estimator,
                                       reference=reference,
                                       rng=cfg.minimize_options.get("rng", 0),
                                       evaluator=evaluator)
    print(check)
    if args.tol is not None:
        if not check.rel_err <= args.tol:
            _error(f"relative error {check.rel_err:.3e} exceeds --tol {args.tol:g}")
            return EXIT_FAILED
    elif not check.passed:
        # Without --tol the check's own verdict (its standard error and the predicted
        # finite-difference error) decides the exit status.
        _error(f"the gradient check failed: {check.reason}")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

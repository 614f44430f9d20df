"""Run an external executable (a legacy simulator) as an inner solver.

The adapter itself: arguments, staging, one run, reading the result. What it builds
on lives next to it: input templates (:mod:`solvers._template`), reading the output
(:mod:`solvers._text_output`), working directories (:mod:`solvers._workdirs`) and
starting commands that cannot outlive the run (:mod:`solvers._process_guard`).

The module is about 730 lines because the class docstring, the adapter's user manual
(every argument, every failure kind, what happens to processes and directories), is
200 of them, and the methods' docstrings and the argument checks with their messages
most of the rest.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import signal
import tempfile
import time
import uuid
import warnings

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, FG2UWarning, InnerSolverError

from ._adapter_common import (as_phi, as_theta, exception_detail, optional_positive_number,
                              positive_int, positive_number)
from ._fingerprint import (adapter_name, callable_identity, check_version,
                           executable_digest, file_digest, jsonable)
from ._process_guard import (CANCELLED, TIMED_OUT, owner_to_watch, process_identity,
                             start_command, task_cancellation, track_workdir,
                             untrack_workdir, wait_then_clean_group)
from ._template import parse_template, render_template
from ._text_output import TAIL_LINES, TextFormat, file_tail, read_output_file
from ._workdirs import (FAILURE_NOTE, LOG_TAIL_BYTES, STDERR_LOG, STDOUT_LOG, forget_failure,
                        keep_failure, new_workdir)

__all__ = ["Subprocess"]

# Each evaluation is one process among many running in parallel; a child that starts
# one BLAS/OpenMP thread per core would oversubscribe the machine n_jobs times over.
THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "VECLIB_MAXIMUM_FRAMEWORK_THREADS", "NUMEXPR_NUM_THREADS")

#: Default bound on the bytes of the failed calls' directories one adapter keeps.
KEEP_FAILED_BYTES = 256 * 2**20


class Subprocess:
    """An external command as an inner solver, one fresh working directory per call.

    Each call ``solver(phi)`` creates a temporary directory, writes ``phi`` into it (from
    a template or with a ``writer``), copies the static ``files`` in, runs ``argv`` there
    without a shell, reads the result back (from ``output`` or with a ``reader``) and
    removes the directory. The command never outlives the run that started it (see
    Notes).

    Parameters
    ----------
    argv : sequence of str
        The command as an argument list, e.g. ``["./sim", "input.txt"]``. A single string
        is refused: no shell is ever used, so there is nothing to split it. Arguments may
        name files of the working directory by relative path (the command runs there).
    template : str or os.PathLike, optional
        Input deck written to ``input_name`` before the run. A ``str`` is the template
        text itself; a ``pathlib.Path`` (any ``os.PathLike``) is read as a file, once,
        at construction, as is ``template_file``. A ``str`` that is the name of an
        existing file (and holds no placeholder) is most likely meant as a file: it
        is used as text all the same, with an :class:`~fg2u_zo.FG2UWarning` that says
        to pass ``template_file=`` or a ``pathlib.Path``. Placeholders use Python's
        format syntax and are filled with numbers only:

        - ``{phi[3]}``: one entry of ``phi``;
        - ``{phi}``: the whole vector, space separated;
        - ``{n}``: ``len(phi)``;
        - ``{alpha}``: ``phi[i]`` where ``names[i] == "alpha"``;
        - ``{seed}``: the ``seed`` the call received (an error if it received none).

        Numbers are printed with ``repr(float)``, the shortest string that reads back to
        the same double (at most 17 significant digits), so the input adds no rounding.
        A format spec (``{phi[0]:.6e}``) overrides that, for codes with a fixed input
        format -- at the price of rounding ``phi`` before the solver sees it. Literal
        braces are written ``{{`` and ``}}``. An unknown placeholder is an error here.
    template_file : path-like, optional
        A file holding the template, read once here (instead of ``template``).
    input_name : str, default "input.txt"
        File name of the rendered template in the working directory (a relative
        path; its folder may not be a linked entry of ``files``, see ``link``).
    names : sequence of str, optional
        Names of the entries of ``phi``, usable as template placeholders.
    writer : callable, optional
        ``writer(phi, workdir)`` writes the input files itself; instead of ``template``.
        If its signature accepts ``seed`` and/or ``warm_start`` keywords (or
        ``**kwargs``), it receives the call's ``seed`` and ``warm_start`` too (``None``
        when not given). It must be a module-level function to be picklable.
    output : str, optional
        Output file, relative to the working directory. ``*.npy`` is read with
        :func:`numpy.load`; anything else is parsed as text: numbers separated by
        whitespace, commas or semicolons, ``#`` comments, Fortran ``D`` exponents;
        rows are concatenated (the result is flattened). See ``skiprows``, ``usecols``
        and ``comments`` for tables with a header or extra columns.
    reader : callable, optional
        ``reader(workdir) -> array``, instead of ``output``. The array is flattened.
    skiprows : int, default 0
        Lines skipped at the top of a text ``output`` (a header such as
        ``TIME T(0.25) T(0.5)``), comment lines included, as in :func:`numpy.loadtxt`.
    usecols : int or sequence of int, optional
        Columns of a text ``output`` to keep (0-based; negative counts from the end), as
        in :func:`numpy.loadtxt`; the result is the kept table, flattened row by row.
        A row with too few columns is an error naming its line.
    comments : str, sequence of str or None, default "#"
        Strings that start a comment in a text ``output`` (the rest of the line is
        ignored); ``None``: no comments. As in :func:`numpy.loadtxt`.
    files : sequence of path-like, default ()
        Static files or directories copied into each working directory (under their
        base name) before the run, e.g. a mesh or the executable itself. A file may not
        have the name of one the adapter or the command writes (``input_name`` with a
        template, ``output``, the logs): it would be replaced, or with ``link=True``
        written through the link into the original.
    link : bool, default False
        Symlink ``files`` instead of copying them (faster for large files; the command
        must not modify them). The links are made after ``writer`` has run, and a file
        it wrote under a linked name is an error, so that nothing the adapter writes
        goes through a link into the original. For the same reason ``input_name`` (with
        a template) and ``output`` may not lie inside a linked folder
        (``input_name="data/input.txt"`` with ``files=[".../data"]``): every call would
        write into your own folder, and parallel calls would read each other's files.
    timeout : float, optional
        Seconds before the command's whole process group is sent SIGTERM, then SIGKILL
        after ``kill_grace`` seconds. ``None`` waits forever.
    kill_grace : float, default 0.5
        Seconds between SIGTERM and SIGKILL on timeout (0: SIGKILL at once).
    env : mapping of str to str, optional
        Variables set on top of the parent's environment. ``OMP_NUM_THREADS``,
        ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
        ``VECLIB_MAXIMUM_FRAMEWORK_THREADS`` and ``NUMEXPR_NUM_THREADS`` are set to 1
        unless given here or already set in the parent's environment, so that parallel
        evaluations do not oversubscribe the cores.
    workdir_root : path-like, optional
        Where the working directories are created (default: :func:`tempfile.gettempdir`).
        Directories are named ``fg2u-*`` (see Notes).
    keep_workdir : bool, default False
        Keep every working directory, successful or not (``keep_failed`` is then
        ignored).
    keep_failed : int, default 5
        How many directories of failed calls this solver keeps for inspection: those
        of its most recent failures, across every process it runs in. The path of a
        kept directory is in the error message and in
        :attr:`InnerSolverError.workdir`. 0 keeps none.
    keep_failed_bytes : int, default 256 MiB
        Most bytes the kept directories hold together (see Notes). In a kept
        directory the logs of the command's stdout and stderr hold only their last
        MiB (or a quarter of this bound, if less).
    n_outputs : int, optional
        Expected number of outputs; any other count raises ``InnerSolverError``
        (``kind="shape"``).
    n_params : int, optional
        Expected length of ``phi``; any other length raises ``FG2UValueError`` before
        anything runs (a deterministic error, which an evaluator does not retry).
    check_executable : bool, default True
        Check at construction that ``argv[0]`` exists (on ``PATH``, or in ``files``).
        Turn off when the executable exists only on remote workers.
    install_hint : str, optional
        Appended to the error raised when the executable is missing (e.g. how to
        install it).
    version : str, optional
        Your name for the version of the program (a release, a commit id), part of
        :meth:`fingerprint`: change it when the program changes in a way the
        fingerprint cannot see (a library it loads, a file it reads by itself).

    Raises
    ------
    FG2UTypeError, FG2UValueError
        On invalid arguments (a string ``argv``, an unknown placeholder, a missing file
        or executable, a non-positive ``timeout`` ...).

    Notes
    -----
    **Failures.** A call raises :class:`fg2u_zo.InnerSolverError` with ``kind``:

    - ``"missing_executable"``: ``argv[0]`` cannot be executed;
    - ``"timeout"``: the command ran past ``timeout`` (its process group is killed,
      grandchildren included, unless they started a session of their own);
    - ``"returncode"``: non-zero exit; the message has the code and the last 20 lines
      of stderr (and of stdout, where e.g. FreeFem++ prints its errors);
    - ``"output"``: the output file is missing or not numbers; the message names the
      file and shows its first lines;
    - ``"shape"`` / ``"nonfinite"``: wrong count / NaN or inf in the output; the
      message ends with the tails of the command's stderr and stdout, where it may have
      said why (``detail`` holds the stderr tail);
    - ``"cancelled"``: the dask task running the call was cancelled;
    - ``"exception"``: ``writer`` raised.

    A ``phi`` that is not 1-D, not finite or of the wrong length (``n_params``,
    ``names``, an index of the template), and an ``FG2UValueError`` raised by
    ``writer``, raise ``FG2UValueError``: deterministic errors, before anything runs.

    **Processes.** No process a call starts outlives the run: processes the command
    left running in its process group are killed when it exits; so are its
    descendants that started a session of their own (``setsid()``: a daemon, a
    launcher's helper), which come back to the worker -- a child subreaper while the
    command runs (Linux) -- and are recognized by the token of the call in their
    environment (``FG2U_ZO_CALL``). The command and all of these are killed when the
    process that started it dies (a loky or dask worker killed, crashed or
    restarted, SIGKILL of the run), when the process that sent the solver to a
    worker on the same machine exits (the run was stopped while the worker waits),
    and when the dask task running it is cancelled (the run gave up on it; noticed
    within a quarter of a second, in the task's own thread only -- with an Evaluator
    ``timeout`` the solver runs in a helper thread, and a timed-out one ends at this
    adapter's ``timeout`` or with its worker); a small watchdog process per worker
    does that when the worker itself is gone (:mod:`solvers._process_guard`). What
    remains possible: a descendant that leaves the process group *and* replaces its
    environment (or runs as another user) is not recognized; without
    ``PR_SET_CHILD_SUBREAPER`` (not Linux) escaped descendants are found only when
    the worker dies; without ``/proc`` the owner is not watched. The token in the
    environment is the only trace of this in the command.

    **Working directories.** Under ``workdir_root``, ``fg2u-<tag>-<key>-<random>``
    while a call runs (``tag`` names this solver, ``key`` the point). A successful
    call removes its directory and that of an earlier failed attempt at the same
    point (a retry that worked). A failed call leaves its directory as
    ``fg2u-<tag>-failed-<key>``, with the error in ``fg2u-failure.txt``, and only the
    ``keep_failed`` most recent of them are left, holding at most
    ``keep_failed_bytes`` together: the logs of the command's output
    (``fg2u-stdout.log``, ``fg2u-stderr.log``) are cut to their last MiB, with a first
    line that says how much was cut; older directories are removed first when the
    kept ones hold more; and when the most recent one alone holds more, its largest
    files (not the logs or the note) are removed and named in its note. So after a
    run, what remains are the directories of the last failures that no retry
    repaired, within a known number of bytes. The directory of a call whose worker
    process died is kept the same way by the watchdog.

    **Fingerprint.** :meth:`fingerprint` identifies what this solver computes (see
    there), so that a run resumed with a changed program does not replay the
    outputs of the old one.

    **Smoothness.** Finite differences through the command are only as good as the
    digits that cross the files: the template writes ``phi`` exactly, and the command
    must print its results with enough digits (17 significant for double precision);
    a code that prints 6 digits has a noise of about ``1e-6 * |theta|``, so a step
    ``mu`` gives derivative errors of about ``1e-6 * |theta| / mu``.

    Examples
    --------
    >>> import sys
    >>> import numpy as np
    >>> from solvers import Subprocess
    >>> code = "import numpy as np; x = np.loadtxt('in.txt'); np.savetxt('out.txt', x**2)"
    >>> solver = Subprocess([sys.executable, "-c", code], template="{phi[0]} {phi[1]}",
    ...                     input_name="in.txt", output="out.txt", timeout=60)
    >>> solver(np.array([1.5, -2.0]))
    array([2.25, 4.  ])
    """

    def __init__(self, argv, *, template=None, template_file=None, input_name="input.txt",
                 names=None, writer=None, output=None, reader=None, files=(), link=False,
                 timeout=None, kill_grace=0.5, env=None, workdir_root=None,
                 keep_workdir=False, keep_failed=5, keep_failed_bytes=KEEP_FAILED_BYTES,
                 n_outputs=None, n_params=None, skiprows=0, usecols=None, comments="#",
                 check_executable=True, install_hint=None, version=None):
        self.argv = _check_argv(argv)
        self.names = _check_names(names)
        template = _read_template(template, template_file)
        if template is not None and writer is not None:
            raise FG2UValueError("pass either `template` or `writer`, not both (a "
                                 "`template_file` is a template too)")
        self.template = template
        self._fields = parse_template(template, self.names) if template is not None else None
        self.input_name = _check_relative_name(input_name, "input_name")
        if writer is not None and not callable(writer):
            raise FG2UTypeError(f"`writer` must be callable, got {type(writer).__name__}")
        self.writer = writer
        self._writer_kwargs = _accepted_kwargs(writer, ("seed", "warm_start"))
        if (output is None) == (reader is None):
            raise FG2UValueError("pass exactly one of `output` (a file name such as "
                                 "'out.txt') or `reader` (a function of the workdir)")
        if reader is not None and not callable(reader):
            raise FG2UTypeError(f"`reader` must be callable, got {type(reader).__name__}")
        self.output = None if output is None else _check_relative_name(output, "output")
        self.reader = reader
        self.text_format = TextFormat(skiprows, usecols, comments)
        if not self.text_format.is_default and (self.output is None
                                                or self.output.endswith(".npy")):
            raise FG2UValueError("`skiprows`, `usecols` and `comments` apply to a text "
                                 "`output` file; a `reader` or a .npy output reads the "
                                 "file itself")
        self.files = _check_files(files)
        self.link = bool(link)
        self._check_staged_names()
        self.timeout = optional_positive_number(timeout, "timeout")
        if kill_grace == 0:
            self.kill_grace = 0.0  # SIGKILL at once
        else:
            self.kill_grace = positive_number(kill_grace, "kill_grace")
        if env is not None:
            env = {str(k): str(v) for k, v in dict(env).items()}
        self.env = env
        if workdir_root is not None:
            workdir_root = os.path.abspath(os.fspath(workdir_root))
            if not os.path.isdir(workdir_root):
                raise FG2UValueError(f"`workdir_root` {workdir_root!r} is not a directory; "
                                     "create it first")
        self.workdir_root = workdir_root
        self.keep_workdir = bool(keep_workdir)
        self.keep_failed = positive_int(keep_failed, "keep_failed", minimum=0)
        self.keep_failed_bytes = positive_int(keep_failed_bytes, "keep_failed_bytes")
        self.version = check_version(version)
        self.n_outputs = None if n_outputs is None else positive_int(n_outputs, "n_outputs")
        self.n_params = None if n_params is None else positive_int(n_params, "n_params")
        self.install_hint = install_hint
        # Names this adapter's working directories, in every process it is sent to.
        self._tag = uuid.uuid4().hex[:8]
        self._owner = None  # (pid, start time) of the process that sent it here
        if check_executable:
            self._check_executable()

    def __repr__(self):
        return f"Subprocess({self.argv!r}, timeout={self.timeout!r})"

    def __getstate__(self):
        state = self.__dict__.copy()
        # Whoever pickles the adapter (the process running the optimization, sending it
        # to its workers) owns the commands it starts there.
        state["_owner"] = process_identity()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._owner = owner_to_watch(state.get("_owner"))

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data.

        The adapter type, ``argv`` and the SHA-256 of the executable it names here,
        the template text and ``input_name``, the ``writer`` and ``reader`` (module,
        qualified name and source digest), the names and SHA-256 digests of the
        staged ``files`` (of every file of a staged folder), how the output is read,
        ``env``, ``n_outputs``, ``n_params`` and ``version``. Read now: a file
        changed since construction changes it. Timeouts and where directories go
        are left out: they do not change an output.

        Returns
        -------
        dict
            JSON-serializable; equal for two solvers that compute the same thing
            (as far as this adapter can tell: see ``version``).
        """
        return {
            "adapter": adapter_name(self),
            "version": self.version,
            "argv": list(self.argv),
            "executable_sha256": executable_digest(self.argv[0]),
            "template": self.template,
            "input_name": self.input_name if self.template is not None else None,
            "names": self.names,
            "writer": callable_identity(self.writer),
            "output": self.output,
            "reader": callable_identity(self.reader),
            "text_format": jsonable({"skiprows": self.text_format.skiprows,
                                     "usecols": self.text_format.usecols,
                                     "comments": self.text_format.comments}),
            "files": [{"name": os.path.basename(f), "sha256": file_digest(f)}
                      for f in self.files],
            "link": self.link,
            "env": self.env,
            "n_outputs": self.n_outputs,
            "n_params": self.n_params,
        }

    # -- construction checks -------------------------------------------------------

    def _check_executable(self):
        exe = self.argv[0]
        staged = {os.path.basename(f) for f in self.files}
        if os.path.basename(exe) in staged and not os.path.isabs(exe):
            if os.sep not in exe:
                # A bare name is looked up on PATH, never in the working directory.
                raise FG2UValueError(f"`argv[0]` {exe!r} names a file of `files`: write "
                                     f"'./{exe}' to run the staged copy")
            return
        if os.sep in exe and not os.path.isabs(exe):
            raise FG2UValueError(
                f"`argv[0]` {exe!r} is a relative path, but the command runs in a fresh "
                "working directory: pass an absolute path, or add the file to `files=`")
        if shutil.which(exe) is None:
            hint = f"; {self.install_hint}" if self.install_hint else ""
            raise FG2UValueError(f"`argv[0]` {exe!r} is not an executable file or not on "
                                 f"PATH{hint}")

    def _check_staged_names(self):
        """A staged file must not be one the adapter or the command writes.

        Linked, the write would go through the link into the user's own file (and
        parallel calls would race on it); copied, the copy would be replaced, or read
        back as the output of a command that failed to write one.
        """
        written = {STDOUT_LOG: "the command's stdout log", STDERR_LOG: "its stderr log",
                   FAILURE_NOTE: "the note of a failed call"}
        if self.template is not None:
            written[self.input_name] = "`input_name`, where the template is rendered"
        if self.output is not None:
            written[self.output] = "`output`, which the command writes"
        for path in self.files:
            base = os.path.basename(path)
            if base in written:
                how = "linked (link=True)" if self.link else "copied"
                raise FG2UValueError(
                    f"`files` entry {path!r} would be {how} into each working directory "
                    f"as {base!r}, which is {written[base]}: that file would be "
                    f"{'overwritten through the link' if self.link else 'replaced'}; "
                    "rename the file or choose another name")
        if not self.link:
            return
        linked = {os.path.basename(path): path for path in self.files}
        for arg, name in (("input_name", self.input_name if self.template is not None
                           else None), ("output", self.output)):
            first = None if name is None else name.replace(os.sep, "/").split("/")[0]
            if first in linked and first != name:
                raise FG2UValueError(
                    f"`{arg}` {name!r} lies in {first!r}, which `files` links (link=True) "
                    f"to your folder {linked[first]!r}: every call would write it there, "
                    "and parallel calls would read each other's files. Give it a name "
                    f"outside {first!r} (e.g. {arg}={os.path.basename(name)!r}), or "
                    "copy the folder (link=False)")

    # -- one evaluation ------------------------------------------------------------

    def __call__(self, phi, *, warm_start=None, seed=None):
        """Run the command once for ``phi`` and return its output as a float64 array."""
        phi = as_phi(phi, n_params=self.n_params)
        # Render before creating anything: a bad placeholder value must not start a run.
        text = (render_template(self._fields, phi, self.names, seed)
                if self._fields is not None else None)
        root = self.workdir_root or tempfile.gettempdir()
        key = _point_key(phi, seed)
        workdir = new_workdir(root, self._tag, key)
        tracked = not self.keep_workdir
        if tracked:
            track_workdir(workdir, root=root, tag=self._tag, key=key, keep=self.keep_failed,
                          max_bytes=self.keep_failed_bytes)
        try:
            theta = self._evaluate(workdir, phi, text, seed, warm_start)
        except InnerSolverError as exc:
            self._keep_failure(exc, workdir, root, key)
            raise
        except (FG2UValueError, FG2UTypeError):
            # Deterministic: phi does not fit the writer; nothing ran worth keeping.
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        except BaseException as exc:
            # An evaluator's timeout (SIGALRM), Ctrl-C, SIGTERM: the command's group is
            # already killed; keep the directory like that of any failure.
            if tracked:
                keep_failure(workdir, root=root, tag=self._tag, key=key,
                             keep=self.keep_failed, max_bytes=self.keep_failed_bytes,
                             note=f"interrupted by {type(exc).__name__}: {exc}")
            raise
        else:
            if tracked:
                shutil.rmtree(workdir, ignore_errors=True)
                forget_failure(root, self._tag, key)
            return theta
        finally:
            if tracked:
                untrack_workdir(workdir)

    def _evaluate(self, workdir, phi, text, seed, warm_start):
        # Links are made after the writer has run, so that it cannot write through one
        # into the user's own file; copies before, so that it may edit them.
        if self.writer is not None and self.link:
            self._call_writer(phi, workdir, seed, warm_start)
        try:
            self._stage(workdir)
            if text is not None:
                with open(os.path.join(workdir, self.input_name), "w", encoding="utf-8") as fh:
                    fh.write(text)
        except OSError as exc:
            raise InnerSolverError(f"cannot prepare the working directory (working "
                                   f"directory kept: {workdir}): {exc}",
                                   kind="exception", workdir=workdir) from exc
        if self.writer is not None and not self.link:
            self._call_writer(phi, workdir, seed, warm_start)
        self._run(workdir)
        return self._read(workdir)

    def _keep_failure(self, exc, workdir, root, key):
        """Keep (bounded) or remove the directory of a failed call; fix the message."""
        if self.keep_workdir:
            return
        message = exc.args[0] if exc.args else ""
        final = keep_failure(workdir, root=root, tag=self._tag, key=key,
                             keep=self.keep_failed, max_bytes=self.keep_failed_bytes,
                             note=f"{exc.kind}: {message}")
        slot = f"(working directory kept: {workdir})"
        if final is None:
            message = message.replace(slot, "(working directory removed: keep_failed=0)")
        else:
            message = message.replace(slot, (
                f"(working directory kept: {final}; this solver keeps the directories of "
                f"its last {self.keep_failed} failures)")).replace(workdir, final)
        exc.args = (message, *exc.args[1:])
        exc.workdir = final

    def _stage(self, workdir):
        for src in self.files:
            dst = os.path.join(workdir, os.path.basename(src))
            if self.link:
                if os.path.lexists(dst):
                    raise FG2UValueError(
                        f"`writer` wrote {os.path.basename(src)!r}, the name under which "
                        f"`files` links {src!r} into the working directory; rename one of "
                        "them")
                os.symlink(src, dst)
            elif os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)

    def _call_writer(self, phi, workdir, seed, warm_start):
        extra = {"seed": seed, "warm_start": warm_start}
        kwargs = {k: extra[k] for k in self._writer_kwargs}
        try:
            self.writer(phi.copy(), workdir, **kwargs)
        except (FG2UValueError, FG2UTypeError):
            raise  # the writer refuses this phi: deterministic, not worth a retry
        except Exception as exc:
            raise InnerSolverError(f"`writer` raised {type(exc).__name__}: {exc} "
                                   f"(working directory kept: {workdir})", kind="exception",
                                   detail=exception_detail(exc), workdir=workdir) from exc

    def _child_env(self):
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        for name in THREAD_LIMIT_VARS:
            env.setdefault(name, "1")
        return env

    def _run(self, workdir):
        kept = f"(working directory kept: {workdir})"
        cancelled = task_cancellation()
        with open(os.path.join(workdir, STDOUT_LOG), "wb") as out, \
                open(os.path.join(workdir, STDERR_LOG), "wb") as err:
            try:
                proc = start_command(self.argv, cwd=workdir, env=self._child_env(),
                                     stdout=out, stderr=err, owner=self._owner)
            except OSError as exc:
                hint = f"; {self.install_hint}" if self.install_hint else ""
                missing = isinstance(exc, (FileNotFoundError, PermissionError,
                                           NotADirectoryError))
                raise InnerSolverError(
                    f"cannot execute {self.argv[0]!r} ({type(exc).__name__}: {exc}){hint} "
                    f"{kept}", kind="missing_executable" if missing else "exception",
                    workdir=workdir) from None
            started = time.monotonic()
            outcome = wait_then_clean_group(proc, self.timeout, self.kill_grace, cancelled)
        stderr_tail = file_tail(os.path.join(workdir, STDERR_LOG))
        if outcome == TIMED_OUT:
            elapsed = time.monotonic() - started
            raise InnerSolverError(
                f"command {self.argv!r} timed out after {elapsed:.1f} s (timeout="
                f"{self.timeout:g} s); its process group was killed {kept}"
                f"{self._log_tails(workdir)}", kind="timeout", detail=stderr_tail,
                workdir=workdir)
        if outcome == CANCELLED:
            raise InnerSolverError(
                f"the dask task running command {self.argv!r} was cancelled (the run "
                f"stopped or gave up on this evaluation); its process group was killed "
                f"{kept}", kind="cancelled", detail=stderr_tail, workdir=workdir)
        rc = proc.returncode
        if rc != 0:
            how = f"return code {rc}"
            if rc < 0:
                try:
                    how += f" (killed by {signal.Signals(-rc).name})"
                except ValueError:
                    pass
            raise InnerSolverError(
                f"command {self.argv!r} exited with {how} {kept}{self._log_tails(workdir)}",
                kind="returncode", detail=stderr_tail, workdir=workdir)

    def _log_tails(self, workdir):
        text = ""
        for label, name in (("stderr", STDERR_LOG), ("stdout", STDOUT_LOG)):
            tail = file_tail(os.path.join(workdir, name))
            if tail:
                text += f"\n--- {label} (last {TAIL_LINES} lines) ---\n{tail}"
        return text

    def _read(self, workdir):
        kept = f"(working directory kept: {workdir})"
        where = f"command {self.argv!r}"
        if self.reader is not None:
            try:
                value = self.reader(workdir)
            except Exception as exc:
                raise InnerSolverError(
                    f"`reader` raised {type(exc).__name__}: {exc} {kept}"
                    f"{self._log_tails(workdir)}", kind="output",
                    detail=exception_detail(exc), workdir=workdir) from exc
        else:
            value = read_output_file(workdir, self.output, self.text_format, self._log_tails)
            where += f" (output file {self.output!r})"
        try:
            return as_theta(value, where=where, n_outputs=self.n_outputs, workdir=workdir)
        except InnerSolverError as exc:
            # Wrong count or NaN: what the program said about it (a warning on stderr)
            # is the first thing the user needs.
            exc.args = (f"{exc.args[0]} {kept}{self._log_tails(workdir)}",)
            exc.detail = exc.detail or file_tail(os.path.join(workdir, STDERR_LOG))
            raise


# -- helpers -------------------------------------------------------------------------

def _point_key(phi, seed):
    """Identifies a point across retries: a hash of phi's bytes and the seed."""
    digest = hashlib.blake2b(phi.tobytes(), digest_size=6)
    digest.update(repr(seed).encode())
    return digest.hexdigest()


def _read_template(template, template_file):
    """The template text from ``template`` (text or a path) or ``template_file``."""
    if template_file is not None:
        if template is not None:
            raise FG2UValueError("pass either `template` (the text) or `template_file` "
                                 "(a file holding it), not both")
        if not isinstance(template_file, (str, os.PathLike)):
            raise FG2UTypeError(f"`template_file` must be a path, got "
                                f"{type(template_file).__name__}")
        template = os.fspath(template_file)
        if not os.path.isfile(template):
            raise FG2UValueError(f"`template_file` {template!r} is not a file")
        with open(template, encoding="utf-8") as fh:
            return fh.read()
    if isinstance(template, os.PathLike):
        with open(template, encoding="utf-8") as fh:
            return fh.read()
    if template is not None and not isinstance(template, str):
        raise FG2UTypeError("`template` must be a str (the template text) or a "
                            f"pathlib.Path (a file to read), got {type(template).__name__}")
    if template is not None and _names_a_file(template):
        warnings.warn(
            f"`template` {template!r} is the name of an existing file, but a str is the "
            "text of the input deck: the command will read that name, not the file's "
            "contents. Pass template_file=... or a pathlib.Path to read the file",
            FG2UWarning, stacklevel=3)
    return template


def _names_a_file(text):
    if "{" in text or "\n" in text or len(text) > 4096:
        return False
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):
        return False


def _check_argv(argv):
    if isinstance(argv, (str, bytes)):
        raise FG2UTypeError(
            f"`argv` must be a list of arguments, not a string ({argv!r}): no shell is used, "
            f"so write e.g. {str(argv).split()!r}")
    try:
        items = list(argv)
    except TypeError:
        raise FG2UTypeError(f"`argv` must be a list of str, got {type(argv).__name__}") from None
    if not items:
        raise FG2UValueError("`argv` must not be empty; its first item is the executable")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)):
            raise FG2UTypeError(f"`argv[{i}]` must be a str or path, got "
                                f"{type(item).__name__} ({item!r}); convert numbers with str()")
        out.append(os.fspath(item))
    return out


def _check_names(names):
    if names is None:
        return None
    if isinstance(names, str):
        raise FG2UTypeError("`names` must be a list of str, not a single str")
    names = [str(n) for n in names]
    for name in names:
        if not name.isidentifier() or name in ("phi", "n", "seed"):
            raise FG2UValueError(f"`names` entry {name!r} must be a Python identifier other "
                                 "than 'phi', 'n' and 'seed'")
    if len(set(names)) != len(names):
        raise FG2UValueError(f"`names` must be unique, got {names!r}")
    return names


def _check_relative_name(name, arg):
    if not isinstance(name, (str, os.PathLike)):
        raise FG2UTypeError(f"`{arg}` must be a file name, got {type(name).__name__}")
    name = os.fspath(name)
    if not name or os.path.isabs(name) or ".." in name.split(os.sep):
        raise FG2UValueError(f"`{arg}` must be a file name relative to the working "
                             f"directory, got {name!r}")
    return name


def _check_files(files):
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    out = []
    for f in files:
        path = os.path.abspath(os.fspath(f))
        if not os.path.exists(path):
            raise FG2UValueError(f"`files` entry {os.fspath(f)!r} does not exist")
        out.append(path)
    bases = [os.path.basename(p) for p in out]
    if len(set(bases)) != len(bases):
        raise FG2UValueError(f"`files` must have distinct base names, got {bases!r}")
    return out


def _accepted_kwargs(func, names):
    if func is None:
        return ()
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return tuple(names)
    return tuple(n for n in names if n in params)

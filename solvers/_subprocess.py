"""Run an external executable (a legacy simulator) as an inner solver."""

from __future__ import annotations

import inspect
import os
import select
import shutil
import signal
import string
import subprocess
import tempfile
import time

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError

from ._adapter_common import (as_phi, as_theta, exception_detail, optional_positive_number,
                              positive_int, positive_number)

__all__ = ["Subprocess"]

# Each evaluation is one process among many running in parallel; a child that starts
# one BLAS/OpenMP thread per core would oversubscribe the machine n_jobs times over.
THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "VECLIB_MAXIMUM_FRAMEWORK_THREADS", "NUMEXPR_NUM_THREADS")

STDOUT_LOG = "fg2u-stdout.log"
STDERR_LOG = "fg2u-stderr.log"
_TAIL_LINES = 20
_HEAD_LINES = 5


class Subprocess:
    """An external command as an inner solver, one fresh working directory per call.

    Each call ``solver(phi)`` creates a temporary directory, writes ``phi`` into it (from
    a template or with a ``writer``), copies the static ``files`` in, runs ``argv`` there
    without a shell, reads the result back (from ``output`` or with a ``reader``) and
    removes the directory.

    Parameters
    ----------
    argv : sequence of str
        The command as an argument list, e.g. ``["./sim", "input.txt"]``. A single string
        is refused: no shell is ever used, so there is nothing to split it. Arguments may
        name files of the working directory by relative path (the command runs there).
    template : str or os.PathLike, optional
        Input deck written to ``input_name`` before the run. A ``pathlib.Path`` (any
        ``os.PathLike``) is read as a file, once, at construction; a ``str`` is the
        template text itself. Placeholders use Python's format syntax and are filled
        with numbers only:

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
    input_name : str, default "input.txt"
        File name of the rendered template in the working directory.
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
        rows are concatenated (the result is flattened).
    reader : callable, optional
        ``reader(workdir) -> array``, instead of ``output``. The array is flattened.
    files : sequence of path-like, default ()
        Static files or directories copied into each working directory (under their
        base name) before the run, e.g. a mesh or the executable itself.
    link : bool, default False
        Symlink ``files`` instead of copying them (faster for large files; the command
        must not modify them).
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
        Directories are named ``fg2u-*``.
    keep_workdir : bool, default False
        Keep every working directory. Whatever this is, the directory of a *failed*
        call is kept, and its path is in the error message and in
        :attr:`InnerSolverError.workdir`.
    n_outputs : int, optional
        Expected number of outputs; any other count raises ``InnerSolverError``
        (``kind="shape"``).
    check_executable : bool, default True
        Check at construction that ``argv[0]`` exists (on ``PATH``, or in ``files``).
        Turn off when the executable exists only on remote workers.
    install_hint : str, optional
        Appended to the error raised when the executable is missing (e.g. how to
        install it).

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
    - ``"shape"`` / ``"nonfinite"``: wrong count / NaN or inf in the output;
    - ``"exception"``: ``writer`` raised.

    A ``phi`` that is not 1-D or not finite raises ``FG2UValueError`` before anything
    is created or run. Processes the command left running in its process group are
    killed when it exits, so evaluations leave nothing behind.

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

    def __init__(self, argv, *, template=None, input_name="input.txt", names=None,
                 writer=None, output=None, reader=None, files=(), link=False, timeout=None,
                 kill_grace=0.5, env=None, workdir_root=None, keep_workdir=False,
                 n_outputs=None, check_executable=True, install_hint=None):
        self.argv = _check_argv(argv)
        self.names = _check_names(names)
        if template is not None and writer is not None:
            raise FG2UValueError("pass either `template` or `writer`, not both")
        if isinstance(template, os.PathLike):
            with open(template, encoding="utf-8") as fh:
                template = fh.read()
        if template is not None and not isinstance(template, str):
            raise FG2UTypeError("`template` must be a str (the template text) or a "
                                f"pathlib.Path (a file to read), got {type(template).__name__}")
        self.template = template
        self._fields = _parse_template(template, self.names) if template is not None else None
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
        self.files = _check_files(files)
        self.link = bool(link)
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
        self.n_outputs = None if n_outputs is None else positive_int(n_outputs, "n_outputs")
        self.install_hint = install_hint
        if check_executable:
            self._check_executable()

    def __repr__(self):
        return f"Subprocess({self.argv!r}, timeout={self.timeout!r})"

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

    # -- one evaluation ------------------------------------------------------------

    def __call__(self, phi, *, warm_start=None, seed=None):
        """Run the command once for ``phi`` and return its output as a float64 array."""
        phi = as_phi(phi)
        # Render before creating anything: a bad placeholder value must not start a run.
        text = self._render(phi, seed) if self._fields is not None else None
        workdir = tempfile.mkdtemp(prefix="fg2u-", dir=self.workdir_root)
        ok = False
        try:
            try:
                self._stage(workdir)
            except OSError as exc:
                raise InnerSolverError(f"cannot stage `files` into {workdir}: {exc}",
                                       kind="exception", workdir=workdir) from exc
            if text is not None:
                with open(os.path.join(workdir, self.input_name), "w", encoding="utf-8") as fh:
                    fh.write(text)
            elif self.writer is not None:
                self._call_writer(phi, workdir, seed, warm_start)
            self._run(workdir)
            theta = self._read(workdir)
            ok = True
            return theta
        finally:
            if ok and not self.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def _render(self, phi, seed):
        named = None
        if self.names is not None and len(self.names) != phi.shape[0]:
            raise FG2UValueError(f"`names` has {len(self.names)} entries but `phi` has "
                                 f"{phi.shape[0]}; give one name per entry of phi")
        parts = []
        for literal, key, index, spec in self._fields:
            parts.append(literal)
            if key is None:
                continue
            if key == "phi":
                if index is None:
                    parts.append(" ".join(_format_number(v, spec) for v in phi.tolist()))
                    continue
                if not -phi.shape[0] <= index < phi.shape[0]:
                    raise FG2UValueError(f"template placeholder {{phi[{index}]}} is out of "
                                         f"range for phi of length {phi.shape[0]}")
                value = float(phi[index])
            elif key == "n":
                value = phi.shape[0]
            elif key == "seed":
                if seed is None:
                    raise FG2UValueError("the template uses {seed} but the call got no "
                                         "`seed`; call solver(phi, seed=...)")
                value = _finite_int(seed, "seed")
            else:
                if named is None:
                    named = dict(zip(self.names, phi.tolist()))
                value = named[key]
            parts.append(_format_number(value, spec))
        return "".join(parts)

    def _stage(self, workdir):
        for src in self.files:
            dst = os.path.join(workdir, os.path.basename(src))
            if self.link:
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
        with open(os.path.join(workdir, STDOUT_LOG), "wb") as out, \
                open(os.path.join(workdir, STDERR_LOG), "wb") as err:
            try:
                proc = subprocess.Popen(self.argv, cwd=workdir, env=self._child_env(),
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                hint = f"; {self.install_hint}" if self.install_hint else ""
                raise InnerSolverError(
                    f"cannot execute {self.argv[0]!r} ({type(exc).__name__}: {exc}){hint} "
                    f"(working directory kept: {workdir})", kind="missing_executable",
                    workdir=workdir) from None
            started = time.monotonic()
            finished = _wait_then_clean_group(proc, self.timeout, self.kill_grace)
        if not finished:
            elapsed = time.monotonic() - started
            raise InnerSolverError(
                f"command {self.argv!r} timed out after {elapsed:.1f} s (timeout="
                f"{self.timeout:g} s); its process group was killed (working directory "
                f"kept: {workdir}){self._log_tails(workdir)}", kind="timeout",
                detail=_tail(os.path.join(workdir, STDERR_LOG)), workdir=workdir)
        rc = proc.returncode
        if rc != 0:
            how = f"return code {rc}"
            if rc < 0:
                try:
                    how += f" (killed by {signal.Signals(-rc).name})"
                except ValueError:
                    pass
            raise InnerSolverError(
                f"command {self.argv!r} exited with {how} (working directory kept: "
                f"{workdir}){self._log_tails(workdir)}", kind="returncode",
                detail=_tail(os.path.join(workdir, STDERR_LOG)), workdir=workdir)

    def _log_tails(self, workdir):
        text = ""
        for label, name in (("stderr", STDERR_LOG), ("stdout", STDOUT_LOG)):
            tail = _tail(os.path.join(workdir, name))
            if tail:
                text += f"\n--- {label} (last {_TAIL_LINES} lines) ---\n{tail}"
        return text

    def _read(self, workdir):
        where = f"command {self.argv!r}"
        if self.reader is not None:
            try:
                value = self.reader(workdir)
            except Exception as exc:
                raise InnerSolverError(
                    f"`reader` raised {type(exc).__name__}: {exc} (working directory kept: "
                    f"{workdir}){self._log_tails(workdir)}", kind="output",
                    detail=exception_detail(exc), workdir=workdir) from exc
        else:
            value = _read_output_file(workdir, self.output, self._log_tails)
            where += f" (output file {self.output!r})"
        try:
            return as_theta(value, where=where, n_outputs=self.n_outputs, workdir=workdir)
        except InnerSolverError as exc:
            exc.args = (f"{exc.args[0]} (working directory kept: {workdir})",)
            raise


# -- helpers -------------------------------------------------------------------------

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


def _parse_template(text, names):
    """Split the template once into (literal, key, index, spec) pieces; refuse unknowns."""
    allowed = {"phi", "n", "seed", *(names or ())}
    fields = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise FG2UValueError(f"`template` is not a valid format string ({exc}); write "
                             "literal braces as '{{' and '}}'") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            fields.append((literal, None, None, None))
            continue
        key, index = field, None
        if "[" in field:
            key, _, rest = field.partition("[")
            if key != "phi" or not rest.endswith("]"):
                raise FG2UValueError(f"template placeholder {{{field}}}: only phi can be "
                                     "indexed, as in {phi[3]}")
            try:
                index = int(rest[:-1])
            except ValueError:
                raise FG2UValueError(f"template placeholder {{{field}}}: the index must be "
                                     "an integer, as in {phi[3]}") from None
        if key not in allowed or "." in field or conversion:
            known = ", ".join("{" + a + "}" for a in sorted(allowed))
            raise FG2UValueError(f"unknown template placeholder {{{field}}}; known: {known} "
                                 "and {phi[i]} (literal braces are written '{{' and '}}')")
        if spec:
            try:
                format(1.0, spec)
            except ValueError:
                raise FG2UValueError(f"template placeholder {{{field}:{spec}}}: invalid "
                                     "format spec for a number") from None
        fields.append((literal, key, index, spec))
    return fields


def _format_number(value, spec):
    if spec:
        return format(value, spec)
    # repr of a Python float is the shortest string that reads back to the same double.
    return repr(value) if isinstance(value, float) else str(value)


def _finite_int(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FG2UValueError(f"`{name}` must be an int, got {value!r}") from None


def _wait_then_clean_group(proc, timeout, grace):
    """Wait for ``proc``; on timeout kill its process group. True if it finished in time.

    The child is waited for *without reaping it* (pidfd / waitid WNOWAIT): while it is
    a zombie its pid, which is also the process-group id, cannot be recycled, so the
    final ``killpg`` -- which removes whatever the command left running in its group --
    cannot hit an unrelated group.
    """
    pgid = proc.pid
    try:
        finished = _wait_unreaped(proc, timeout)
    except BaseException:
        # KeyboardInterrupt or a worker being cancelled: do not leave the command running.
        _killpg(pgid, signal.SIGKILL)
        proc.wait()
        raise
    if not finished:
        _killpg(pgid, signal.SIGTERM)
        if grace > 0:
            _wait_unreaped(proc, grace)
    _killpg(pgid, signal.SIGKILL)
    proc.wait()
    return finished


def _wait_unreaped(proc, timeout):
    if timeout is None:
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            return True
        except (AttributeError, ChildProcessError):
            proc.wait()
            return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        # No pidfd (non-Linux): poll; the zombie is reaped, so the race above is
        # back, but only for the microseconds between reaping and killpg.
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        # PEP 475: poll() restarts with the remaining timeout after a signal.
        return bool(poller.poll(timeout * 1000.0))
    finally:
        os.close(fd)


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path, n=_TAIL_LINES, max_bytes=16384):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()
    return "\n".join(lines[-n:])


def _head(path, n=_HEAD_LINES, max_bytes=4096):
    with open(path, "rb") as fh:
        data = fh.read(max_bytes)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(line[:200] for line in lines[:n])


def _read_output_file(workdir, name, log_tails):
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        present = sorted(os.listdir(workdir))
        raise InnerSolverError(
            f"output file {name!r} was not written by the command (working directory kept: "
            f"{workdir}; it holds {present}){log_tails(workdir)}", kind="output",
            workdir=workdir)
    if name.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InnerSolverError(f"output file {name!r} is not a valid .npy file: {exc} "
                                   f"(working directory kept: {workdir})", kind="output",
                                   workdir=workdir) from None
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    try:
        values = _parse_numbers(text)
    except ValueError as exc:
        raise InnerSolverError(
            f"output file {name!r} is not a list of numbers ({exc}); first lines:\n"
            f"{_head(path)}\n(working directory kept: {workdir})", kind="output",
            workdir=workdir) from None
    if values.size == 0:
        raise InnerSolverError(f"output file {name!r} is empty (working directory kept: "
                               f"{workdir}){log_tails(workdir)}", kind="output",
                               workdir=workdir)
    return values


def _parse_numbers(text):
    if "#" in text:
        text = "\n".join(line.partition("#")[0] for line in text.splitlines())
    tokens = text.replace(",", " ").replace(";", " ").split()
    try:
        return np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        pass
    out = []
    for t in tokens:
        try:
            out.append(float(t))
        except ValueError:
            try:
                # Fortran writes double-precision exponents as 1.5D-03.
                out.append(float(t.replace("D", "E").replace("d", "e")))
            except ValueError:
                raise ValueError(f"cannot read {t[:40]!r} as a number") from None
    return np.array(out, dtype=np.float64)

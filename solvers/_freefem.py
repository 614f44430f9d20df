"""FreeFem++ scripts as inner solvers, and the shipped diffusion model."""

from __future__ import annotations

import hashlib
import os
import shutil

from fg2u_zo.errors import FG2UTypeError, FG2UValueError

from ._adapter_common import as_phi, positive_int
from ._fingerprint import adapter_name
from ._subprocess import Subprocess

__all__ = ["FreeFem", "diffusion_model", "MODELS_DIR"]

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

# -nw: no graphics window (runs headless, no ffglut); -ne: do not echo the script;
# -v 0: no banner or solver chatter. Errors still go to stdout, which the adapter shows.
FREEFEM_FLAGS = ("-nw", "-ne", "-v", "0")

INSTALL_HINT = ("install FreeFem++ with `apt-get install freefem++` (Debian/Ubuntu) or see "
                "https://freefem.org, or pass `executable=` the path to FreeFem++")


class FreeFem:
    """A FreeFem++ script as an inner solver.

    Each call runs ``FreeFem++ -nw -ne -v 0 <script> <args...>`` in a fresh working
    directory (through :class:`solvers.Subprocess`): the script reads ``phi`` from the
    parameter file and writes its result to the output file.

    **Parameter file** (``param_file``, default ``phi.txt``): the count ``N`` on the first
    line, then the ``N`` entries of ``phi``, one per line, each as the shortest decimal
    string that reads back to the same double (``repr(float)``, at most 17 significant
    digits), so the script sees ``phi`` exactly. Read it in FreeFem++ with::

        ifstream fin("phi.txt");
        int N; fin >> N;
        real[int] phi(N);
        for (int i = 0; i < N; ++i) fin >> phi[i];

    **Output file** (``output``, default ``u.txt``): numbers separated by whitespace, in
    an order the script documents. FreeFem++ streams print 6 significant digits by
    default, which makes finite differences useless below a relative step of about
    1e-4; write with full precision::

        ofstream fout("u.txt");
        fout.precision(17);
        for (int s = 0; s < M; ++s) fout << values[s] << "\\n";

    Parameters
    ----------
    script : path-like
        The ``.edp`` file. It is read once, here, and written into every working
        directory, so the solver is self-contained when pickled to remote workers; a
        file it includes must be listed in ``files``.
    args : sequence of str, default ()
        Script arguments after the script name, visible in FreeFem++ as ``ARGV``.
    output : str, default "u.txt"
        The file the script writes (text, flattened).
    param_file : str, default "phi.txt"
        The file the adapter writes ``phi`` to.
    files : sequence of path-like, default ()
        Extra files copied into the working directory (meshes, ``.idp`` includes).
    n_params, n_outputs : int, optional
        Expected lengths of ``phi`` and of the output; checked on every call.
    timeout : float, default 60
        Seconds before the FreeFem++ process group is killed.
    executable : str, default "FreeFem++"
        The FreeFem++ executable (name on ``PATH`` or absolute path).
    flags : sequence of str, default ("-nw", "-ne", "-v", "0")
        FreeFem++ options before the script name: headless, no echo, quiet.
    **kwargs
        Passed to :class:`solvers.Subprocess` (``env``, ``workdir_root``,
        ``keep_workdir``, ``keep_failed``, ``keep_failed_bytes``, ``link``,
        ``kill_grace``, ``version``, and ``skiprows``, ``usecols``, ``comments`` for an
        output table with a header or extra columns).

    Raises
    ------
    FG2UValueError
        If the script does not exist or FreeFem++ is not on ``PATH`` (the message says
        ``apt-get install freefem++``).

    Notes
    -----
    ``seed`` and ``warm_start`` are accepted and ignored: FreeFem++ models here are
    deterministic direct solves. Failures raise :class:`fg2u_zo.InnerSolverError` as
    documented in :class:`solvers.Subprocess`; a script error is ``kind="returncode"``
    with FreeFem++'s message (which it prints on stdout) in the error message.

    Smoothness for finite differences: the output is as smooth as the script makes it.
    With a direct sparse solver and 17 printed digits the noise is at the rounding
    level (relative ~1e-15), so steps down to ~1e-6 are fine; with FreeFem++'s default
    6 digits the noise is ~1e-6 relative and a step of 1e-6 gives O(1) errors.

    Examples
    --------
    >>> import os
    >>> import numpy as np
    >>> from solvers import FreeFem
    >>> from solvers._freefem import MODELS_DIR
    >>> solver = FreeFem(os.path.join(MODELS_DIR, "diffusion.edp"),
    ...                  args=["-mesh", "16"], n_params=4)
    >>> solver(np.ones(4)).shape
    (144,)
    """

    def __init__(self, script, *, args=(), output="u.txt", param_file="phi.txt", files=(),
                 n_params=None, n_outputs=None, timeout=60.0, executable="FreeFem++",
                 flags=FREEFEM_FLAGS, **kwargs):
        if not isinstance(script, (str, os.PathLike)):
            raise FG2UTypeError(f"`script` must be a path to a .edp file, got "
                                f"{type(script).__name__}")
        script = os.path.abspath(os.fspath(script))
        if not os.path.isfile(script):
            raise FG2UValueError(f"`script` {script!r} does not exist")
        with open(script, encoding="utf-8") as fh:
            source = fh.read()
        if isinstance(args, (str, bytes)):
            raise FG2UTypeError("`args` must be a list of str, e.g. ['-mesh', '32'], "
                                "not a single string")
        if shutil.which(executable) is None:
            raise FG2UValueError(f"FreeFem++ executable {executable!r} not found on PATH: "
                                 f"{INSTALL_HINT}")
        self.script = script
        self.args = [str(a) for a in args]
        self.n_params = None if n_params is None else positive_int(n_params, "n_params")
        name = os.path.basename(script)
        staged = {os.path.basename(os.fspath(f)): os.fspath(f) for f in
                  ([files] if isinstance(files, (str, os.PathLike)) else files)}
        for written, what in ((name, "the script"), (param_file, "`param_file`")):
            if written in staged:
                raise FG2UValueError(f"`files` has an entry named {written!r}, the name of "
                                     f"{what}, which is written into each working directory; "
                                     "rename one of them")
        first = str(param_file).replace(os.sep, "/").split("/")[0]
        if kwargs.get("link") and first in staged and first != param_file:
            raise FG2UValueError(
                f"`param_file` {param_file!r} lies in {first!r}, which `files` links "
                f"(link=True) to your folder {staged[first]!r}: every call would write it "
                "there; give it a name outside that folder, or copy it (link=False)")
        writer = _FreeFemInput(param_file, name, source)
        self._run = Subprocess([executable, *flags, name, *self.args], writer=writer,
                               output=output, files=files, timeout=timeout,
                               n_outputs=n_outputs, install_hint=INSTALL_HINT, **kwargs)

    def __repr__(self):
        return f"FreeFem({self.script!r}, args={self.args!r})"

    @property
    def argv(self):
        """The command line run in each working directory."""
        return list(self._run.argv)

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data.

        That of its :class:`~solvers.Subprocess` (the command line, the SHA-256 of the
        FreeFem++ executable, the staged files' digests, how the output is read,
        ``version`` ...), with the script's name, the SHA-256 of its text and
        ``param_file`` instead of the writer.
        """
        out = self._run.fingerprint()
        writer = self._run.writer
        out.update(adapter=adapter_name(self), writer=None,
                   script=writer.script_name, param_file=writer.param_file,
                   script_sha256=hashlib.sha256(writer.script_source.encode()).hexdigest())
        return out

    def __call__(self, phi, *, warm_start=None, seed=None):
        """Run the script once for ``phi``; return its output as a 1-D float64 array."""
        phi = as_phi(phi, n_params=self.n_params)
        return self._run(phi)


class _FreeFemInput:
    """Writes the script and the parameter file; a class so that it pickles."""

    def __init__(self, param_file, script_name, script_source):
        self.param_file = param_file
        self.script_name = script_name
        self.script_source = script_source

    def __call__(self, phi, workdir):
        with open(os.path.join(workdir, self.script_name), "w", encoding="utf-8") as fh:
            fh.write(self.script_source)
        with open(os.path.join(workdir, self.param_file), "w", encoding="utf-8") as fh:
            fh.write(format_param_file(phi))


def format_param_file(phi):
    """The parameter-file text for ``phi``: the count, then one exact value per line."""
    values = phi.tolist()
    return f"{len(values)}\n" + "\n".join(map(repr, values)) + "\n"


def diffusion_model(K=8, *, mesh=None, precision=17, log_k=False, source=1.0, **kwargs):
    """The shipped FreeFem++ model ``models/diffusion.edp``, configured.

    Steady diffusion on the unit square with homogeneous Dirichlet conditions::

        -div(k grad u) = source   in (0, 1)^2,      u = 0 on the boundary,

    with the conductivity ``k`` constant on each of ``K x K`` square patches:
    ``k = phi[i + K*j]`` on ``[i/K, (i+1)/K) x [j/K, (j+1)/K)`` (or ``exp(phi[...])``
    with ``log_k=True``), so ``N = K**2``. The solution is observed at ``M = 144``
    sensors, the interior 12 x 12 grid ``((a+1)/13, (b+1)/13)``, ``a, b = 0..11``, in
    the order ``s = a + 12*b`` (x fastest). P1 elements on a uniform ``mesh x mesh``
    triangulation aligned with the patches; sparse direct solve.

    Parameters
    ----------
    K : int, default 8
        Patches per side; ``phi`` has ``K**2`` entries.
    mesh : int, optional
        Cells per side of the mesh, a multiple of ``K`` (default ``8 * K``; at 64 a
        solve takes ~40 ms including FreeFem++'s ~20 ms start-up).
    precision : int or None, default 17
        Significant digits printed for ``u``. 17 makes the output exact to the double,
        which is what finite differences need. ``None`` (or 6) keeps FreeFem++'s
        default of 6 digits -- noise ~1e-6 relative, shown in the tests to ruin
        finite differences at small steps.
    log_k : bool, default False
        Parameterize ``log k`` instead of ``k`` (keeps ``k > 0`` for any ``phi``). With
        ``log_k=False`` a ``phi`` with an entry ``<= 0`` makes the script exit with code
        3 (``InnerSolverError`` of kind ``"returncode"``).
    source : float, default 1.0
        The constant right-hand side ``f``; ``u`` is linear in it.
    **kwargs
        Passed to :class:`FreeFem` (``timeout``, ``executable``, ``env`` ...).

    Returns
    -------
    FreeFem
        The configured solver, ``phi (K**2,) -> u at the sensors (144,)``.

    Examples
    --------
    >>> import numpy as np
    >>> from solvers import diffusion_model
    >>> solver = diffusion_model(K=2, mesh=16)
    >>> u1, u2 = solver(np.ones(4)), solver(2 * np.ones(4))
    >>> bool(np.allclose(u2, u1 / 2, rtol=1e-12))
    True
    """
    K = positive_int(K, "K")
    mesh = 8 * K if mesh is None else positive_int(mesh, "mesh")
    if mesh % K:
        raise FG2UValueError(f"`mesh` must be a multiple of K={K} so that the mesh follows "
                             f"the patches, got {mesh}; try mesh={K * max(1, round(mesh / K))}")
    if precision is None or precision == 6:
        precision_arg = 0
    else:
        precision_arg = positive_int(precision, "precision")
        if precision_arg > 17:
            raise FG2UValueError(f"`precision` must be <= 17 (a double has 17 significant "
                                 f"digits), got {precision}")
    source = float(source)
    args = ["-mesh", str(mesh), "-precision", str(precision_arg),
            "-logk", "1" if log_k else "0", "-source", repr(source)]
    return FreeFem(os.path.join(MODELS_DIR, "diffusion.edp"), args=args, n_params=K * K,
                   n_outputs=144, **kwargs)

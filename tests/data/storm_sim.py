"""A legacy simulator that fails in every way a real one does, for the process tests.

    python storm_sim.py POLICY MARKER [protect=PID] [sync=DIR] [crash=self] [state=DIR]

Reads ``input.txt`` in the working directory: the numbers of ``phi`` on the first
line, and the word ``perturbed`` on a second line for a point that is not the base
point of an estimate (written by the tests' writer from the ``warm_start`` it gets).
Writes ``out.txt``: ``theta = model(phi)``, 3 numbers with 17 digits. ``MARKER`` is
only there to be found in the command lines of the processes, with their children.

POLICY:

    ok        always succeeds
    hang      starts a child (same command line, ``hang0``), creates ``DIR/started``
              when ``sync=DIR`` is given, then both sleep 60 s
    escape    starts a child in a session of its own (``escaped``), which starts
              another one the same way, both to sleep 60 s; once both run, writes
              the output and exits 0: two processes that escaped its process group
    escape-hang
              the same, then sleeps 60 s instead of exiting
    sign      phi[0] < 0: waits (up to 60 s) for ``DIR/started`` when ``sync=DIR`` is
              given, prints to stderr and exits 3; otherwise like hang
    unstable  prints "WARNING unstable" to stderr and writes NaN
    header    writes theta as a table under a header line ``TIME T(0.25) T(0.5)``
    flaky     with ``state=DIR``: a point whose input hashes below 0.3 always fails
              (exit 5); any other point fails at its first attempt (exit 4, noted in
              DIR) and succeeds at the next
    storm     the base point succeeds; a perturbed point fails with a mode drawn from
              a hash of its input line, the same at every attempt: about 5 % each
              exit 3 with a stderr message ("returncode"), NaN after a warning
              ("nonfinite"), 2 numbers instead of 3 ("shape"), sleeping 60 s past the
              adapter's timeout ("timeout"), and SIGKILL of the process that started
              the simulator, i.e. the worker ("crash"; when that process is the
              ``protect=PID`` one, the test process itself, it exits 9 instead; with
              ``crash=self`` it SIGKILLs itself, as an out-of-memory kill would)

Only the standard library, so that it starts fast.
"""

import hashlib
import math
import os
import sys
import time

STORM_BANDS = (("returncode", 0.05), ("nonfinite", 0.10), ("shape", 0.14),
               ("timeout", 0.175), ("crash", 0.21))


def model(phi):
    a, b = phi[0], phi[1]
    return [a + 0.5 * math.sin(b), b + 0.5 * math.sin(a), a * b]


def unit_hash(line):
    """A number in [0, 1) fixed by the input line."""
    return int.from_bytes(hashlib.blake2b(line.strip().encode(), digest_size=8).digest(),
                          "little") / 2.0**64


def storm_mode(line):
    """The failure mode of a perturbed point with input line ``line`` (or None)."""
    u = unit_hash(line)
    for mode, upper in STORM_BANDS:
        if u < upper:
            return mode
    return None


def write(values):
    with open("out.txt", "w") as fh:
        fh.write("\n".join(repr(v) for v in values) + "\n")


def options(argv):
    return dict(a.split("=", 1) for a in argv[3:] if "=" in a)


def hang(argv):
    import subprocess  # only here: a fast start for the other policies

    if argv[1] != "hang0":
        # -S: a fast start, so that the child exists well before any test acts.
        # Popen returns once the child has exec'd: its command line shows from now on.
        subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "hang0",
                          *argv[2:]])
        sync = options(argv).get("sync")
        if sync:
            open(os.path.join(sync, "started"), "w").close()
    time.sleep(60)


def escape(argv, depth):
    """Start ``depth`` generations of processes, each in a new session (``setsid``)."""
    import subprocess

    ready = os.path.abspath(f"escaped-{depth}.ready")
    if depth > 0:
        subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "escaped",
                          *argv[2:], f"depth={depth - 1}"], start_new_session=True)
    open(ready, "w").close()
    if argv[1] == "escaped":
        time.sleep(60)
        return
    # The simulator itself: go on once every generation runs.
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"escaped-{d}.ready") for d in range(depth)) \
            and time.monotonic() < deadline:
        time.sleep(0.01)


def main(argv):
    policy = argv[1]
    if policy == "hang0":
        hang(argv)
        return
    if policy == "escaped":
        escape(argv, int(options(argv)["depth"]))
        return
    with open("input.txt") as fh:
        lines = fh.read().splitlines()
    phi = [float(t) for t in lines[0].split()]
    perturbed = len(lines) > 1 and lines[1].strip() == "perturbed"
    if policy == "hang":
        hang(argv)
    elif policy == "sign":
        if phi[0] < 0:
            sync = options(argv).get("sync")
            deadline = time.monotonic() + 60
            while sync and not os.path.exists(os.path.join(sync, "started")) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            print("negative phi[0]: refusing", file=sys.stderr)
            sys.exit(3)
        hang(argv)
    elif policy in ("escape", "escape-hang"):
        escape(argv, 2)
        if policy == "escape-hang":
            time.sleep(60)
        write(model(phi))
    elif policy == "unstable":
        print("step 1 ok", file=sys.stderr)
        print("WARNING unstable: CFL number 3.2 > 1", file=sys.stderr)
        write([math.nan] * 3)
    elif policy == "header":
        with open("out.txt", "w") as fh:
            fh.write("TIME T(0.25) T(0.5)\n")
            for t, v in zip((0.0, 1.0, 2.0), model(phi)):
                fh.write(f"{t!r} {v!r} {2 * v!r}\n")
    elif policy == "storm" and perturbed and storm_mode(lines[0]) is not None:
        mode = storm_mode(lines[0])
        if mode == "returncode":
            print("solver diverged at iteration 17", file=sys.stderr)
            sys.exit(3)
        elif mode == "nonfinite":
            print("WARNING unstable", file=sys.stderr)
            write([math.nan] * 3)
        elif mode == "shape":
            write(model(phi)[:2])
        elif mode == "timeout":
            time.sleep(60)
        elif mode == "crash":
            import signal
            if options(argv).get("crash") == "self":
                os.kill(os.getpid(), signal.SIGKILL)
            protected = int(options(argv).get("protect", -1))
            if os.getppid() in (protected, 1):
                sys.exit(9)
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)  # the watchdog of the dead worker ends this at once
    elif policy == "flaky":
        u = unit_hash(lines[0])
        seen = os.path.join(options(argv)["state"], f"{u!r}")
        if u < 0.3:
            print("this point always fails", file=sys.stderr)
            sys.exit(5)
        if not os.path.exists(seen):
            open(seen, "w").close()
            print("first attempt fails", file=sys.stderr)
            sys.exit(4)
        write(model(phi))
    elif policy in ("ok", "storm"):
        write(model(phi))
    else:
        sys.exit(f"unknown policy {policy!r}")


if __name__ == "__main__":
    main(sys.argv)

"""A tiny stand-in for a legacy simulator, run by the Subprocess tests.

    python sim.py MODE [ARGS]

Reads the numbers in input.txt (whitespace separated) from the working directory and,
depending on MODE:

    ok         writes sin(x) for every x, then x**2 for every x, to out.txt (repr digits)
    digits6    the same, printed with 6 significant digits (like many legacy codes)
    csv        the same values as ok, as comma-separated rows with Fortran D exponents
    fail       prints 30 numbered lines to stderr, then exits with code 3
    nooutput   exits 0 without writing out.txt
    garbage    writes text that is not numbers to out.txt
    nan        writes "1.0 nan" to out.txt
    env        writes the thread-count variables (-1 when unset) to out.txt
    sleep D [ignore_term]
               appends its pid to pids.txt, starts `sim.py sleep D-1` if D > 0, then
               sleeps 60 s; with ignore_term it ignores SIGTERM
    marker PATH
               creates the file PATH (to show whether the command ran at all)

Only the standard library: its start-up time is what the overhead benchmark compares.
"""

import math
import os
import signal
import subprocess
import sys
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_FRAMEWORK_THREADS", "NUMEXPR_NUM_THREADS")


def read_input():
    with open("input.txt") as fh:
        return [float(t) for t in fh.read().split()]


def known(x):
    return [math.sin(v) for v in x] + [v * v for v in x]


def main(argv):
    mode = argv[1]
    if mode == "marker":
        open(argv[2], "w").close()
        mode = "ok"
    if mode in ("ok", "digits6", "csv"):
        values = known(read_input())
        with open("out.txt", "w") as fh:
            if mode == "ok":
                fh.write("\n".join(repr(v) for v in values) + "\n")
            elif mode == "digits6":
                fh.write("\n".join(f"{v:.6g}" for v in values) + "\n")
            else:
                fh.write("# sin, then squares\n")
                row = ",".join(f"{v:.17e}".replace("e", "D") for v in values)
                fh.write(row + "\n")
    elif mode == "fail":
        for i in range(30):
            print(f"stderr line {i}", file=sys.stderr)
        sys.exit(3)
    elif mode == "nooutput":
        pass
    elif mode == "garbage":
        with open("out.txt", "w") as fh:
            fh.write("hello world\nsegmentation fault in module X\n")
    elif mode == "nan":
        with open("out.txt", "w") as fh:
            fh.write("1.0 nan\n")
    elif mode == "env":
        with open("out.txt", "w") as fh:
            fh.write(" ".join(os.environ.get(v, "-1") for v in THREAD_VARS) + "\n")
    elif mode == "sleep":
        depth = int(argv[2])
        if "ignore_term" in argv[3:]:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open("pids.txt", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        if depth > 0:
            # -S: skip site for a fast start, so the chain is complete well before
            # the test's timeout even on a loaded machine.
            subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "sleep",
                              str(depth - 1), *argv[3:]])
        time.sleep(60)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)

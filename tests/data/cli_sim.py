"""A stand-in legacy simulator for the CLI tests: reads ``params.txt`` (rendered by
fg2u-zo from ``cli_template.txt``), writes ``out.txt``.

    python cli_sim.py

The model: ``y(t) = amplitude * exp(-rate * t) + offset`` at 12 times in [0, 3],
printed with repr() so that finite differences see every digit. Standard library only,
so each run starts fast.
"""

import math

TIMES = [3.0 * k / 11 for k in range(12)]


def read_params(path="params.txt"):
    params = {}
    with open(path) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                key, value = (s.strip() for s in line.split("="))
                params[key] = float(value)
    return params


def model(amplitude, rate, offset):
    return [amplitude * math.exp(-rate * t) + offset for t in TIMES]


if __name__ == "__main__":
    p = read_params()
    with open("out.txt", "w") as fh:
        fh.write("\n".join(repr(v) for v in model(p["amplitude"], p["rate"], p["offset"])))
        fh.write("\n")

"""Reading what an external command wrote: its output file, the ends of its logs.

The output file is either ``*.npy`` (:func:`numpy.load`) or text: numbers separated by
whitespace, commas or semicolons, Fortran ``D`` exponents accepted, rows flattened.
Legacy codes decorate their tables, so three keywords with :func:`numpy.loadtxt`'s
names and meaning select what is read: ``skiprows`` (lines skipped at the top,
comments included), ``usecols`` (columns kept, 0-based, negative from the end) and
``comments`` (the strings that start a comment; ``None``: no comments).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError

__all__ = ["TextFormat", "read_output_file", "parse_numbers", "file_head", "file_tail"]

TAIL_LINES = 20
HEAD_LINES = 5


class TextFormat:
    """The validated ``skiprows`` / ``usecols`` / ``comments`` of a text output file."""

    __slots__ = ("skiprows", "usecols", "comments")

    def __init__(self, skiprows=0, usecols=None, comments="#"):
        if isinstance(skiprows, bool) or not isinstance(skiprows, numbers.Integral):
            raise FG2UTypeError(f"`skiprows` must be an int (lines to skip), got "
                                f"{type(skiprows).__name__}")
        if skiprows < 0:
            raise FG2UValueError(f"`skiprows` must be >= 0, got {skiprows}")
        self.skiprows = int(skiprows)
        self.usecols = _check_usecols(usecols)
        self.comments = _check_comments(comments)

    @property
    def is_default(self) -> bool:
        return self.skiprows == 0 and self.usecols is None and self.comments == ("#",)

    def __repr__(self):
        return (f"TextFormat(skiprows={self.skiprows}, usecols={self.usecols}, "
                f"comments={self.comments})")


def _check_usecols(usecols):
    if usecols is None:
        return None
    if isinstance(usecols, numbers.Integral) and not isinstance(usecols, bool):
        return (int(usecols),)
    if isinstance(usecols, (str, bytes)):
        raise FG2UTypeError(f"`usecols` must be an int or a sequence of ints, got {usecols!r}")
    try:
        cols = tuple(usecols)
    except TypeError:
        raise FG2UTypeError(f"`usecols` must be an int or a sequence of ints, got "
                            f"{type(usecols).__name__}") from None
    if not cols:
        raise FG2UValueError("`usecols` must name at least one column, got an empty "
                             "sequence; pass None to read every column")
    for c in cols:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise FG2UTypeError(f"`usecols` entries must be ints (0-based column "
                                f"indices), got {c!r}")
    return tuple(int(c) for c in cols)


def _check_comments(comments):
    if comments is None:
        return ()
    if isinstance(comments, str):
        comments = (comments,)
    try:
        markers = tuple(comments)
    except TypeError:
        raise FG2UTypeError(f"`comments` must be a str, a sequence of str or None, got "
                            f"{type(comments).__name__}") from None
    for m in markers:
        if not isinstance(m, str) or not m:
            raise FG2UValueError(f"`comments` entries must be non-empty strings, got {m!r}")
    return markers


def _strip_comment(line, markers):
    cut = len(line)
    for m in markers:
        i = line.find(m, 0, cut)
        if i >= 0:
            cut = i
    return line[:cut]


def _fields(line):
    return line.replace(",", " ").replace(";", " ").split()


def _to_float(token):
    try:
        return float(token)
    except ValueError:
        # Fortran writes double-precision exponents as 1.5D-03.
        return float(token.replace("D", "E").replace("d", "e"))


def parse_numbers(text, fmt=None):
    """The numbers of ``text`` as a flat float64 array; ValueError names the bad line.

    ``fmt`` is a :class:`TextFormat` (default: every number, ``#`` comments).
    """
    fmt = TextFormat() if fmt is None else fmt
    lines = text.splitlines()[fmt.skiprows:]
    if fmt.comments and any(m in text for m in fmt.comments):
        lines = [_strip_comment(line, fmt.comments) for line in lines]
    if fmt.usecols is None:
        tokens = _fields(" ".join(lines))
        try:
            return np.array([float(t) for t in tokens], dtype=np.float64)
        except ValueError:
            pass  # Fortran exponents, or a token that is not a number: go line by line
    values = []
    for number, line in enumerate(lines, start=fmt.skiprows + 1):
        fields = _fields(line)
        if not fields:
            continue
        if fmt.usecols is not None:
            try:
                fields = [fields[c] for c in fmt.usecols]
            except IndexError:
                raise ValueError(f"line {number} has {len(fields)} column(s), fewer than "
                                 f"`usecols`={list(fmt.usecols)} needs") from None
        for token in fields:
            try:
                values.append(_to_float(token))
            except ValueError:
                raise ValueError(f"cannot read {token[:40]!r} as a number (line {number}: "
                                 f"{line.strip()[:80]!r})") from None
    return np.array(values, dtype=np.float64)


def read_output_file(workdir, name, fmt, log_tails):
    """Read the command's output file ``name``; InnerSolverError(kind="output") if unusable.

    ``log_tails(workdir)`` gives the ends of the command's logs for the message.
    Messages end with "(working directory kept: <workdir>)" (the caller moves it).
    """
    kept = f"(working directory kept: {workdir})"
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        present = sorted(os.listdir(workdir))
        raise InnerSolverError(
            f"output file {name!r} was not written by the command {kept}; the directory "
            f"holds {present}{log_tails(workdir)}", kind="output", workdir=workdir)
    if name.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is an output failure
            raise InnerSolverError(f"output file {name!r} is not a valid .npy file: {exc} "
                                   f"{kept}", kind="output", workdir=workdir) from None
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    try:
        values = parse_numbers(text, fmt)
    except ValueError as exc:
        hint = ""
        if fmt.is_default:
            hint = ("\na header line? pass `skiprows=` (lines to skip), `usecols=` "
                    "(columns to keep) or `comments=` (as for numpy.loadtxt)")
        raise InnerSolverError(
            f"output file {name!r} is not a table of numbers ({exc}) {kept}; first lines:\n"
            f"{file_head(path)}{hint}", kind="output", workdir=workdir) from None
    if values.size == 0:
        raise InnerSolverError(f"output file {name!r} holds no numbers {kept}"
                               f"{log_tails(workdir)}", kind="output", workdir=workdir)
    return values


def file_tail(path, n=TAIL_LINES, max_bytes=16384):
    """The last ``n`` lines of a file ("" if it cannot be read)."""
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


def file_head(path, n=HEAD_LINES, max_bytes=4096):
    """The first ``n`` lines of a file, each cut at 200 characters."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(line[:200] for line in lines[:n])

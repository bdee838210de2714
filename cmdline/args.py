"""The parser every console script uses, and argument types: an error is one line with exit status 2
(cmdline.EXIT_UNUSABLE), `--help` ends with an example, and counts and rates that only make sense as
positive numbers are refused where they are parsed instead of flowing into arithmetic that prints a plan for
-4 ranks or a negative speed."""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `prog: error: argument --gpus: ...` (exit 2), without
    the usage block argparse prints before it: `--help` shows the usage. `example`, one command or several
    lines, ends the help; the description keeps its line breaks. Subcommands' parsers are of this class
    too, and take `example` as well."""

    def __init__(self, *args: Any, example: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if example:
            shown = "example:\n" + textwrap.indent(example.strip("\n"), "  ")
            kwargs["epilog"] = f"{kwargs['epilog']}\n\n{shown}" if kwargs.get("epilog") else shown
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """A whole number >= 1 (ranks, GPUs, nodes, sequences, stages, tokens per sequence)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (GiB, TFLOP/s, GB/s, Gb/s, tokens)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive: give a number above 0")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1], such as a utilisation: 0 would make every time infinite."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]: give a fraction such as 0.45")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value

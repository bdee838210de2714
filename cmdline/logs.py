"""The one logging setup of every console script: timestamp, level, logger name and message, on stderr for
a tool (its stdout stays the tool's output: a completion, a plan, JSON), and on stdout tagged with the rank
for training, whose ranks' streams DeepSpeed's launcher interleaves."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False, quiet: bool = False, rank: int | None = None) -> None:
    """INFO (DEBUG with `verbose`, WARNING with `quiet`). With `rank`: a training rank, where only rank 0
    logs below WARNING, and whose setup replaces handlers installed before it (importing DeepSpeed adds
    its own); a tool's setup leaves an existing one (a caller's, pytest's) in place."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    tag = ""
    if rank is not None:
        tag = f"[rank {rank}] "
        level = level if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stderr if rank is None else sys.stdout,
        force=rank is not None,
        format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )

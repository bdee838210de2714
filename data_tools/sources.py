"""Corpus readers: stream documents from JSONL (.gz/.zst), Parquet, a source tree or a saved HF dataset.

`iter_records` yields every input's records in a deterministic order (files sorted by path), undecoded
where decoding is costly, so that workers decode them (`decode_record`); `iter_documents` decodes in this
process. Neither holds more than one record (or one Parquet batch) in memory, so a 10 GB corpus streams in
bounded memory.

Bad input never raises half-way: each problem is counted in a `Problems` tally with its file and line, the
record is skipped, and reading goes on. Only conditions that make the whole input unusable (a path that
does not exist, an unknown format) raise `DataError` before any record is read.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_tools.errors import DataError

logger = logging.getLogger(__name__)

# A record larger than this (in characters) is skipped and reported: minified bundles and data dumps,
# not code. CodeParrot's own data kept files under 1 MB.
DEFAULT_MAX_DOC_CHARS = 1_000_000
DEFAULT_EXTENSIONS = (".py",)
# How many example locations each problem kind keeps for the report.
MAX_EXAMPLES = 20


def location(path: str, line: int) -> str:
    """How reports name a record: `path:line` (1-based line or row), or `path` for a whole file (line 0)."""
    return f"{path}:{line}" if line else path


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: its text and where it came from (`path`, 1-based `line` or row; 0 for a whole file)."""

    text: str
    path: str
    line: int

    @property
    def location(self) -> str:
        return location(self.path, self.line)


@dataclasses.dataclass
class Problems:
    """Counts of skipped input by kind, with the first few locations of each."""

    counts: Counter = dataclasses.field(default_factory=Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    log: bool = True  # warn about the first few of each kind (off for a second pass over the same input)

    def add(self, kind: str, location: str, detail: str = "") -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{location}: {detail}" if detail else location)
        if self.log and self.counts[kind] <= 3:
            logger.warning("skipped %s: %s %s", kind, location, detail)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """What to read. No `inputs`: the embedded default corpus (this interpreter's standard library)."""

    inputs: tuple[str, ...] = ()
    text_field: str = "content"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS

    def describe(self) -> list[str]:
        return list(self.inputs) if self.inputs else [f"stdlib:{stdlib_dir()}"]


def stdlib_dir() -> str:
    """The running interpreter's standard library: about 1,800 .py files of real code on every machine."""
    return sysconfig.get_paths()["stdlib"]


def _open_text_lines(path: Path) -> io.BufferedReader | Any:
    """A binary line iterator over a plain, .gz or .zst file (decoding is per line, so one bad line is
    one skipped record, not a dead job)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed by the stream reader
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")  # noqa: SIM115


Problem = tuple[str, str, str]  # (kind, location, detail)


def _check_text(text: Any, where: str, cfg: SourceConfig) -> Problem | None:
    """Why `text` cannot be a document (as a problem), or None if it can."""
    if not isinstance(text, str):
        return ("missing_text_field", where, f"no string field {cfg.text_field!r}")
    if not text.strip():
        return ("empty_document", where, "")
    if len(text) > cfg.max_doc_chars:
        return ("too_large", where, f"{len(text):,} chars > max_doc_chars {cfg.max_doc_chars:,}")
    return None


def _checked(text: Any, where: str, cfg: SourceConfig, problems: Problems) -> str | None:
    problem = _check_text(text, where, cfg)
    if problem is not None:
        problems.add(*problem)
        return None
    return text


@dataclasses.dataclass(frozen=True)
class Record:
    """A document not yet decoded: what the main process reads cheaply and hands to a worker.

    `payload` is the raw bytes of a JSON line, the text itself (Parquet, HF datasets: already decoded by
    their readers), or None for a source file the worker reads itself."""

    path: str
    line: int
    payload: bytes | str | None

    @property
    def location(self) -> str:
        return location(self.path, self.line)

    @property
    def size(self) -> int:
        return len(self.payload) if self.payload is not None else 0


def decode_record(rec: Record, cfg: SourceConfig) -> tuple[str | None, Problem | None]:
    """(text, None) for a good record, (None, problem) for a bad one. Pure: runs in worker processes."""
    where = rec.location
    if isinstance(rec.payload, str):
        return rec.payload, None
    if rec.payload is None:
        try:
            path = Path(rec.path)
            size = path.stat().st_size
            if size > cfg.max_doc_chars * 4:  # more bytes than any accepted text could need
                return None, ("too_large", where, f"{size:,} bytes > max_doc_chars {cfg.max_doc_chars:,}")
            data = path.read_bytes()
        except OSError as e:
            return None, ("unreadable_file", where, str(e))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, ("non_utf8", where, str(e))
    else:
        try:
            line = rec.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, ("non_utf8", where, str(e))
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return None, ("malformed_json", where, str(e))
        text = obj.get(cfg.text_field) if isinstance(obj, dict) else None
    problem = _check_text(text, where, cfg)
    return (None, problem) if problem else (text, None)


def jsonl_records(path: Path, problems: Problems) -> Iterator[Record]:
    """The non-blank lines of a .jsonl, .jsonl.gz or .jsonl.zst file, undecoded."""
    try:
        with _open_text_lines(path) as stream:
            for lineno, raw in enumerate(stream, start=1):
                if raw.strip():
                    yield Record(str(path), lineno, raw)
    except (OSError, EOFError, ValueError) as e:
        # A truncated .gz/.zst or an I/O error: keep what was read, report where it stopped.
        problems.add("unreadable_file", str(path), f"{type(e).__name__}: {e}")


def read_parquet(path: Path, cfg: SourceConfig, problems: Problems) -> Iterator[Document]:
    """Rows of a Parquet file, read one record batch at a time (row numbers are 1-based in reports)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError mix
        problems.add("unreadable_file", str(path), f"{type(e).__name__}: {e}")
        return
    if cfg.text_field not in pf.schema_arrow.names:
        problems.add(
            "missing_text_field", str(path), f"no column {cfg.text_field!r}; columns: {pf.schema_arrow.names}"
        )
        return
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[cfg.text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if (text := _checked(text, f"{path}:{row}", cfg, problems)) is not None:
                yield Document(text, str(path), row)


def read_hf_dataset(path: Path, cfg: SourceConfig, problems: Problems) -> Iterator[Document]:
    """A dataset saved with `datasets.save_to_disk` (a Dataset, or every split of a DatasetDict in name
    order). Arrow files are memory-mapped, so nothing is loaded whole."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = (
        [(name, loaded[name]) for name in sorted(loaded)]
        if isinstance(loaded, datasets.DatasetDict)
        else [("", loaded)]
    )
    for name, ds in splits:
        label = f"{path}[{name}]" if name else str(path)
        if cfg.text_field not in ds.column_names:
            problems.add(
                "missing_text_field", label, f"no column {cfg.text_field!r}; columns: {ds.column_names}"
            )
            continue
        column = ds.select_columns([cfg.text_field])
        for start in range(0, len(column), 1024):
            for i, text in enumerate(column[start : start + 1024][cfg.text_field], start=start + 1):
                if (text := _checked(text, f"{label}:{i}", cfg, problems)) is not None:
                    yield Document(text, label, i)


# Directories never read from a source tree: installed third-party packages (the interpreter's stdlib
# directory holds site-packages), caches and VCS metadata.
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", ".git", ".hg", ".svn", "node_modules"}
)


def _walk(root: Path) -> list[Path]:
    """Files under `root`, sorted, skipping SKIP_DIRS and symlinked directories (no cycles)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        out.extend(Path(dirpath, f) for f in filenames)
    return sorted(out)


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return any(
        name.endswith(s) for s in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson")
    )


def expand_inputs(cfg: SourceConfig) -> list[tuple[str, Path]]:
    """Resolve `cfg.inputs` to an ordered list of (kind, path). Raises DataError for a missing path."""
    inputs = cfg.inputs or (stdlib_dir(),)
    out: list[tuple[str, Path]] = []
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise DataError(
            f"input path(s) not found: {', '.join(missing)}. Pass existing JSONL/Parquet files, a source "
            "directory or a saved HF dataset; with no --input the standard library is used."
        )
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and _is_hf_dataset_dir(path):
            out.append(("hf_dataset", path))
        elif path.is_dir():
            files = _walk(path)
            data_files = [p for p in files if _is_jsonl(p) or p.suffix == ".parquet"]
            code_files = [p for p in files if p.suffix in cfg.extensions and not _is_jsonl(p)]
            # A directory of data files is a sharded dataset; otherwise it is a source tree.
            if data_files and not code_files:
                out.extend(("parquet" if p.suffix == ".parquet" else "jsonl", p) for p in data_files)
            else:
                out.extend(("source", p) for p in code_files)
        elif path.suffix == ".parquet":
            out.append(("parquet", path))
        elif _is_jsonl(path) or path.suffix == ".json":
            out.append(("jsonl", path))
        elif path.suffix in cfg.extensions:
            out.append(("source", path))
        else:
            raise DataError(
                f"{path}: unknown input format. Supported: .jsonl[.gz|.zst], .parquet, a directory of "
                f"source files with extensions {list(cfg.extensions)} (set --extensions), or a directory "
                "written by datasets.save_to_disk."
            )
    return out


def iter_records(cfg: SourceConfig, problems: Problems) -> Iterator[Record]:
    """Every record of every input, in a deterministic order, undecoded where decoding is costly (JSON
    lines, source files): the cheap, serial part of reading."""
    for kind, path in expand_inputs(cfg):
        if kind == "jsonl":
            yield from jsonl_records(path, problems)
        elif kind == "source":
            yield Record(str(path), 0, None)
        else:
            reader = read_parquet if kind == "parquet" else read_hf_dataset
            for doc in reader(path, cfg, problems):
                yield Record(doc.path, doc.line, doc.text)


def iter_documents(cfg: SourceConfig, problems: Problems) -> Iterator[Document]:
    """All good documents of all inputs, in order, decoded in this process (bad ones go to `problems`)."""
    for rec in iter_records(cfg, problems):
        text, problem = decode_record(rec, cfg)
        if problem is not None:
            problems.add(*problem)
        else:
            yield Document(text, rec.path, rec.line)


def iter_batches(records: Iterable[Record], max_records: int = 256, max_bytes: int = 4_000_000):
    """Group records into lists bounded in count and payload bytes (a unit of parallel work)."""
    batch: list[Record] = []
    size = 0
    for rec in records:
        batch.append(rec)
        size += rec.size
        if len(batch) >= max_records or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

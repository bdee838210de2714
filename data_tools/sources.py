"""Corpus readers: stream documents from JSONL (.gz/.zst), Parquet, a source tree or a saved HF dataset.

`iter_records` yields every input's records in a deterministic order (files sorted by path), undecoded
where decoding is costly, so that workers decode them (`decode_record`); `iter_documents` decodes in this
process. Neither holds more than one record (or one Parquet batch) in memory, so a 10 GB corpus streams in
bounded memory.

Bad input never raises half-way: each problem is counted in a `Problems` tally with its file and line, the
record is skipped, and reading goes on. Only conditions that make the whole input unusable (a path that
does not exist, an unknown format) raise `DataError` before any record is read.

Only regular files are read: FIFOs, devices, sockets, symlinks to those and dangling symlinks are reported
as `not_regular_file` and never opened. A symlink to a regular file is followed (a file reached twice, by
its own path and by a symlink, is read twice; exact dedup then removes the second copy). Every read is
bounded by the size cap while reading (`max_doc_chars`), so one huge file or line cannot exhaust memory.
A compressed file that ends mid-stream is reported as `truncated` with the line where reading stopped;
the complete records before the cut are kept.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import re
import stat
import sysconfig
import zlib
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
# Problems that concern a whole file: the job's closing summary names where they happened.
FILE_PROBLEMS = ("truncated", "unreadable_file", "not_regular_file")
# A JSON line may hold its text escaped (\uXXXX: 6 bytes per character) plus other fields: lines longer
# than 6 bytes per max_doc_chars character plus this allowance are skipped unread as too large.
JSONL_OTHER_FIELDS_BYTES = 1 << 20
# Characters that cannot be encoded as UTF-8 (lone surrogates, which JSON's \ud800 escapes can produce).
_SURROGATE = re.compile("[\ud800-\udfff]")


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

    def extend(self, later: dict[str, Any]) -> None:
        """Add the problems of input read after this one (`later`: a `to_dict()`): counts add up, and
        examples are kept as if one `Problems` had seen both inputs in order."""
        for kind, n in later["counts"].items():
            self.counts[kind] += n
            examples = self.examples.setdefault(kind, [])
            examples.extend(later["examples"].get(kind, [])[: MAX_EXAMPLES - len(examples)])

    def summary(self) -> str:
        return problems_summary(self.to_dict())


def problems_summary(bad_input: dict[str, Any]) -> str:
    """One line for the end of a job, from a report's `bad_input` (Problems.to_dict): how many records
    of each kind were skipped, and where the whole-file problems (truncated or unreadable files,
    special files) happened."""
    parts = []
    for kind, n in bad_input["counts"].items():
        part = f"{n} {kind}"
        if kind in FILE_PROBLEMS:
            shown = bad_input["examples"][kind][:3]
            part += f" ({'; '.join(shown)}{'; ...' if n > len(shown) else ''})"
        parts.append(part)
    return "skipped bad input: " + ", ".join(parts)


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


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame, raising EOFError where the file ends
    inside a frame. (zstandard's own stream reader ends such a file with a silent short read, so a cut
    file would look complete.) Compressed input is fed 64 KiB at a time, which bounds the output held at
    once to 64 KiB times the compression ratio."""

    READ_BYTES = 1 << 16

    def __init__(self, path: Path) -> None:
        import zstandard

        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the decompressor of the frame being read, None between frames
        self._out = memoryview(b"")  # decompressed bytes not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            data = b""
            if self._frame is not None and self._frame.eof:  # a frame ended: the rest starts the next
                data, self._frame = self._frame.unused_data, None
            data = data or self._file.read(self.READ_BYTES)
            if not data:
                if self._frame is not None:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            self._out = memoryview(self._frame.decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_binary(path: Path) -> io.BufferedIOBase | Any:
    """A binary stream over a plain, .gz or .zst file; a compressed file cut short raises EOFError when
    the reading reaches the cut."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")  # noqa: SIM115


def _bounded_lines(stream: Any, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size in bytes) for each line of a binary stream; line is None for one longer than
    `max_bytes`, which is skipped in chunks, never held whole."""
    while line := stream.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := stream.readline(1 << 20)):
            size += len(line)
        yield None, size


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: Path) -> str | None:
    """Why `path` is not a file to read (a FIFO, a device, a socket, a dangling symlink or a symlink to
    one of those), or None for a regular file or a symlink to one. Nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if not path.is_symlink():
            return None  # gone or unreadable: reported when reading it
        if isinstance(e, FileNotFoundError):
            return f"dangling symlink to {os.readlink(path)}"
        return f"symlink that cannot be followed to a file ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = _file_kind(mode)
    return f"symlink to {kind} ({os.readlink(path)})" if path.is_symlink() else kind


class NotRegularFile(OSError):
    """Raised by read_regular_file for a path that is not a regular file."""


def read_regular_file(path: str | Path, max_bytes: int) -> bytes | None:
    """The bytes of the regular file `path`, or None if it holds more than `max_bytes` (at most
    `max_bytes + 1` are read). Raises OSError, and NotRegularFile for anything but a regular file (a FIFO
    put in place after the listing is checked on the open descriptor, never read; O_NONBLOCK keeps its
    open from waiting for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(_file_kind(mode))
        data = f.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


Problem = tuple[str, str, str]  # (kind, location, detail)


def _check_text(text: Any, where: str, cfg: SourceConfig) -> Problem | None:
    """Why `text` cannot be a document (as a problem), or None if it can."""
    if not isinstance(text, str):
        return ("missing_text_field", where, f"no string field {cfg.text_field!r}")
    if not text.strip():
        return ("empty_document", where, "")
    if len(text) > cfg.max_doc_chars:
        return ("too_large", where, f"{len(text):,} chars > max_doc_chars {cfg.max_doc_chars:,}")
    if not text.isascii() and (bad := _SURROGATE.search(text)):
        return (
            "invalid_unicode",
            where,
            f"lone surrogate U+{ord(bad.group()):04X} at character {bad.start():,} (not encodable as UTF-8)",
        )
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
        max_bytes = cfg.max_doc_chars * 4  # more bytes than any accepted text could need
        try:
            data = read_regular_file(rec.path, max_bytes)
        except NotRegularFile as e:
            return None, ("not_regular_file", where, str(e))
        except OSError as e:
            return None, ("unreadable_file", where, str(e))
        if data is None:
            return None, (
                "too_large",
                where,
                f"more than {max_bytes:,} bytes (4 per character of max_doc_chars {cfg.max_doc_chars:,})",
            )
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


def jsonl_records(
    path: Path, problems: Problems, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS
) -> Iterator[Record]:
    """The non-blank lines of a .jsonl, .jsonl.gz or .jsonl.zst file, undecoded. A line too long to hold
    a document of `max_doc_chars` is skipped unread (too_large); a compressed file cut short or corrupt
    keeps the lines before the damage and is reported with the line where reading stopped."""
    import zstandard

    max_bytes = 6 * max_doc_chars + JSONL_OTHER_FIELDS_BYTES
    lineno = 0  # lines read so far
    try:
        with _open_binary(path) as stream:
            for raw, size in _bounded_lines(stream, max_bytes):
                lineno += 1
                if raw is None:
                    problems.add(
                        "too_large", location(str(path), lineno), f"line of {size:,} bytes > {max_bytes:,}"
                    )
                elif raw.strip():
                    yield Record(str(path), lineno, raw)
    except EOFError as e:
        read = f"lines 1-{lineno} were read" if lineno else "no complete line was read"
        problems.add(
            "truncated",
            location(str(path), lineno + 1),
            f"the file ends inside line {lineno + 1}: {read}, the rest is lost ({e})",
        )
    except (OSError, ValueError, zlib.error, zstandard.ZstdError) as e:
        where = location(str(path), lineno + 1 if lineno else 0)
        stopped = f"reading stopped in line {lineno + 1}: " if lineno else ""
        problems.add("unreadable_file", where, f"{stopped}{type(e).__name__}: {e}")


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

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets and pyarrow raise a mix of their own errors for a damaged directory
        problems.add("unreadable_file", str(path), f"{type(e).__name__}: {e}")
        return
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


def iter_records(
    cfg: SourceConfig, problems: Problems, inputs: Iterable[tuple[str, Path]] | None = None
) -> Iterator[Record]:
    """Every record of every input, in a deterministic order, undecoded where decoding is costly (JSON
    lines, source files): the cheap, serial part of reading. `inputs`: read only these (a part of
    `expand_inputs(cfg)`, in its order) instead of all."""
    for kind, path in expand_inputs(cfg) if inputs is None else inputs:
        if kind != "hf_dataset" and (why := not_regular(path)):
            problems.add("not_regular_file", str(path), why)
            continue
        if kind == "jsonl":
            yield from jsonl_records(path, problems, cfg.max_doc_chars)
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

"""Corpus readers: stream documents from JSONL (.gz/.zst), Parquet, a source tree or a saved HF dataset.

`iter_records` yields every input's records in a deterministic order (files sorted by path), undecoded
where decoding is costly, so that workers decode them (`decode_record`); `iter_documents` decodes in this
process. Neither holds more than one record (or one Parquet batch) in memory, so a 10 GB corpus streams in
bounded memory. A directory is walked while it is read, never listed whole, so memory does not grow with
the number of input files either.

A directory of JSONL (.jsonl, .jsonl.gz, .jsonl.zst) and Parquet files, subdirectories included, is one
corpus read in sorted path order (the layout Megatron-LM's and GPT-NeoX's users bring); a directory of
source files gives a document per file; a directory holding both is refused unless `dir_format` says which
(`iter_inputs` has the rule).

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
from typing import Any, Literal, NamedTuple

from data_tools.errors import DataError

logger = logging.getLogger(__name__)

# A record larger than this (in characters) is skipped and reported: minified bundles and data dumps,
# not code. CodeParrot's own data kept files under 1 MB.
DEFAULT_MAX_DOC_CHARS = 1_000_000
DEFAULT_EXTENSIONS = (".py",)
# How many example locations each problem kind keeps for the report.
MAX_EXAMPLES = 20
# Problems that concern a whole file: the job's closing summary names where they happened.
FILE_PROBLEMS = ("truncated", "unreadable_file", "not_regular_file", "unsupported_file")
# A JSON line may hold its text escaped (\uXXXX: 6 bytes per character) plus other fields: lines longer
# than 6 bytes per max_doc_chars character plus this allowance are skipped unread as too large.
JSONL_OTHER_FIELDS_BYTES = 1 << 20
# How a directory given as input is read (SourceConfig.dir_format, iter_inputs).
DIR_FORMATS = ("auto", "data", "source")
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
    # How a directory in `inputs` is read: its JSONL/Parquet files as one corpus ("data"), its files with
    # `extensions` as documents ("source"), or whichever it holds ("auto"; both: an error). See iter_inputs.
    dir_format: Literal["auto", "data", "source"] = "auto"

    def __post_init__(self) -> None:
        if self.dir_format not in DIR_FORMATS:
            raise DataError(f"dir_format ({self.dir_format!r}) must be one of {', '.join(DIR_FORMATS)}")

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


class _Entry(NamedTuple):
    """A directory entry found by `_walk`: a file (or anything but a directory to descend into), or a
    directory that could not be listed (`error`)."""

    path: Path
    error: OSError | None = None


def _walk(root: Path) -> Iterator[_Entry]:
    """The files under `root` in sorted path order (`sorted()`'s order of their Paths: a directory's
    entries by name, each subdirectory's files in its place), skipping SKIP_DIRS and symlinked
    directories (no cycles). Streamed: only the entry names of the directories on the way down are held,
    never a list of the tree's files. A directory that cannot be listed is yielded with its error."""
    try:
        with os.scandir(root) as it:
            entries = sorted((e.name, _is_dir(e)) for e in it)
    except OSError as e:
        yield _Entry(root, e)
        return
    for name, is_dir in entries:
        if not is_dir:
            yield _Entry(root / name)
        elif is_dir == "descend" and name not in SKIP_DIRS:
            yield from _walk(root / name)


def _is_dir(entry: os.DirEntry) -> Literal["descend", "symlink", False]:
    """Whether a directory entry is a directory to descend into, a symlink to one (neither read nor
    descended into, as os.walk does), or anything else (False: a file, also a symlink that cannot be
    followed, reported when read)."""
    try:
        if not entry.is_dir():
            return False
    except OSError:  # a symlink loop, say
        return False
    return "symlink" if entry.is_symlink() else "descend"


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return any(
        name.endswith(s) for s in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson")
    )


# JSON lines in a compression this reader does not know (.jsonl.bz2, .json.xz, .ndjson.lz4, ...): in a data
# directory they are reported as unsupported_file, never skipped unseen.
_UNSUPPORTED_DATA = re.compile(r"\.(?:jsonl|ndjson|json)\.[a-z0-9]+$")


def _member_kind(path: Path, extensions: tuple[str, ...]) -> str | None:
    """How a file found in a directory is read: "jsonl" or "parquet" (data), "unsupported" (data in a
    compression not read), "source" (one document), or None (not read: README, metadata, ...)."""
    if _is_jsonl(path):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    if _UNSUPPORTED_DATA.search(path.name.lower()):
        return "unsupported"
    return "source" if path.suffix in extensions else None


def _dir_format(root: Path, cfg: SourceConfig) -> str:
    """How directory `root` is read: "data" or "source". With cfg.dir_format "auto", a walk decides: data
    if it holds data files and no source files, source otherwise; a directory holding both raises
    DataError, naming examples of each and the flag that chooses."""
    if cfg.dir_format != "auto":
        return cfg.dir_format
    counts: Counter = Counter()
    examples: dict[str, list[str]] = {"data": [], "source": []}
    for entry in _walk(root):
        kind = None if entry.error else _member_kind(entry.path, cfg.extensions)
        if kind is None:
            continue
        group = "source" if kind == "source" else "data"
        counts[group] += 1
        if len(examples[group]) < 3:
            examples[group].append(str(entry.path.relative_to(root)))
    if counts["data"] and counts["source"]:
        raise DataError(
            f"{root}: holds both data files ({counts['data']:,} JSONL/Parquet, e.g. "
            f"{', '.join(examples['data'])}) and source files ({counts['source']:,} with extensions "
            f"{list(cfg.extensions)}, e.g. {', '.join(examples['source'])}), so how to read it cannot be "
            "guessed. Pass --dir-format data to read its JSONL/Parquet files as one corpus, or --dir-format "
            "source to read its source files as documents."
        )
    return "data" if counts["data"] else "source"


def _dir_inputs(root: Path, fmt: str, cfg: SourceConfig) -> Iterator[tuple[str, Path]]:
    """The inputs of directory `root` read as `fmt` ("data" or "source"), in sorted path order, streamed.
    A subdirectory that cannot be listed is an "unreadable_dir" input (reported by iter_records); the
    files a data directory does not read (README, metadata) are counted in a log line."""
    wanted = ("jsonl", "parquet", "unsupported") if fmt == "data" else ("source",)
    other, examples = 0, []
    for entry in _walk(root):
        kind = "unreadable_dir" if entry.error else _member_kind(entry.path, cfg.extensions)
        if kind in wanted or kind == "unreadable_dir":
            yield kind, entry.path
        elif fmt == "data":
            other += 1
            if len(examples) < 3:
                examples.append(str(entry.path.relative_to(root)))
    if other:
        logger.info(
            "%s: %d file(s) that are not JSONL/Parquet were not read (%s%s)",
            root,
            other,
            ", ".join(examples),
            ", ..." if other > len(examples) else "",
        )


def _named_input(path: Path, cfg: SourceConfig) -> tuple[str, Path]:
    """How a path named in cfg.inputs is read: ("hf_dataset" | "data" | "source", a directory) or a file's
    kind. Raises DataError for a file of unknown format or a directory whose kind cannot be guessed."""
    if path.is_dir():
        return ("hf_dataset" if _is_hf_dataset_dir(path) else _dir_format(path, cfg)), path
    if path.suffix == ".parquet":
        return "parquet", path
    if _is_jsonl(path) or path.suffix == ".json":
        return "jsonl", path
    if path.suffix in cfg.extensions:
        return "source", path
    raise DataError(
        f"{path}: unknown input format. Supported: .jsonl[.gz|.zst], .parquet, a directory of "
        f"source files with extensions {list(cfg.extensions)} (set --extensions), a directory of "
        "JSONL/Parquet files, or a directory written by datasets.save_to_disk."
    )


def iter_inputs(cfg: SourceConfig) -> Iterator[tuple[str, Path]]:
    """`cfg.inputs` as (kind, path) in a deterministic order; kind: "jsonl", "parquet", "source",
    "hf_dataset", or, found in a directory, "unsupported" and "unreadable_dir" (reported, never read).

    A directory is read as one of (a `--dir-format`, "auto" by default):
      - a saved HF dataset, if it holds dataset_info.json or dataset_dict.json;
      - data: every JSONL (.jsonl, .jsonl.gz, .jsonl.zst, .json.gz, .json.zst, .ndjson) and Parquet file
        under it, subdirectories included, in sorted path order, as one corpus (JSON lines in another
        compression are reported as unsupported_file; other files, such as a README, are not read);
      - source: every file with one of cfg.extensions under it, one document each.
    "auto" chooses data for a directory holding data files and no source files, source for the reverse,
    and raises DataError for one holding both.

    Every named input is checked first: a missing path, a file of unknown format or a directory that is
    both raise DataError before anything is yielded. Directories are then walked while they are read
    (`_walk`): no list of the tree's files is held, so memory does not grow with their number."""
    inputs = cfg.inputs or (stdlib_dir(),)
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise DataError(
            f"input path(s) not found: {', '.join(missing)}. Pass existing JSONL/Parquet files, a source "
            "directory or a saved HF dataset; with no --input the standard library is used."
        )
    for kind, path in [_named_input(Path(raw), cfg) for raw in inputs]:
        if kind in ("data", "source") and path.is_dir():  # a named file can be "source" too
            yield from _dir_inputs(path, kind, cfg)
        else:
            yield kind, path


def expand_inputs(cfg: SourceConfig) -> list[tuple[str, Path]]:
    """`iter_inputs` as a list (the jobs stream `iter_inputs` instead). Raises DataError as it does."""
    return list(iter_inputs(cfg))


def _unsupported_why(path: Path) -> str:
    compression = path.name.rsplit(".", 1)[-1]
    return f"JSON lines compressed as .{compression}, which is not read: recompress it as .gz or .zst"


def _listing_error(path: Path) -> str:
    try:
        os.scandir(path).close()
    except OSError as e:
        return f"a directory that cannot be listed ({e.strerror}): its files were not read"
    return "a directory that could not be listed while reading: its files were not read"


def iter_records(
    cfg: SourceConfig, problems: Problems, inputs: Iterable[tuple[str, Path]] | None = None
) -> Iterator[Record]:
    """Every record of every input, in a deterministic order, undecoded where decoding is costly (JSON
    lines, source files): the cheap, serial part of reading. `inputs`: read only these (a part of
    `expand_inputs(cfg)`, in its order) instead of all."""
    for kind, path in iter_inputs(cfg) if inputs is None else inputs:
        if kind == "unsupported":
            problems.add("unsupported_file", str(path), _unsupported_why(path))
            continue
        if kind == "unreadable_dir":
            problems.add("unreadable_file", str(path), _listing_error(path))
            continue
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


# The batches (records, payload characters) a job's workers clean: one worker call each. Part of a job's
# fingerprint (data_tools.preprocess), since they set the order in which documents reach the workers.
BATCH_DOCS, BATCH_CHARS = 64, 250_000


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

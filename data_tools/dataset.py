"""Training samples from shards: packed fixed-length samples, blending, and the data-parallel sample order.

- `PackedDataset`: the shards' token streams concatenated (documents already end with the end-of-document
  token) and cut into samples of `seq_len + 1` tokens with stride `seq_len`, crossing document and shard
  boundaries (CodeParrot's ConstantLengthDataset, from memory-mapped shards with O(1) access by index;
  the one-token overlap makes every token a target exactly once, as in Megatron's GPT dataset).
- `BlendedDataset`: several datasets mixed by weight, deterministically and in exact proportion.
- `SampleOrder`: the global order of sample indices (a seeded permutation per epoch) and each data-parallel
  rank's share of it. Position p of the global order goes to rank p % world_size, so ranks are disjoint and
  together cover every sample of every epoch; starting at any consumed-sample count resumes exactly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import DataError
from data_tools.indexed_dataset import IndexedDataset


class PackedDataset:
    """Samples of `seq_len + 1` tokens (int64) over the concatenated tokens of `datasets`."""

    def __init__(self, datasets: Sequence[IndexedDataset], seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len ({seq_len}) must be at least 1")
        self.datasets = list(datasets)
        self.seq_len = seq_len
        lengths = [len(ds.tokens) for ds in self.datasets]
        self._starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.total_tokens = int(self._starts[-1])
        self.num_samples = max((self.total_tokens - 1) // seq_len, 0)
        if self.num_samples == 0:
            names = ", ".join(str(ds.prefix) for ds in self.datasets) or "(no shards)"
            raise DataError(
                f"{names}: {self.total_tokens} tokens, fewer than one sample of seq_len + 1 = {seq_len + 1}. "
                "Use more data or a shorter sequence length."
            )

    def __len__(self) -> int:
        return self.num_samples

    def tokens(self, start: int, length: int) -> np.ndarray:
        """`length` tokens of the concatenated stream from global offset `start`, as int64."""
        out = np.empty(length, dtype=np.int64)
        k = bisect.bisect_right(self._starts, start) - 1
        filled = 0
        while filled < length:
            local = start + filled - int(self._starts[k])
            chunk = self.datasets[k].tokens[local : local + length - filled]
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            k += 1
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        return self.tokens(i * self.seq_len, self.seq_len + 1)


class BlendedDataset:
    """`size` samples drawn from `datasets` in the proportions of `weights`.

    The j-th sample taken from dataset i is scheduled at time (j + 0.5) / w_i; sorting all times gives
    the mix, so every prefix of it holds each dataset within one sample of its share. Sample j of dataset
    i is its sample j mod len(dataset i) (a small dataset is repeated, in order; shuffle on top)."""

    def __init__(self, datasets: Sequence[PackedDataset], weights: Sequence[float], size: int) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if any(w <= 0 for w in weights):
            raise ValueError(f"blend weights must be positive, got {list(weights)}")
        w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.datasets, self.weights, self.size = list(datasets), w, size
        counts = [int(np.ceil(size * wi)) + 1 for wi in w]
        times = np.concatenate([(np.arange(c) + 0.5) / wi for c, wi in zip(counts, w, strict=True)])
        which = np.concatenate([np.full(c, i, dtype=np.int32) for i, c in enumerate(counts)])
        order = np.argsort(times, kind="stable")[:size]
        self.dataset_index = which[order]
        self.sample_index = np.empty(size, dtype=np.int64)
        for i, ds in enumerate(self.datasets):
            mask = self.dataset_index == i
            self.sample_index[mask] = np.arange(int(mask.sum())) % len(ds)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> np.ndarray:
        return self.datasets[int(self.dataset_index[i])][int(self.sample_index[i])]


class SampleOrder:
    """The global sample order (epochs of seeded permutations) and one rank's share of it."""

    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self._epoch, self._perm = -1, np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
                if self.shuffle
                else np.arange(self.num_samples)
            )
            self._epoch = epoch
        return self._perm

    def at(self, position: int) -> int:
        """The sample index at global position `position` (epoch = position // num_samples)."""
        epoch, offset = divmod(position, self.num_samples)
        return int(self.permutation(epoch)[offset])

    def rank_positions(self, rank: int, world_size: int, consumed_samples: int = 0) -> Iterator[int]:
        """This rank's global positions from `consumed_samples` on: p with p % world_size == rank."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank ({rank}) must be in [0, world_size={world_size})")
        first = consumed_samples + (rank - consumed_samples) % world_size
        p = first
        while True:
            yield p
            p += world_size

    def rank_batches(
        self, rank: int, world_size: int, micro_batch: int, consumed_samples: int = 0
    ) -> Iterator[np.ndarray]:
        """Micro-batches of sample indices for `rank`. A global step of micro_batch * world_size samples
        consumes positions [c, c + micro_batch * world_size): resume by passing the consumed count."""
        positions = self.rank_positions(rank, world_size, consumed_samples)
        while True:
            yield np.fromiter((self.at(next(positions)) for _ in range(micro_batch)), np.int64, micro_batch)


def open_split(data: Any, split: str = "train") -> list[IndexedDataset]:
    """The shards of one split of a preprocess output directory (a path or a
    data_tools.manifest.DatasetManifest), checked against its manifest."""
    from data_tools.manifest import opened

    d = opened(data)
    data_dir, manifest = d.path, d.manifest
    if split not in manifest["splits"]:
        raise DataError(
            f"{Path(data_dir) / 'manifest.json'}: no split {split!r}; has {sorted(manifest['splits'])}"
        )
    shards = []
    for shard in manifest["splits"][split]["shards"]:
        ds = IndexedDataset(Path(data_dir) / shard["prefix"])
        if len(ds.tokens) != shard["tokens"]:
            raise DataError(
                f"{ds.bin_path}: {len(ds.tokens)} tokens but the manifest says {shard['tokens']}. "
                "HINT: regenerate the shards with `codeparrot-preprocess`."
            )
        shards.append(ds)
    return shards

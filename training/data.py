"""Training and validation batches for one data-parallel rank, from preprocessed shards.

Samples are `seq_len + 1` tokens (data_tools.dataset.PackedDataset); inputs are the first `seq_len`, targets
the last `seq_len`. The global order (seeded shuffle per epoch) is cut by data-parallel rank, and a global
step of micro_batch x grad_accum x dp_size samples consumes the next positions of that order, so a resumed
run given its consumed-sample count sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from data_tools.dataset import BlendedDataset, PackedDataset, SampleOrder, open_split
from data_tools.errors import DataError
from training.config import RunConfig

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def _dataset(run: RunConfig, split: str, size_hint: int) -> PackedDataset | BlendedDataset:
    parts = [PackedDataset(open_split(p, split), run.data.seq_len) for p in run.data.paths]
    if len(parts) == 1:
        return parts[0]
    weights = run.data.weights or [1.0] * len(parts)
    return BlendedDataset(parts, weights, size=max(size_hint, sum(map(len, parts))))


def _collate(ds: PackedDataset | BlendedDataset, indices: np.ndarray) -> Batch:
    tokens = torch.from_numpy(np.stack([ds[int(i)] for i in indices]))  # [B, T+1] int64
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class RankData:
    """The batches one data-parallel rank trains and evaluates on."""

    def __init__(self, run: RunConfig, dp_rank: int, dp_size: int, total_samples: int) -> None:
        self.run, self.dp_rank, self.dp_size = run, dp_rank, dp_size
        self.train = _dataset(run, "train", total_samples)
        self.order = SampleOrder(len(self.train), seed=run.train.seed, shuffle=run.data.shuffle)
        try:
            self.valid: PackedDataset | BlendedDataset | None = _dataset(run, "valid", 0)
        except DataError as e:  # a tiny corpus may have no validation sample: train without evaluation
            logger.warning("no validation: %s", e)
            self.valid = None

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        batches = self.order.rank_batches(
            self.dp_rank, self.dp_size, self.run.train.micro_batch, consumed_samples
        )
        for indices in batches:
            yield _collate(self.train, indices)

    def valid_batches(self, iters: int) -> Iterator[Batch]:
        """The first `iters` micro-batches of this rank's share of the validation split, in order."""
        if self.valid is None:
            return
        order = SampleOrder(len(self.valid), seed=0, shuffle=False)
        batches = order.rank_batches(self.dp_rank, self.dp_size, self.run.train.micro_batch)
        for _ in range(iters):
            yield _collate(self.valid, next(batches))

"""Training and validation batches for one data-parallel rank, from preprocessed shards.

Samples are `seq_len + 1` tokens (data_tools.dataset.PackedDataset); inputs are the first `seq_len`, targets
the last `seq_len`. The global order (seeded shuffle per epoch) is cut by data-parallel rank, and a global
step of micro_batch x grad_accum x dp_size samples consumes the next positions of that order, so a resumed
run given its consumed-sample count sees exactly the batches an uninterrupted one would have.

With data.fim_rate > 0 the training samples go through fill-in-the-middle (data_tools.fim), keyed by
sample, so the same holds; targets that are `<fim_pad>` carry no loss. Validation stays left to right.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from data_tools.dataset import BlendedDataset, PackedDataset, SampleOrder, open_split
from data_tools.encode import choose_encoder
from data_tools.errors import DataError
from data_tools.fim import FimDataset, FimSettings, FimTransform
from data_tools.manifest import DatasetManifest, dataset_tokenizer
from model.kernels.cross_entropy import IGNORE_INDEX
from training.config import RunConfig

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


Dataset = PackedDataset | BlendedDataset | FimDataset


def fim_transform(run: RunConfig, datasets: Sequence[DatasetManifest]) -> FimTransform | None:
    """The fill-in-the-middle transform of the training split (None at data.fim_rate 0). Every data path
    shares one tokenizer (training.validate checks), so the first path's serves all."""
    if run.data.fim_rate <= 0:
        return None
    tok = dataset_tokenizer(datasets[0])
    settings = FimSettings(run.data.fim_rate, run.data.fim_spm_rate, run.train.seed)
    encoder = choose_encoder(tok.tokenizer).encoder
    return FimTransform(tok.tokenizer, encoder, tok.eod, settings, where=str(tok.dir))


def _dataset(
    run: RunConfig,
    datasets: Sequence[DatasetManifest],
    split: str,
    size_hint: int,
    fim: FimTransform | None = None,
) -> Dataset:
    parts: list = [PackedDataset(open_split(d, split), run.data.seq_len) for d in datasets]
    if fim is not None:  # each sample keyed by (data path index, sample index): see data_tools.fim
        parts = [FimDataset(part, fim, dataset_key=i) for i, part in enumerate(parts)]
    if len(parts) == 1:
        return parts[0]
    weights = run.data.weights or [1.0] * len(parts)
    return BlendedDataset(parts, weights, size=max(size_hint, sum(map(len, parts))))


def _collate(ds: Dataset, indices: np.ndarray, pad_id: int | None = None) -> Batch:
    tokens = torch.from_numpy(np.stack([ds[int(i)] for i in indices]))  # [B, T+1] int64
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    if pad_id is not None:  # FIM's padding is no text to learn: no loss on it
        targets[targets == pad_id] = IGNORE_INDEX
    return inputs, targets


class RankData:
    """The batches one data-parallel rank trains and evaluates on."""

    def __init__(
        self,
        run: RunConfig,
        dp_rank: int,
        dp_size: int,
        total_samples: int,
        datasets: Sequence[DatasetManifest] | None = None,
    ) -> None:
        """`datasets`: run.data.paths with their manifests as validation read them (RunSetup.data);
        None reads them here."""
        self.run, self.dp_rank, self.dp_size = run, dp_rank, dp_size
        datasets = datasets if datasets is not None else [DatasetManifest.open(p) for p in run.data.paths]
        self.fim = fim_transform(run, datasets)
        if self.fim is not None:
            logger.info(
                "fill-in-the-middle: %.0f%% of training documents, %.0f%% of those SPM (data.fim_rate, "
                "data.fim_spm_rate); validation left to right",
                100 * run.data.fim_rate,
                100 * run.data.fim_spm_rate,
            )
        self.train = _dataset(run, datasets, "train", total_samples, self.fim)
        self.order = SampleOrder(len(self.train), seed=run.train.seed, shuffle=run.data.shuffle)
        try:
            self.valid: Dataset | None = _dataset(run, datasets, "valid", 0)  # left to right: FIM only trains
        except DataError as e:  # a tiny corpus may have no validation sample: train without evaluation
            logger.warning("no validation: %s", e)
            self.valid = None

    def train_batches(self, consumed_samples: int) -> Iterator[Batch]:
        batches = self.order.rank_batches(
            self.dp_rank, self.dp_size, self.run.train.micro_batch, consumed_samples
        )
        pad_id = self.fim.ids.pad if self.fim is not None else None
        for indices in batches:
            yield _collate(self.train, indices, pad_id)

    def valid_batches(self, iters: int) -> Iterator[Batch]:
        """The first `iters` micro-batches of this rank's share of the validation split, in order."""
        if self.valid is None:
            return
        order = SampleOrder(len(self.valid), seed=0, shuffle=False)
        batches = order.rank_batches(self.dp_rank, self.dp_size, self.run.train.micro_batch)
        for _ in range(iters):
            yield _collate(self.valid, next(batches))

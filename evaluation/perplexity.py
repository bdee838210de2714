"""Perplexity of a model on a split of a preprocessed dataset (the shards its manifest.json lists).

The split's token streams are concatenated and cut as for training (`data_tools.dataset.PackedDataset`):
windows of seq_len + 1 tokens at stride seq_len, inputs the first seq_len, targets the last seq_len, so the
targets of the windows do not overlap and every token but the first is predicted exactly once, from up to
seq_len tokens of context (the tail shorter than a window is left out).

    loss       = mean next-token cross-entropy (nats) over every target token evaluated
    perplexity = exp(loss)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data_tools.dataset import PackedDataset, open_split
from model.gpt2 import GPT


@torch.no_grad()
def evaluate(
    model: GPT,
    data_dir: str | Path,
    split: str = "valid",
    seq_len: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Mean next-token loss of ``model`` (already on ``device``) over ``split`` of ``data_dir``.

    ``seq_len`` defaults to the model's context n_positions; ``max_batches`` limits the evaluation to the
    first batches of windows, in order (None: all). Runs in eval mode, restoring the model's mode after.
    Returns ``{"loss", "perplexity", "tokens", "sequences"}``: tokens is the number of targets, sequences
    the number of windows.

    Raises:
        DataError: the split is missing or holds fewer than seq_len + 1 tokens.
    """
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise ValueError(f"batch_size ({batch_size}) and max_batches ({max_batches}) must be at least 1")
    seq_len = model.config.n_positions if seq_len is None else seq_len
    dataset = PackedDataset(open_split(data_dir, split), seq_len)
    windows = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, windows, batch_size), desc=f"perplexity {split}", disable=not progress):
            batch = np.stack([dataset[i] for i in range(start, min(start + batch_size, windows))])
            batch = torch.from_numpy(batch).to(device)  # [B, seq_len + 1] int64
            _, loss = model(batch[:, :-1], batch[:, 1:])
            total += loss.item() * batch[:, 1:].numel()  # the mean over this batch's targets, as a sum
            tokens += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "sequences": windows}

"""Perplexity of a model on a split of a preprocessed dataset (the shards its manifest.json lists).

The split's token streams are concatenated and cut as for training (`data_tools.dataset.PackedDataset`):
windows of seq_len + 1 tokens at stride seq_len, inputs the first seq_len, targets the last seq_len, so the
targets of the windows do not overlap and every token but the first is predicted exactly once, from up to
seq_len tokens of context (the tail shorter than a window is left out).

    loss       = mean next-token cross-entropy (nats) over every target token evaluated
    perplexity = exp(loss)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data_tools.dataset import PackedDataset, open_split
from data_tools.errors import DataError
from model.gpt2 import GPT

log = logging.getLogger(__name__)


def check_tokenizer(tokenizer: Any, data_dir: str | Path) -> None:
    """Refuse data tokenized with another tokenizer than the model's (``tokenizers.Tokenizer``), as
    training refuses it: the same ids would mean other text, and the perplexity nothing. The data's
    tokenizer is the one its manifest.json names; when that directory is gone, the vocabulary sizes are
    compared (with a warning that nothing more could be).

    Raises:
        DataError: naming both tokenizers and the fix.
    """
    from data_tools.manifest import load_manifest
    from data_tools.train_tokenizer import load_tokenizer
    from evaluation.checkpoint import tokenizer_fingerprint

    entry = load_manifest(data_dir)["tokenizer"]
    tok_dir = Path(data_dir) / entry["path"]
    ours = tokenizer.get_vocab_size()
    refuse = (
        f"{data_dir} was tokenized with {tok_dir} ({entry['vocab_size']} ids, tokenizer.json sha256 "
        f"{entry['sha256'][:16]}), not with the model's tokenizer ({ours} ids): the same token ids would "
        "mean other text. Evaluate on data made with the model's tokenizer (codeparrot-preprocess "
        "--tokenizer <the tokenizer the model was trained with>)"
    )
    try:
        theirs, _ = load_tokenizer(tok_dir)
    except DataError:
        if entry["vocab_size"] != ours:
            raise DataError(refuse) from None
        log.warning("%s is gone: only its vocabulary size (%d) was compared with the model's", tok_dir, ours)
        return
    if tokenizer_fingerprint(theirs) != tokenizer_fingerprint(tokenizer):
        raise DataError(refuse)


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

"""evaluation.perplexity against a direct computation over the split's concatenated tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_tools.errors import DataError
from data_tools.indexed_dataset import IndexedDataset
from evaluation.perplexity import evaluate
from model.gpt2 import GPT
from model.presets import get_preset
from tests.training.conftest import tiny_data  # noqa: F401 - the shared tiny shards


def split_tokens(data: Path, split: str) -> torch.Tensor:
    manifest = json.loads((data / "manifest.json").read_text())
    shards = [IndexedDataset(data / s["prefix"]).tokens for s in manifest["splits"][split]["shards"]]
    return torch.from_numpy(np.concatenate(shards).astype(np.int64))


@torch.no_grad()
def direct(model: GPT, tokens: torch.Tensor, seq_len: int, windows: int) -> float:
    """Mean cross-entropy over windows i*seq_len .. i*seq_len + seq_len (inclusive), i < windows."""
    w = tokens[: windows * seq_len + 1].unfold(0, seq_len + 1, seq_len)  # [windows, seq_len + 1]
    logits = torch.cat([model(chunk[:, :-1])[0] for chunk in w.split(64)])  # [windows, seq_len, V]
    return F.cross_entropy(logits.flatten(0, 1).double(), w[:, 1:].flatten()).item()


@pytest.fixture
def model(tiny_data: Path) -> GPT:  # noqa: F811
    vocab = json.loads((tiny_data / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    return GPT(get_preset("tiny", vocab_size=vocab, n_embd=32, n_layer=1, n_head=2)).eval()


def test_perplexity_equals_direct_computation_over_every_shard(model: GPT, tiny_data: Path) -> None:  # noqa: F811
    tokens = split_tokens(tiny_data, "valid")
    windows = (len(tokens) - 1) // 128
    model.train()
    result = evaluate(model, tiny_data, batch_size=50)  # seq_len: the model's n_positions, 128
    assert model.training  # the mode is restored
    assert result["sequences"] == windows and result["tokens"] == windows * 128
    assert result["loss"] == pytest.approx(direct(model.eval(), tokens, 128, windows), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)


def test_max_batches_and_seq_len(model: GPT, tiny_data: Path) -> None:  # noqa: F811
    result = evaluate(model, tiny_data, split="train", seq_len=16, batch_size=3, max_batches=2)
    assert result["sequences"] == 6 and result["tokens"] == 96
    expected = direct(model, split_tokens(tiny_data, "train"), 16, 6)
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(DataError, match="no split 'test'"):
        evaluate(model, tiny_data, split="test")

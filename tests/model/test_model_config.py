"""GPTConfig validation, (de)serialisation and the presets' exact parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model.config import GPTConfig
from model.flops import count_parameters, param_count
from model.gpt2 import GPT
from model.presets import PRESETS, get_preset

SHAPE = dict(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def tied_gpt2_params(V: int, P: int, d: int, L: int) -> int:
    """Hand formula for tied GPT-2: V d + P d + L (12 d^2 + 13 d) + 2 d, V the padded vocabulary."""
    return V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d


def test_validation_lists_every_problem_with_values() -> None:
    with pytest.raises(ValueError) as err:
        GPTConfig(
            vocab_size=0, n_positions=1024, n_embd=1601, n_layer=2, n_head=25,
            attn_pdrop=1.5, layer_norm_epsilon=-1.0, attention="flash", tie_word_embeddings="yes",
        )  # fmt: skip
    msg = str(err.value)
    assert "n_head (25) must divide n_embd (1601)" in msg
    assert "vocab_size (0) must be >= 1" in msg
    assert "attn_pdrop (1.5)" in msg
    assert "layer_norm_epsilon (-1.0)" in msg
    assert "attention ('flash') must be one of 'auto', 'sdpa', 'torch'" in msg
    assert "tie_word_embeddings ('yes')" in msg
    assert msg.count("\n  - ") == 6


def test_types_are_checked() -> None:
    with pytest.raises(ValueError, match=r"n_layer \(2.0\) must be an int"):
        GPTConfig(**{**SHAPE, "n_layer": 2.0})
    with pytest.raises(ValueError, match=r"n_embd \(True\) must be an int"):
        GPTConfig(**{**SHAPE, "n_embd": True})


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError) as err:
        GPTConfig.from_dict({**SHAPE, "n_heads": 4, "dropout": 0.1})
    msg = str(err.value)
    assert "unknown keys ['dropout', 'n_heads']" in msg
    assert "valid keys are" in msg and "'n_head'" in msg and "'cross_entropy'" in msg
    with pytest.raises(ValueError, match=r"missing required keys \['n_layer'\]"):
        GPTConfig.from_dict({k: v for k, v in SHAPE.items() if k != "n_layer"})


def test_to_dict_round_trips_through_json() -> None:
    config = GPTConfig(**SHAPE, attention="torch", activation_checkpointing=True)
    again = GPTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert config.replace(n_layer=3).n_layer == 3 and config.n_layer == 2


def test_padded_vocab() -> None:
    assert GPTConfig(**{**SHAPE, "vocab_size": 50257}).padded_vocab_size == 50304
    assert GPTConfig(**{**SHAPE, "vocab_size": 512}).padded_vocab_size == 512
    assert GPTConfig(**{**SHAPE, "vocab_size": 509, "pad_vocab_to_multiple": 1}).padded_vocab_size == 509


def test_get_preset_unknown_name_lists_presets() -> None:
    with pytest.raises(ValueError, match="available presets: codeparrot, codeparrot-small, tiny"):
        get_preset("gpt-5")


def test_get_preset_overrides_are_validated() -> None:
    assert get_preset("tiny", vocab_size=1000).vocab_size == 1000
    with pytest.raises(ValueError, match="unknown keys"):
        get_preset("tiny", n_layers=3)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tiny", tied_gpt2_params(512, 128, 64, 2)),
        ("codeparrot-small", 111_008_256),
        ("codeparrot", 1_529_628_800),
    ],
)
def test_preset_parameter_counts_on_meta_device(name: str, expected: int) -> None:
    config = PRESETS[name]
    V, P, d, L = config.padded_vocab_size, config.n_positions, config.n_embd, config.n_layer
    assert expected == tied_gpt2_params(V, P, d, L)  # the literal numbers above are the formula's
    with torch.device("meta"):
        model = GPT(config)
    assert count_parameters(model) == expected
    assert param_count(config) == expected


def test_untied_and_padded_parameter_count() -> None:
    config = get_preset("tiny", vocab_size=509, tie_word_embeddings=False)
    with torch.device("meta"):
        model = GPT(config)
    expected = tied_gpt2_params(512, 128, 64, 2) + 512 * 64
    assert count_parameters(model) == expected == param_count(config)


def test_config_imports_without_torch() -> None:
    code = "import sys, model.config, model.presets; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

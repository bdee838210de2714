"""Parameter counts and FLOPs against numbers computed by hand."""

from __future__ import annotations

import torch

from model.flops import count_parameters, flops_per_token, matmul_params, param_count
from model.gpt2 import GPT
from model.presets import get_preset


def test_codeparrot_small_by_hand() -> None:
    config = get_preset("codeparrot-small")
    # blocks 12 x (12 * 768^2 + 13 * 768) = 85,054,464; final LN 1,536; head 32768 x 768 = 25,165,824
    assert matmul_params(config) == 110_221_824
    # 6 N = 661,330,944; attention 12 x 12 layers x 768 x 1024 tokens = 113,246,208
    assert flops_per_token(config) == 774_577_152
    assert flops_per_token(config, seq_len=512) == 661_330_944 + 113_246_208 // 2


def test_codeparrot_by_hand() -> None:
    config = get_preset("codeparrot")
    # blocks 48 x (12 * 1600^2 + 13 * 1600) = 1,475,558,400; final LN 3,200; head 32768 x 1600 = 52,428,800
    assert matmul_params(config) == 1_527_990_400
    assert flops_per_token(config) == 6 * 1_527_990_400 + 12 * 48 * 1600 * 1024


def test_matmul_params_is_all_parameters_but_positions_and_padding() -> None:
    config = get_preset("tiny", vocab_size=509)
    with torch.device("meta"):
        model = GPT(config)
    total = count_parameters(model)
    assert total == param_count(config)
    assert matmul_params(config) == total - 128 * 64 - (512 - 509) * 64


def test_trainable_only_counts_skip_frozen_parameters() -> None:
    with torch.device("meta"):
        model = GPT(get_preset("tiny"))
    model.embed.wpe.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 128 * 64

"""Parity with transformers' GPT2LMHeadModel in both directions (fp32, eval mode, random weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.gpt2 import GPT
from model.hf import config_from_hf, from_hf, gpt2_config, to_hf, to_hf_state_dict
from model.presets import get_preset

ATOL = 1e-5


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Weights far from the init (LayerNorm and biases included) so every mapped tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 50), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_ours_to_hf_logits_match(attn_implementation: str) -> None:
    model = GPT(get_preset("tiny", vocab_size=509))  # padded to 512 rows
    randomise(model, seed=0)
    with torch.no_grad():
        model.embed.wte.weight[509:] = 0.0
    model.eval()
    hf = to_hf(model, attn_implementation=attn_implementation).eval()
    assert hf.transformer.wte.weight.shape == (509, 64)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    idx = tokens(509)
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape == (3, 50, 509)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_hf_to_ours_logits_and_loss_match() -> None:
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=64, n_embd=48, n_layer=3, n_head=4)).eval()
    randomise(hf, seed=1)
    model = from_hf(hf).eval()
    assert model.config.padded_vocab_size == 1024
    assert torch.all(model.embed.wte.weight[1000:] == 0)
    idx = tokens(1000, seed=1)
    with torch.no_grad():
        out = hf(idx, labels=idx)
        # HF shifts labels inside; ours takes targets already shifted (-100: no next token).
        targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)
        logits, loss = model(idx, targets, return_logits=True)
        _, chunked_loss = model(idx, targets)
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(loss, out.loss, rtol=0, atol=ATOL)
    torch.testing.assert_close(chunked_loss, out.loss, rtol=0, atol=ATOL)


def test_round_trip_is_exact_and_untied_heads_map() -> None:
    model = GPT(get_preset("tiny", vocab_size=300, tie_word_embeddings=False))
    randomise(model, seed=2)
    with torch.no_grad():
        model.embed.wte.weight[300:] = 0.0
        model.lm_head.weight[300:] = 0.0
    hf_state = to_hf_state_dict(model.state_dict(), model.config)
    assert hf_state["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: [in, out]
    assert not torch.equal(hf_state["lm_head.weight"], hf_state["transformer.wte.weight"])
    back = from_hf(to_hf(model))
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_unsupported_hf_configs_are_refused_with_reasons() -> None:
    hf_config = GPT2Config(
        vocab_size=100, n_embd=32, n_head=4, activation_function="relu", n_inner=64,
        scale_attn_by_inverse_layer_idx=True,
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        config_from_hf(hf_config)
    msg = str(err.value)
    assert "activation_function ('relu')" in msg and "n_inner (64)" in msg and "scale_attn" in msg


def test_exported_config_carries_shape_and_no_hub_token_ids() -> None:
    config = get_preset("codeparrot-small")
    hf_config = gpt2_config(config, eos_token_id=0)
    assert (hf_config.n_layer, hf_config.n_embd, hf_config.n_head) == (12, 768, 12)
    assert hf_config.vocab_size == 32768 and hf_config.bos_token_id is None and hf_config.eos_token_id == 0
    assert config_from_hf(hf_config) == config

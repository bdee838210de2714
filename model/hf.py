"""Weight mapping between ``model.gpt2.GPT`` and transformers' ``GPT2LMHeadModel``, both directions.

Differences handled here:
- HF's ``Conv1D`` stores weights ``[in, out]``; ours are ``nn.Linear`` ``[out, in]``: transposed both ways.
- Our embedding (and untied head) has ``padded_vocab_size`` rows; HF has ``vocab_size``: padded rows are
  dropped on export and zero-filled on import.
- Names: ``embed.{wte,wpe}`` <-> ``transformer.{wte,wpe}``, ``blocks.i`` <-> ``transformer.h.i``,
  ``ln_f`` <-> ``transformer.ln_f``; HF's ``lm_head.weight`` is the tied ``wte`` (or our ``lm_head``).

The HF config is built locally from ours (no hub access). Exported models use GPT-2's "gelu_new" activation,
the same tanh approximation as ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from model.config import GPTConfig
from model.gpt2 import GPT

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

# Per-block parameters stored by HF as Conv1D (transposed relative to nn.Linear).
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_BLOCK_VECTORS = ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", *(f"{m}.bias" for m in _CONV1D))
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def gpt2_config(config: GPTConfig, **hf_kwargs: Any) -> GPT2Config:
    """A transformers ``GPT2Config`` with our shape and dropouts (``hf_kwargs`` override, e.g. token ids)."""
    from transformers import GPT2Config

    kwargs: dict[str, Any] = dict(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=config.resid_pdrop,
        embd_pdrop=config.embd_pdrop,
        attn_pdrop=config.attn_pdrop,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=0.02,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(hf_kwargs)
    return GPT2Config(**kwargs)


def config_from_hf(hf_config: GPT2Config, **overrides: Any) -> GPTConfig:
    """Our ``GPTConfig`` for a transformers ``GPT2Config``; ``overrides`` set our own fields (e.g. kernels).

    Raises:
        ValueError: listing every HF feature this model does not implement.
    """
    d = hf_config.n_embd
    problems = []
    if hf_config.activation_function not in _TANH_GELUS:
        act = hf_config.activation_function
        problems.append(f"activation_function ({act!r}) must be one of {_TANH_GELUS}")
    if hf_config.n_inner not in (None, 4 * d):
        problems.append(f"n_inner ({hf_config.n_inner}) must be None or 4 * n_embd ({4 * d})")
    if not hf_config.scale_attn_weights or hf_config.scale_attn_by_inverse_layer_idx:
        problems.append(
            "attention scaling must be 1/sqrt(head_dim) only: scale_attn_weights (True) and "
            f"scale_attn_by_inverse_layer_idx (False), got ({hf_config.scale_attn_weights}, "
            f"{hf_config.scale_attn_by_inverse_layer_idx})"
        )
    if getattr(hf_config, "add_cross_attention", False):
        problems.append("add_cross_attention (True) is not supported: decoder-only model")
    if problems:
        raise ValueError("cannot import this GPT-2 config:\n  - " + "\n  - ".join(problems))
    fields = dict(
        vocab_size=hf_config.vocab_size,
        n_positions=hf_config.n_positions,
        n_embd=d,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        embd_pdrop=hf_config.embd_pdrop,
        attn_pdrop=hf_config.attn_pdrop,
        resid_pdrop=hf_config.resid_pdrop,
        layer_norm_epsilon=hf_config.layer_norm_epsilon,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
    )
    return GPTConfig.from_dict({**fields, **overrides})


def to_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> ``GPT2LMHeadModel`` state dict (padded rows dropped, Conv1D weights transposed)."""
    V = config.vocab_size
    out = {
        "transformer.wte.weight": state["embed.wte.weight"][:V],
        "transformer.wpe.weight": state["embed.wpe.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": state["ln_f.bias"],
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for name in _BLOCK_VECTORS:
            out[theirs + name] = state[ours + name]
        for name in _CONV1D:
            out[f"{theirs}{name}.weight"] = state[f"{ours}{name}.weight"].t()
    head = state["embed.wte.weight"] if config.tie_word_embeddings else state["lm_head.weight"]
    out["lm_head.weight"] = head[:V]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """``GPT2LMHeadModel`` state dict -> ours (vocabulary zero-padded to ``padded_vocab_size`` rows)."""

    def pad_rows(w: torch.Tensor) -> torch.Tensor:
        padded = w.new_zeros(config.padded_vocab_size, w.size(1))
        padded[: w.size(0)] = w
        return padded

    out = {
        "embed.wte.weight": pad_rows(state["transformer.wte.weight"]),
        "embed.wpe.weight": state["transformer.wpe.weight"],
        "ln_f.weight": state["transformer.ln_f.weight"],
        "ln_f.bias": state["transformer.ln_f.bias"],
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for name in _BLOCK_VECTORS:
            out[ours + name] = state[theirs + name]
        for name in _CONV1D:
            out[f"{ours}{name}.weight"] = state[f"{theirs}{name}.weight"].t()
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = pad_rows(state["lm_head.weight"])
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf(model: GPT, **hf_kwargs: Any) -> GPT2LMHeadModel:
    """A ``GPT2LMHeadModel`` holding a copy of ``model``'s weights (float32 unless the weights are not).

    ``hf_kwargs`` go to ``GPT2Config`` (e.g. ``bos_token_id``, ``eos_token_id``, ``attn_implementation``).
    """
    from transformers import GPT2LMHeadModel

    hf_config = gpt2_config(model.config, **hf_kwargs)
    hf_model = GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict(to_hf_state_dict(model.state_dict(), model.config), strict=True)
    return hf_model.to(model.embed.wte.weight.dtype)


def from_hf(hf_model: GPT2LMHeadModel, **overrides: Any) -> GPT:
    """Our ``GPT`` with a copy of a ``GPT2LMHeadModel``'s weights; ``overrides`` go to ``GPTConfig``."""
    config = config_from_hf(hf_model.config, **overrides)
    model = GPT(config)
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config), strict=True)
    return model

"""Parameter counts and training FLOPs per token.

FLOPs convention (Megatron-LM / PaLM appendix B, as nanoGPT's ``estimate_mfu``): a weight used in a matmul
costs 2 FLOPs per token forward and 4 backward, so training costs ``6 N`` per token, plus causal-blind
attention scores and weighted sums ``12 * n_layer * n_embd * seq_len`` (QK^T and AV: 2 matmuls x 2 FLOPs x
3 for fwd+bwd, each ``T * d`` per token and layer, the causal mask not discounted).

Which N: the parameters that take part in a matmul for every token, i.e. the blocks' weights and the
output head (V x d, the tied token embedding used as a projection), but not the position table, whose lookup
costs nothing. Biases and LayerNorm weights are included (a rounding error). The head counts the real
``vocab_size`` rows, since padded rows are sliced away before the matmul. This N is
``param_count(config) - n_positions * n_embd - (padded_vocab_size - vocab_size) * n_embd``, the number
``matmul_params`` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.config import GPTConfig

if TYPE_CHECKING:
    import torch.nn as nn


def block_params(n_embd: int) -> int:
    """Parameters of one block, 12 d^2 + 13 d: qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, proj 4d^2+d, LNs 4d."""
    d = n_embd
    return 12 * d * d + 13 * d


def param_count(config: GPTConfig) -> int:
    """Closed-form parameter count of ``GPT(config)``, padded vocabulary rows included.

    ``Vp d + P d + L (12 d^2 + 13 d) + 2 d`` tied, plus ``Vp d`` for an untied head.
    """
    d, Vp = config.n_embd, config.padded_vocab_size
    n = Vp * d + config.n_positions * d + config.n_layer * block_params(d) + 2 * d
    if not config.tie_word_embeddings:
        n += Vp * d
    return n


def matmul_params(config: GPTConfig) -> int:
    """N of the 6N rule: the blocks, the final LayerNorm and the V x d output head (module docstring)."""
    d = config.n_embd
    return config.n_layer * block_params(d) + 2 * d + config.vocab_size * d


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a module, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward): ``6 N + 12 n_layer n_embd seq_len``.

    Args:
        config: model shape; N is ``matmul_params(config)``.
        seq_len: tokens per sequence; defaults to the context ``n_positions``.
    """
    T = config.n_positions if seq_len is None else seq_len
    return 6 * matmul_params(config) + 12 * config.n_layer * config.n_embd * T

"""Causal self-attention: torch SDPA (flash / memory-efficient on GPU, fused or math on CPU) vs an explicit
softmax reference.

Both take and return per-head tensors ``[B, H, T, hd]``. The reference materialises the ``[B, H, T, T]``
score matrix; SDPA does not on the fused paths.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

from model.kernels.availability import kernel_choice

logger = logging.getLogger(__name__)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(hd)) v written out, as in GPT-2.

    Args:
        q, k, v: ``[B, H, T, hd]``.
        dropout_p: dropout on the attention probabilities (pass 0.0 in eval mode).
    Returns:
        ``[B, H, T, hd]``.
    """
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~causal, float("-inf"))
    att = F.softmax(att.float(), dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # [B, H, T, hd]


@functools.cache
def sdpa_available() -> bool:
    """True when torch provides ``scaled_dot_product_attention`` (torch >= 2.0)."""
    return hasattr(F, "scaled_dot_product_attention")


@kernel_choice
def resolve_attention(requested: str, device_type: str) -> str:
    """Map a config choice ("auto", "sdpa", "torch") to the implementation that will run; logs once."""
    if requested == "torch":
        logger.info("attention: explicit-softmax reference on %s (requested)", device_type)
        return "torch"
    if sdpa_available():
        logger.info("attention: torch scaled_dot_product_attention on %s", device_type)
        return "sdpa"
    level = logging.WARNING if requested == "sdpa" else logging.INFO
    logger.log(level, "attention: SDPA unavailable in torch %s; using the reference", torch.__version__)
    return "torch"


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0, impl: str = "auto"
) -> torch.Tensor:
    """Causal attention over ``[B, H, T, hd]`` inputs with the implementation chosen by ``impl``."""
    if resolve_attention(impl, q.device.type) == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    return attention_reference(q, k, v, dropout_p)

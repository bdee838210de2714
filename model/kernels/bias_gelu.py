"""Bias add + tanh-approximated GELU (GPT-2's "gelu_new"): one fused Triton kernel on CUDA, torch elsewhere.

The MLP computes ``x @ W^T`` without its bias and hands the bias to ``bias_gelu``, so the fused path keeps
``nn.Linear``'s parameters and state_dict (``c_fc.weight``, ``c_fc.bias``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from model.kernels.availability import choose_triton_or_torch, kernel_choice

logger = logging.getLogger(__name__)


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(x + bias)``, ``x`` ``[..., n]``, ``bias`` ``[n]``, in x's dtype (as under autocast)."""
    return F.gelu(x + bias.to(x.dtype), approximate="tanh")


@kernel_choice
def resolve_bias_gelu(requested: str, device_type: str) -> str:
    """Map a config choice ("auto", "triton", "torch") to what runs on ``device_type``; logs once.

    "auto" takes Triton only on CUDA; an explicit "triton" also runs in the CPU interpreter when enabled.
    """
    return choose_triton_or_torch("bias_gelu", requested, device_type, logger)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``gelu_tanh(x + bias)``: ``x`` ``[..., n]``, ``bias`` ``[n]`` -> ``[..., n]`` in x's dtype."""
    if resolve_bias_gelu(impl, x.device.type) == "triton":
        from model.kernels.bias_gelu_triton import triton_bias_gelu

        return triton_bias_gelu(x, bias)
    return bias_gelu_reference(x, bias)


def linear_bias_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str = "auto"
) -> torch.Tensor:
    """``gelu_tanh(x @ weight^T + bias)``: ``x`` ``[..., k]``, ``weight`` ``[n, k]`` -> ``[..., n]``.

    With Triton the bias add is fused into the GELU kernel after a bias-free matmul; with torch the bias stays
    in the matmul (addmm) and ``F.gelu`` is one fused elementwise op, the faster split on CPU.
    """
    if resolve_bias_gelu(impl, x.device.type) == "triton":
        from model.kernels.bias_gelu_triton import triton_bias_gelu

        return triton_bias_gelu(F.linear(x, weight), bias)
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")

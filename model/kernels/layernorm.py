"""LayerNorm: a fused Triton kernel (forward and backward) on CUDA, ``F.layer_norm`` elsewhere.

``LayerNorm`` has exactly ``nn.LayerNorm``'s parameters (``weight``, ``bias``) and state_dict keys, so
checkpoints do not depend on the kernel that ran.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.kernels.availability import choose_triton_or_torch, kernel_choice

logger = logging.getLogger(__name__)


def layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension of ``x`` ``[..., d]`` with ``weight``, ``bias`` ``[d]``."""
    return F.layer_norm(x, (x.size(-1),), weight, bias, eps)


@kernel_choice
def resolve_layernorm(requested: str, device_type: str) -> str:
    """Map a config choice ("auto", "triton", "torch") to what runs on ``device_type``; logs once.

    "auto" takes Triton only on CUDA; an explicit "triton" also runs in the CPU interpreter when enabled.
    """
    return choose_triton_or_torch("layernorm", requested, device_type, logger)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, impl: str = "auto"
) -> torch.Tensor:
    """LayerNorm of ``x`` ``[..., d]`` -> ``[..., d]`` by the implementation ``impl`` resolves to."""
    if resolve_layernorm(impl, x.device.type) == "triton":
        from model.kernels.layernorm_triton import triton_layer_norm

        return triton_layer_norm(x, weight, bias, eps)
    return layer_norm_reference(x, weight, bias, eps)


class LayerNorm(nn.Module):
    """Drop-in ``nn.LayerNorm(d)`` (same parameters and state_dict) that can run the fused kernel."""

    def __init__(self, d: int, eps: float = 1e-5, impl: str = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.impl = impl

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weight one, bias zero (``generator`` is accepted for a uniform init interface; unused)."""
        self.weight.fill_(1.0)
        self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., d]``."""
        return layer_norm(x, self.weight, self.bias, self.eps, self.impl)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, impl={self.impl!r}"

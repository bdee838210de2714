"""Triton bias + tanh-GELU kernels (forward and backward) and their autograd Function.

Elementwise over the flattened input; the bias is broadcast along rows (``offset % n``). The backward kernel
recomputes ``u = x + b`` and ``tanh`` instead of saving them, so only ``x`` is kept for backward; the bias
gradient is the column sum of ``dx`` (fp32 accumulation in torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
SQRT_2_OVER_PI = 0.7978845608028654
GELU_COEF = 0.044715


@triton.jit
def _tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: no libdevice call, so the kernel also runs in the CPU interpreter.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _bias_gelu_fwd(X, B, Y, n_elements, n_cols, K0: tl.constexpr, K1: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    u = x + b
    t = _tanh(K0 * (u + K1 * u * u * u))
    y = 0.5 * u * (1.0 + t)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd(DY, X, B, DX, n_elements, n_cols, K0: tl.constexpr, K1: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    u = x + b
    t = _tanh(K0 * (u + K1 * u * u * u))
    # d/du [0.5 u (1 + tanh(k0 (u + k1 u^3)))]
    dgelu = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * K0 * (1.0 + 3.0 * K1 * u * u)
    tl.store(DX + offs, (dy * dgelu).to(DX.dtype.element_ty), mask=mask)


class TritonBiasGeluFn(torch.autograd.Function):
    """``gelu_tanh(x + bias)``; saves x and bias, recomputes the rest in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        grid = (triton.cdiv(n, BLOCK),)
        _bias_gelu_fwd[grid](x, bias, y, n, bias.numel(), K0=SQRT_2_OVER_PI, K1=GELU_COEF, BLOCK=BLOCK)
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, bias = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        n = x.numel()
        grid = (triton.cdiv(n, BLOCK),)
        _bias_gelu_bwd[grid](dy, x, bias, dx, n, bias.numel(), K0=SQRT_2_OVER_PI, K1=GELU_COEF, BLOCK=BLOCK)
        dbias = dx.reshape(-1, bias.numel()).sum(0, dtype=torch.float32).to(bias.dtype)
        return dx, dbias


def triton_bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused ``gelu_tanh(x + bias)`` for ``x`` ``[..., n]``; same values and gradients as the reference."""
    return TritonBiasGeluFn.apply(x, bias)

"""Triton LayerNorm kernels (forward and backward) and their autograd Function.

Imported only when Triton is usable (see ``model.kernels.layernorm.resolve_layernorm``). Rows of the
flattened ``[M, N]`` input are normalised in fp32 whatever the storage dtype; one program handles one row in
the forward pass and ``ROWS_PER_PROG`` rows in the backward pass, where it accumulates its share of the
weight and bias gradients in registers and writes one partial row, summed afterwards in torch (no atomics,
deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Largest row width handled by one program (register budget of a single block).
MAX_FUSED_WIDTH = 16384
ROWS_PER_PROG = 16


@triton.jit
def _layer_norm_fwd(X, Y, W, B, Mean, Rstd, stride, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _layer_norm_bwd(
    DY, X, W, Mean, Rstd, DX, DW, DB, stride, M, N, ROWS: tl.constexpr, BLOCK_N: tl.constexpr
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(0, ROWS):
        row = pid * ROWS + i
        row_ok = row < M
        mask = col_mask & row_ok
        x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + row, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(DW + pid * N + cols, dw_acc, mask=col_mask)
    tl.store(DB + pid * N + cols, db_acc, mask=col_mask)


class TritonLayerNormFn(torch.autograd.Function):
    """LayerNorm over the last dim; saves x, mean and 1/std (``[M]`` each) for the backward kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        N = x.size(-1)
        block_n = triton.next_power_of_2(N)
        if block_n > MAX_FUSED_WIDTH:
            raise ValueError(f"Triton layer_norm supports widths up to {MAX_FUSED_WIDTH}, got {N}")
        x2 = x.reshape(-1, N).contiguous()  # [M, N]
        M = x2.size(0)
        y = torch.empty_like(x2)
        mean = torch.empty(M, dtype=torch.float32, device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        _layer_norm_fwd[(M,)](x2, y, weight, bias, mean, rstd, x2.stride(0), N, eps, BLOCK_N=block_n)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.block_n = block_n
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, mean, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = dy.reshape(M, N).contiguous()
        dx = torch.empty_like(x2)
        programs = triton.cdiv(M, ROWS_PER_PROG)
        dw_part = torch.empty(programs, N, dtype=torch.float32, device=x2.device)
        db_part = torch.empty(programs, N, dtype=torch.float32, device=x2.device)
        _layer_norm_bwd[(programs,)](
            dy2,
            x2,
            weight,
            mean,
            rstd,
            dx,
            dw_part,
            db_part,
            x2.stride(0),
            M,
            N,
            ROWS=ROWS_PER_PROG,
            BLOCK_N=ctx.block_n,
        )
        dw = dw_part.sum(0).to(weight.dtype)
        db = db_part.sum(0).to(weight.dtype)
        return dx.view(dy.shape), dw, db, None


def triton_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused LayerNorm of ``x`` ``[..., N]``; same values and gradients as ``F.layer_norm``."""
    return TritonLayerNormFn.apply(x, weight, bias, eps)

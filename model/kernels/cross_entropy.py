"""Output head + cross-entropy, chunked so the full ``[N, V]`` fp32 logits never exist.

The head (``hidden @ W^T``) and the loss are computed chunk by chunk of rows inside one autograd Function
that, when gradients are needed, also computes them during its forward pass (softmax minus one-hot, times
the chunk's hidden states and the weight) and stores only those gradients: the peak extra memory is one
``[chunk_rows, V]`` fp32 block instead of ``[N, V]`` (1 GiB for micro-batch 8 x 1024 tokens x 32768 fp32),
and no head matmul is recomputed. Backward then only scales the stored gradients by the incoming one.

In bf16 (or fp16) the weight gradient is summed in fp32, but the matmul of a chunk can only write the
matmul dtype: each partial ``[V, d]`` product is cast and added to the fp32 sum, a pass over ``V x d`` that
cost as much as the chunk's matmuls on a CPU (over a third of the loss's time at a 32,768 vocabulary, 64-row
chunks). So the low-precision softmax gradients of several chunks are gathered in one ``[group_rows, V]``
buffer (which also holds each chunk's logits) and go into the weight gradient in one matmul and one add per
group, on CPU (`default_group_rows`); the fp32 buffer of log-probabilities stays one chunk.

Rows whose target is ``IGNORE_INDEX`` contribute neither loss nor gradient; the loss is the mean over the
other rows, like ``F.cross_entropy(reduction="mean")``. Only the first ``vocab_size`` rows of the (padded)
weight take part, so padded vocabulary rows get exactly zero gradient.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from model.kernels.availability import kernel_choice
from model.kernels.loss_chunks import default_chunk_rows, default_group_rows

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def cross_entropy_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of ``logits`` ``[..., V]`` (any dtype, upcast to fp32) against ``targets`` ``[...]``."""
    V = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def cross_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Materialised reference: ``hidden`` ``[N, d]``, ``weight`` ``[Vp, d]``, ``targets`` ``[N]``."""
    logits = F.linear(hidden, weight[:vocab_size])  # [N, V]
    return cross_entropy_from_logits(logits, targets)


@kernel_choice
def resolve_cross_entropy(requested: str, device_type: str) -> str:
    """Map a config choice ("auto", "chunked", "torch") to what runs; logs once. Chunked is pure torch."""
    if requested == "torch":
        logger.info(
            "cross_entropy: materialised logits + F.cross_entropy on %s (requested)",
            device_type,
        )
        return "torch"
    logger.info("cross_entropy: chunked head + loss on %s (no full logits)", device_type)
    return "chunked"


def _chunked_loss_and_grads(
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    chunk_rows: int,
    want_dh: bool,
    want_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Sum of the CE over rows of ``h @ w^T`` and, if asked, its unscaled gradients, chunk by chunk.

    Args:
        h: ``[N, d]`` and w: ``[V, d]`` in the matmul dtype; targets ``[N]`` (ignored rows set to 0) and
            valid ``[N]`` bool.
    Returns:
        loss sum (fp32 scalar), grad wrt h ``[N, d]`` (h's dtype) and wrt w ``[V, d]`` (fp32); None if not
        wanted. Ignored rows count neither in the loss nor in either gradient.
    """
    (N, d), V, dev = h.shape, w.size(0), h.device
    c_max = min(chunk_rows, N)
    mixed = want_dw and h.dtype != torch.float32  # fp32 weight gradient from low-precision matmuls
    group_rows = min(default_group_rows(V, chunk_rows, h.element_size(), dev.type), N) if mixed else c_max
    # Buffers reused by every chunk: fresh multi-MiB allocations per chunk cost page faults on CPU.
    # group_buf holds each chunk's logits, then its softmax gradient, group_rows rows at a time.
    group_buf = torch.empty(max(group_rows, c_max), V, dtype=h.dtype, device=dev)
    logp_buf = torch.empty(c_max, V, dtype=torch.float32, device=dev)
    row_ids = torch.arange(c_max, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
    grad_h = torch.empty(N, d, dtype=h.dtype, device=dev) if want_dh else None
    grad_w = torch.zeros(V, d, dtype=torch.float32, device=dev) if want_dw else None
    partial_w = torch.empty(V, d, dtype=h.dtype, device=dev) if mixed else None
    # Ignored rows must not reach the weight gradient: zero their hidden state in the g^T h product
    # (an [N, d] pass) rather than their gradient rows (an [N, V] pass).
    h_valid = h * valid[:, None].to(h.dtype) if want_dw else None  # [N, d]
    group_start = 0
    for start in range(0, N, chunk_rows):
        rows = slice(start, min(start + chunk_rows, N))
        c, t_c, v_c = rows.stop - start, targets[rows], valid[rows]
        at = start - group_start if mixed else 0  # this chunk's rows in group_buf
        logits = torch.mm(h[rows], w.t(), out=group_buf[at : at + c])  # [c, V]
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32, out=logp_buf[:c])  # [c, V], fused
        loss_sum -= (logp.gather(1, t_c[:, None]).squeeze(1) * v_c).sum()
        if not (want_dh or want_dw):
            continue
        # dL/dlogits before the mean: softmax - onehot. exp and the cast to the matmul dtype in one pass,
        # into the logits' rows (no longer needed) unless the matmul dtype is fp32.
        g = logp.exp_() if h.dtype == torch.float32 else torch.exp(logp, out=logits)
        g.index_put_((row_ids[:c], t_c), -v_c.to(g.dtype), accumulate=True)  # scatter_add_ is slow in bf16
        if want_dh:
            torch.mm(g, w, out=grad_h[rows])  # [c, d]
        if want_dw and not mixed:
            grad_w.addmm_(g.t(), h_valid[rows])  # [V, d]
        elif want_dw and (rows.stop - group_start == group_rows or rows.stop == N):
            # fp32 += one low-precision product over the whole group
            group = slice(group_start, rows.stop)
            grad_w.add_(torch.mm(group_buf[: rows.stop - group_start].t(), h_valid[group], out=partial_w))
            group_start = rows.stop
    return loss_sum, grad_h, grad_w


class ChunkedLinearCrossEntropyFn(torch.autograd.Function):
    """Mean CE of ``hidden @ weight[:V]^T`` without materialising all logits (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        vocab_size: int,
        chunk_rows: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE_INDEX  # [N]
        n_valid = valid.sum().to(torch.float32)
        h = hidden.to(compute_dtype)  # [N, d]
        w = weight[:vocab_size].to(compute_dtype)  # [V, d]
        safe_targets = torch.where(valid, targets, 0)
        loss_sum, grad_h, grad_w_real = _chunked_loss_and_grads(
            h, w, safe_targets, valid, chunk_rows, want_dh, want_dw
        )
        grad_w = None
        if want_dh:
            grad_h = (grad_h * (valid[:, None] / n_valid).to(grad_h.dtype)).to(hidden.dtype)
        if want_dw:
            grad_w = grad_w_real.div_(n_valid)  # [V, d] fp32
            pad = weight.size(0) - vocab_size
            if pad:  # padded vocabulary rows: exactly zero gradient
                grad_w = torch.cat([grad_w, grad_w.new_zeros(pad, grad_w.size(1))])
            grad_w = grad_w.to(weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        dw = grad_w * grad_loss.to(grad_w.dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean CE of the head ``hidden @ weight[:vocab_size]^T`` against ``targets``, chunk by chunk.

    Args:
        hidden: ``[N, d]`` final hidden states (after the last LayerNorm).
        weight: ``[Vp, d]`` output projection (the tied token embedding), ``Vp >= vocab_size``.
        targets: ``[N]`` int64 token ids in ``[0, vocab_size)`` or ``IGNORE_INDEX``.
        vocab_size: real vocabulary size; padded rows of ``weight`` are ignored.
        chunk_rows: rows per chunk; defaults to ``default_chunk_rows(vocab_size, device)``.
    Returns:
        Scalar fp32 loss. Under autocast the matmuls run in the autocast dtype, softmax in fp32.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    rows = chunk_rows or default_chunk_rows(vocab_size, device_type)
    with torch.autocast(device_type, enabled=False):
        return ChunkedLinearCrossEntropyFn.apply(hidden, weight, targets, vocab_size, rows, compute_dtype)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int, impl: str = "auto"
) -> torch.Tensor:
    """Head + mean CE through the implementation ``impl`` resolves to; shapes as ``chunked_cross_entropy``."""
    if resolve_cross_entropy(impl, hidden.device.type) == "chunked":
        return chunked_cross_entropy(hidden, weight, targets, vocab_size)
    return cross_entropy_reference(hidden, weight, targets, vocab_size)

"""Triton kernels vs their torch references, fp32, in the Triton CPU interpreter.

Not collected on its own (no test_ prefix): test_triton_kernels.py runs this file in a fresh pytest process
with TRITON_INTERPRET=1, which must be set before triton is first imported. The interpreter computes bf16
dot products wrongly and refuses bf16 scalar arithmetic, so everything here is fp32.

Tolerances: forward 1e-5 absolute; gradients rtol 1e-4, atol 1e-5 (the weight and bias gradients sum over
all rows in a different order than torch).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if os.environ.get("TRITON_INTERPRET") != "1":
    # Run directly without the variable: skip. test_triton_kernels.py sets it and fails on any skip.
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

# The *_triton modules import triton: without it (the dev extra installs it) collection fails, and with
# it the calling test.
from model.kernels.bias_gelu import bias_gelu, bias_gelu_reference  # noqa: E402
from model.kernels.bias_gelu_triton import triton_bias_gelu  # noqa: E402
from model.kernels.layernorm import LayerNorm, layer_norm_reference  # noqa: E402
from model.kernels.layernorm_triton import ROWS_PER_PROG, triton_layer_norm  # noqa: E402


def leaves(*shapes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_() for s in shapes]


def check_fwd_bwd(fn, ref, inputs: list[torch.Tensor]) -> None:
    out, expected = fn(*inputs), ref(*inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    dy = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, dy)
    want = torch.autograd.grad(expected, inputs, dy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# Widths: a power of two, one that needs column masking, GPT-2 small's; row counts that do and do not fill
# the backward kernel's ROWS_PER_PROG blocks.
@pytest.mark.parametrize("rows, width", [(ROWS_PER_PROG * 2, 64), (37, 100), (5, 768)])
def test_layer_norm_matches_torch(rows: int, width: int) -> None:
    x, w, b = leaves((rows, width), (width,), (width,), seed=rows)
    eps = 1e-5
    check_fwd_bwd(
        lambda x, w, b: triton_layer_norm(x, w, b, eps),
        lambda x, w, b: layer_norm_reference(x, w, b, eps),
        [x, w, b],
    )


def test_layer_norm_module_dispatches_to_triton_on_request() -> None:
    module = LayerNorm(64, impl="triton")
    x = torch.randn(2, 3, 64, requires_grad=True)
    y = module(x)
    assert y.grad_fn is not None and "TritonLayerNorm" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, F.layer_norm(x, (64,), module.weight, module.bias, 1e-5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows, width", [(8, 256), (13, 100), (3, 3200)])
def test_bias_gelu_matches_torch(rows: int, width: int) -> None:
    x, b = leaves((rows, width), (width,), seed=width)
    check_fwd_bwd(triton_bias_gelu, bias_gelu_reference, [x, b])


@pytest.mark.filterwarnings(
    "ignore:overflow encountered in exp"
)  # the interpreter's numpy sigmoid; inf is exact
def test_bias_gelu_large_arguments_saturate_like_torch() -> None:
    x = (torch.linspace(-30.0, 30.0, 512)[None, :] * torch.ones(2, 1)).requires_grad_()
    b = torch.zeros(512, requires_grad=True)
    check_fwd_bwd(triton_bias_gelu, bias_gelu_reference, [x, b])


def test_bias_gelu_dispatches_to_triton_on_request() -> None:
    x, b = leaves((4, 32), (32,), seed=0)
    y = bias_gelu(x, b, impl="triton")
    assert "TritonBiasGelu" in type(y.grad_fn).__name__

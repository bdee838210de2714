"""Dense matmuls, for the benchmarks' peaks: the one timer (`gflops`), a sweep over shapes in both layouts of
the second operand (`matmul_sweep`), the model's own training-step matmuls (`model_matmuls`), and the peak
those allow (`achievable_gflops`). bench.train_throughput takes MFU against the sweep on CPU ranks,
bench/gpu/checks.py's matmul stage against the same sweep on a GPU.

training/precision.py keeps its own short probe (F.linear in fp32 and bf16): it decides what
`train.precision = "auto"` picks, and training imports nothing of bench.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

SQUARES = (256, 512, 1024, 2048)


def model_matmuls(n_embd: int, rows: int, vocab: int, n_layer: int) -> list[tuple[tuple[int, int, int], int]]:
    """The dense matmuls of one training step of a GPT-2 at ``rows`` tokens, as ((m, k, n), count): per
    linear layer (QKV, attention output, MLP up, MLP down per block; the LM head once) its forward
    ``[rows, k] x [k, n]``, its input gradient ``[rows, n] x [n, k]`` and its weight gradient
    ``[n, rows] x [rows, k]``. The whole batch's shapes: the model's, not one implementation's chunking."""
    d = n_embd
    linears = [((d, 3 * d), n_layer), ((d, d), n_layer), ((d, 4 * d), n_layer), ((4 * d, d), n_layer)]
    counts: dict[tuple[int, int, int], int] = {}
    for (k, n), count in [*linears, ((d, vocab), 1)]:
        for shape in ((rows, k, n), (rows, n, k), (n, rows, k)):
            counts[shape] = counts.get(shape, 0) + count
    return sorted(counts.items())


def peak_shapes(n_embd: int, rows: int, vocab: int, n_layer: int = 1) -> list[tuple[int, int, int]]:
    """(m, k, n) of the sweep: squares 256..2048 (the large-matmul peak) and every matmul shape of the
    model's training step at ``rows`` tokens (`model_matmuls`, the achievable peak), smallest first."""
    model = {shape for shape, _ in model_matmuls(n_embd, rows, vocab, n_layer)}
    shapes = {(s, s, s) for s in SQUARES} | model
    return sorted(shapes, key=lambda s: (s[0] * s[1] * s[2], s))


def achievable_gflops(
    rates: dict[tuple[int, int, int], float | None], matmuls: list[tuple[tuple[int, int, int], int]]
) -> float | None:
    """The peak a model's own matmuls allow: its step's matmul FLOPs over the time they take at the rate
    measured for each shape (a FLOP-weighted harmonic mean of ``rates``); None if a shape went unmeasured."""
    flops = seconds = 0.0
    for shape, count in matmuls:
        rate = rates.get(shape)
        if not rate:
            return None
        f = 2.0 * shape[0] * shape[1] * shape[2] * count
        flops, seconds = flops + f, seconds + f / (rate * 1e9)
    return flops / seconds / 1e9


def gflops(
    fn: Callable[[], Any],
    flops: float,
    seconds: float,
    *,
    warmup: int = 1,
    sync: Callable[[], Any] | None = None,
    calls_per_sync: int = 1,
) -> float:
    """GFLOP/s of ``fn`` (``flops`` per call) over at least ``seconds`` of calls after ``warmup`` untimed
    ones (dispatch, weight packing, kernel selection), timed by the wall clock between synchronisations:
    ``sync`` (torch.cuda.synchronize on a GPU, whose calls return before the work is done; none on a CPU)
    after every ``calls_per_sync`` calls. If the last warm-up call alone took ``seconds``, its rate (a lower
    bound), so that a slow case costs one call more."""
    sync = sync or (lambda: None)
    for _ in range(warmup - 1):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    last = time.perf_counter() - start
    if last >= seconds:
        return flops / last / 1e9
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(calls_per_sync):
            fn()
        calls += calls_per_sync
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return flops * calls / elapsed / 1e9


def matmul_sweep(
    dtype: Any,
    shapes: Sequence[tuple[int, int, int]],
    seconds: float = 0.2,
    max_call_s: float = 1.0,
    agree: Callable[[float], float] = lambda x: x,
    *,
    device: str = "cpu",
    warmup: int = 1,
    calls_per_sync: int = 1,
) -> list[dict[str, Any]]:
    """Throughput (GFLOP/s) of an ``[m, k] x [k, n]`` matmul in ``dtype`` per shape, on ``device`` (this
    process's threads on a CPU), timed by `gflops`.

    Each shape runs in both layouts of the second operand, ``a @ b`` with ``b`` stored ``[k, n]`` and
    ``a @ w.t()`` with ``w`` stored ``[n, k]`` (nn.Linear's layout), and counts the faster: with bf16
    emulated on an AVX2-only CPU the two differed by 3-15x (torch 2.13). Shapes run smallest first; one
    whose single call would take over ``max_call_s`` at the best rate so far is skipped (gflops None), so
    that a precision emulated at 1 GFLOP/s does not spend a minute on 2048^3. ``agree`` combines a value
    across processes measuring at the same time (the max over ranks, and a barrier): every rank then skips
    the same shapes and starts each one together.
    """
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else None
    timing = dict(warmup=warmup, sync=sync, calls_per_sync=calls_per_sync)
    gen = torch.Generator(device=device).manual_seed(0)
    out, best = [], 0.0
    for m, k, n in shapes:
        flops = 2 * m * k * n
        predicted = flops / (best * 1e9) if best else 0.0
        if agree(predicted) > max_call_s:
            out.append({"shape": [m, k, n], "gflops": None, "skipped": f"over {max_call_s} s per call"})
            continue
        layouts = _layout_rates((m, k, n), dtype, device, gen, seconds, timing)
        fastest = max(layouts, key=layouts.get)
        best = max(best, layouts[fastest])
        out.append({"shape": [m, k, n], "gflops": layouts[fastest], "layout": fastest, "layouts": layouts})
    return out


def _layout_rates(
    shape: tuple[int, int, int], dtype: Any, device: str, gen: Any, seconds: float, timing: dict[str, Any]
) -> dict[str, float]:
    """GFLOP/s of one shape in both layouts; its operands are freed on return (GPU memory)."""
    import torch

    m, k, n = shape
    a, b, w = (torch.randn(*s, generator=gen, device=device, dtype=dtype) for s in ((m, k), (k, n), (n, k)))
    flops = 2 * m * k * n
    return {
        "a@b": gflops(lambda: a @ b, flops, seconds, **timing),
        "a@w.t()": gflops(lambda: a @ w.t(), flops, seconds, **timing),
    }


def rated_peak_tflops(precision: str) -> float | None:
    """The rated dense peak of this process's GPU (training.gpus.GPUS), None for CPUs and unknown GPUs."""
    from training.metrics import peak_flops

    peak = peak_flops(precision, None)
    return peak / 1e12 if peak else None

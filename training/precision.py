"""Which precision a run trains in: bf16 only where the device runs it natively and faster than fp32.

`train.precision = "auto"` (the default) resolves here, before any engine is built:
  - CUDA: bf16 when the GPU supports it (`torch.cuda.is_bf16_supported()`: Ampere and newer), else fp32.
  - CPU: torch runs bf16 matmuls natively with AMX (Intel Sapphire Rapids and newer) or AVX512-BF16 (AMD
    Zen 4, Intel Cooper Lake), and emulates them elsewhere. On an AVX2-only CPU (AMD Zen 2/3, older Xeons)
    a bf16 matmul measured 0.1-1.3 GFLOP/s against 20-90 GFLOP/s in fp32 (torch 2.13), so a bf16 run there
    stalls. The choice comes from a short measurement of the model's own matmul (the MLP's up-projection,
    clipped to at most 256 x 256 x 512 so that even an emulated bf16 matmul takes well under a second) in
    both dtypes: bf16 when it is at least `BF16_MIN_SPEEDUP` times faster than fp32. The CPU's flags are
    reported next to the figures. The margin is wide on every CPU seen so far (AMX: several times faster;
    Zen 4: about 2x; AVX2 only: about 0.01-0.07x), so ranks measuring at the same time agree; if they do
    not, `pretrain_gpt.py` takes fp32 on every rank.

An explicit `train.precision = "bf16"` is honoured, but warned about when bf16 runs several times slower
than fp32 (`SLOW_BF16_WARNING`) on this device.

`decide()` is the rule and takes figures only, so it is tested with the figures of each CPU kind;
`probe_cpu()` is the measurement.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

BF16_MIN_SPEEDUP = 1.25  # bf16 must beat fp32 by this much on the model's matmul to be chosen on a CPU
SLOW_BF16_WARNING = 0.5  # an explicit bf16 running below this fraction of fp32's speed is warned about
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matmuls on x86
PROBE_MAX_SHAPE = (256, 256, 512)  # (rows, in, out) cap of the measured matmul
PROBE_SECONDS = 0.15  # timed loop per dtype, after one warm-up call


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatmulFigures:
    """Measured throughput of one `[m, k] x [k, n]` matmul in both dtypes on this process's threads."""

    shape: tuple[int, int, int]
    fp32_gflops: float
    bf16_gflops: float
    threads: int

    @property
    def bf16_speedup(self) -> float:
        """bf16 throughput / fp32 throughput (below 1: bf16 is slower)."""
        return self.bf16_gflops / self.fp32_gflops

    def describe(self) -> str:
        m, k, n = self.shape
        return (
            f"[{m}x{k}]x[{k}x{n}] matmul on {self.threads} thread(s): fp32 {self.fp32_gflops:.1f} GFLOP/s, "
            f"bf16 {self.bf16_gflops:.1f} GFLOP/s ({self.bf16_speedup:.2f}x)"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    """What the rule looks at: the device type and, per type, its bf16 support or measured figures."""

    device_type: str  # "cuda" or "cpu"
    name: str  # GPU name, or the CPU model
    cuda_bf16: bool | None = None  # CUDA only: torch.cuda.is_bf16_supported()
    cpu_flags: tuple[str, ...] = ()  # CPU only: the bf16-relevant flags it has (subset of BF16_CPU_FLAGS)
    figures: MatmulFigures | None = None  # CPU only: the probe


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    """The precision a run uses, why, and a warning for an explicit choice that runs slowly here."""

    precision: str  # "fp32", "bf16" or "fp16"
    requested: str  # what train.precision said ("auto", "fp32", "bf16", "fp16")
    reason: str
    warning: str | None = None


def decide(requested: str, info: DeviceInfo) -> PrecisionChoice:
    """The precision for `requested` ("auto" or explicit) on the device `info` describes. Pure: no
    measurement, no logging."""
    if info.device_type == "cuda":
        if requested != "auto":
            return PrecisionChoice(precision=requested, requested=requested, reason="set by train.precision")
        if info.cuda_bf16:
            why = f"{info.name} supports bf16"
            return PrecisionChoice(precision="bf16", requested=requested, reason=why)
        why = f"{info.name} has no native bf16 (before Ampere); fp16 needs loss scaling, set it explicitly"
        return PrecisionChoice(precision="fp32", requested=requested, reason=why)

    flags = ", ".join(info.cpu_flags) if info.cpu_flags else f"none of {', '.join(BF16_CPU_FLAGS)}"
    where = f"{info.name} (bf16 CPU flags: {flags})"
    fig = info.figures
    if requested != "auto":
        warning = None
        if requested == "bf16" and fig is not None and fig.bf16_speedup < SLOW_BF16_WARNING:
            warning = (
                f"train.precision is bf16, but bf16 runs {1 / fig.bf16_speedup:.0f}x slower than fp32 on "
                f"{where}: {fig.describe()}. Training will be about that much slower; set "
                "train.precision=auto (or fp32) to train in fp32 here"
            )
        return PrecisionChoice(
            precision=requested, requested=requested, reason="set by train.precision", warning=warning
        )
    if fig is None:
        return PrecisionChoice(precision="fp32", requested=requested, reason=f"no measurement on {where}")
    if fig.bf16_speedup >= BF16_MIN_SPEEDUP:
        why = f"bf16 is {fig.bf16_speedup:.2f}x faster than fp32 on {where}: {fig.describe()}"
        return PrecisionChoice(precision="bf16", requested=requested, reason=why)
    why = f"bf16 is not at least {BF16_MIN_SPEEDUP}x faster than fp32 on {where}: {fig.describe()}" + (
        " (bf16 is emulated on this CPU)" if fig.bf16_speedup < SLOW_BF16_WARNING else ""
    )
    return PrecisionChoice(precision="fp32", requested=requested, reason=why)


# ---- measuring the device ------------------------------------------------------------------------------


def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU model name and its bf16-relevant flags, from /proc/cpuinfo (Linux; elsewhere unknown)."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return name, tuple(f for f in BF16_CPU_FLAGS if f in flags)


def _gflops(dtype: object, shape: tuple[int, int, int], seconds: float) -> float:
    """Throughput of `F.linear` ([m, k] x [n, k]^T, the layout every Linear of the model uses: with emulated
    bf16 it runs several times faster than a plain `a @ b`) in `dtype`."""
    import torch
    import torch.nn.functional as F

    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)  # nn.Linear's layout: a @ w.T
    F.linear(a, w)  # warm-up (first-call dispatch, packing)
    calls, start = 0, time.perf_counter()
    while True:
        F.linear(a, w)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or calls >= 200:
            return 2 * m * k * n * calls / elapsed / 1e9


def probe_shape(n_embd: int, rows: int) -> tuple[int, int, int]:
    """The model's MLP up-projection `[rows, d] x [d, 4d]`, clipped to PROBE_MAX_SHAPE."""
    cap_m, cap_k, cap_n = PROBE_MAX_SHAPE
    return min(rows, cap_m), min(n_embd, cap_k), min(4 * n_embd, cap_n)


def probe_cpu(n_embd: int, rows: int, seconds: float = PROBE_SECONDS) -> MatmulFigures:
    """Measure the model's matmul in fp32 and bf16 on this process's threads (well under a second even
    where bf16 is emulated)."""
    import torch

    shape = probe_shape(n_embd, rows)
    return MatmulFigures(
        shape=shape,
        fp32_gflops=_gflops(torch.float32, shape, seconds),
        bf16_gflops=_gflops(torch.bfloat16, shape, seconds),
        threads=torch.get_num_threads(),
    )


def device_info(device_type: str, n_embd: int, rows: int) -> DeviceInfo:
    """Describe this process's device for `decide()`; on a CPU this runs the probe."""
    if device_type == "cuda":
        import torch

        return DeviceInfo(
            device_type="cuda", name=torch.cuda.get_device_name(), cuda_bf16=torch.cuda.is_bf16_supported()
        )
    name, flags = cpu_model_and_flags()
    return DeviceInfo(device_type="cpu", name=name, cpu_flags=flags, figures=probe_cpu(n_embd, rows))


def choose(requested: str, device_type: str, n_embd: int, rows: int) -> PrecisionChoice:
    """`decide()` for this process's device, measuring only when the answer depends on it ("auto", or an
    explicit bf16 on a CPU, which is warned about when slow)."""
    if requested == "auto" or (requested == "bf16" and device_type == "cpu"):
        return decide(requested, device_info(device_type, n_embd, rows))
    return decide(requested, DeviceInfo(device_type=device_type, name=device_type))

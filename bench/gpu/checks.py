"""The short GPU checks of bench/gpu/gpu_bench.py, one per subcommand, each writing one JSON file:

    python -m bench.gpu.checks env        --out env.json      # GPU, driver, nvcc, package versions
    python -m bench.gpu.checks kernels    --out kernels.json  # each fused kernel against its torch reference
    python -m bench.gpu.checks fused-adam --out adam.json     # FusedAdam (JIT-built) vs torch AdamW
    python -m bench.gpu.checks matmul     --out matmul.json   # dense bf16 matmul TFLOP/s, best of the shapes

Each runs in its own process (the driver gives it a timeout). ``--device cpu`` runs the same code on the CPU
in fp32 at toy sizes (the driver's --cpu-smoke); what needs CUDA is recorded as skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "triton", "deepspeed", "transformers", "tokenizers", "numpy", "pytest")

# Tolerances of fused kernel vs torch reference, as tests/model/test_gpu_kernels.py states them:
# (output atol, gradient rtol and atol) per dtype.
TOLERANCES = {"bfloat16": (2e-2, 5e-2), "float32": (1e-5, 1e-4)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _location(package: str) -> str | None:
    try:
        files = importlib.metadata.distribution(package).locate_file("")
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(files)


def _command_line(cmd: Sequence[str]) -> str | None:
    """The last non-empty line a command prints, or None when it is missing or fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x.strip() for x in proc.stdout.splitlines() if x.strip()]
    return lines[-1] if proc.returncode == 0 and lines else None


def env_info(device: str) -> dict[str, Any]:
    """GPU name, capability and memory, driver, nvcc, CUDA of torch, rated bf16 peak, package versions."""
    import torch

    from training.gpus import gpu_key
    from training.metrics import peak_flops

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "nvcc": _command_line(["nvcc", "--version"]),
        "driver": _command_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
        # Where each package was imported from: the machine's own, or run.sh's wheel directory.
        "locations": {p: _location(p) for p in PACKAGES},
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        peak = peak_flops("bf16", None)
        info.update(
            gpu=props.name,
            gpu_key=gpu_key(props.name, props.total_memory),
            capability=f"{props.major}.{props.minor}",
            gpu_memory_bytes=props.total_memory,
            rated_bf16_tflops=peak / 1e12 if peak else None,
        )
    else:
        info.update(gpu=None, gpu_key=None, capability=None, gpu_memory_bytes=None, rated_bf16_tflops=None)
    return info


# ---- fused kernels against their references -------------------------------------------------------------


def _max_diff(a: Any, b: Any) -> float:
    return (a.float() - b.float()).abs().max().item()


def compare(
    name: str,
    fused: Callable[..., Any],
    reference: Callable[..., Any],
    inputs: list[Any],
    dtype_name: str,
) -> dict[str, Any]:
    """Outputs and input gradients of ``fused`` and ``reference`` on the same leaves, within TOLERANCES."""
    import torch

    atol, grad_tol = TOLERANCES[dtype_name]
    out, expected = fused(*inputs), reference(*inputs)
    dy = torch.randn_like(out) if out.dim() else torch.ones_like(out)
    grads = torch.autograd.grad(out, inputs, dy)
    grads_ref = torch.autograd.grad(expected, inputs, dy)
    out_ok = torch.allclose(out.float(), expected.float(), rtol=0, atol=atol)
    grads_ok = all(
        torch.allclose(a.float(), b.float(), rtol=grad_tol, atol=grad_tol)
        for a, b in zip(grads, grads_ref, strict=True)
    )
    return {
        "name": name,
        "status": "ok" if out_ok and grads_ok else "failed",
        "dtype": dtype_name,
        "shapes": [list(x.shape) for x in inputs],
        "max_out_diff": _max_diff(out, expected),
        "max_grad_diff": max(_max_diff(a, b) for a, b in zip(grads, grads_ref, strict=True)),
        "out_atol": atol,
        "grad_rtol_atol": grad_tol,
    }


def kernel_checks(device: str) -> dict[str, Any]:
    """Each fused op of model/kernels against its torch reference on ``device``: bf16 at model sizes on
    CUDA, fp32 at toy sizes on the CPU (where the Triton kernels are skipped: they compile for CUDA only)."""
    import torch

    from model.kernels.attention import attention_reference
    from model.kernels.bias_gelu import bias_gelu_reference
    from model.kernels.cross_entropy import chunked_cross_entropy, cross_entropy_reference
    from model.kernels.layernorm import layer_norm_reference

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    gen = torch.Generator(device=device).manual_seed(0)

    def leaves(*shapes: tuple[int, ...], scale: float = 1.0) -> list[Any]:
        return [
            (torch.randn(*s, generator=gen, device=device, dtype=dtype) * scale).requires_grad_()
            for s in shapes
        ]

    # Sizes: the 1.5B model's (d 1600, 25 heads of 64, MLP 6400, vocab 32768) on CUDA; toy ones on the CPU.
    B, H, T, hd = (4, 25, 1024, 64) if cuda else (2, 2, 32, 16)
    rows, d, vocab = (4096, 1600, 32768) if cuda else (64, 32, 100)
    results: list[dict[str, Any]] = []
    sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    results.append(
        compare("attention (SDPA vs softmax reference)", sdpa, attention_reference,
                leaves((B, H, T, hd), (B, H, T, hd), (B, H, T, hd)), dtype_name)
    )  # fmt: skip
    if cuda:
        from model.kernels.bias_gelu_triton import triton_bias_gelu
        from model.kernels.layernorm_triton import triton_layer_norm

        results.append(
            compare("layernorm (Triton)", lambda x, w, b: triton_layer_norm(x, w, b, 1e-5),
                    lambda x, w, b: layer_norm_reference(x, w, b, 1e-5),
                    leaves((rows, d), (d,), (d,)), dtype_name)
        )  # fmt: skip
        results.append(
            compare("bias_gelu (Triton)", triton_bias_gelu, bias_gelu_reference,
                    leaves((rows, 4 * d), (4 * d,)), dtype_name)
        )  # fmt: skip
    else:
        for name in ("layernorm (Triton)", "bias_gelu (Triton)"):
            results.append({"name": name, "status": "skipped", "reason": "Triton compiles for CUDA only"})
    targets = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    hidden, weight = leaves((rows, d), (vocab, d), scale=1.0)

    def under_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(h: Any, w: Any) -> Any:
            with torch.autocast(device, dtype=dtype, enabled=cuda):
                return fn(h, w * 0.05, targets, vocab)

        return run

    results.append(
        compare("cross_entropy (chunked head + loss)", under_autocast(chunked_cross_entropy),
                under_autocast(cross_entropy_reference), [hidden, weight], dtype_name)
    )  # fmt: skip
    failed = [r["name"] for r in results if r["status"] == "failed"]
    return {"status": "failed" if failed else "ok", "failed": failed, "checks": results}


# ---- FusedAdam ------------------------------------------------------------------------------------------


def fused_adam_check(steps: int = 5) -> dict[str, Any]:
    """Build DeepSpeed's FusedAdam (a JIT nvcc compile into TORCH_EXTENSIONS_DIR, or a load from it) as
    model.optim does (TORCH_CUDA_ARCH_LIST in a form DeepSpeed parses) and compare ``steps`` AdamW updates
    with torch's on the same parameters and gradients (fp32)."""
    import torch

    from model.optim import deepspeed_arch_env, deepspeed_arch_list

    start = time.perf_counter()
    from deepspeed.ops.adam import FusedAdam

    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(1600, 4800), (6400,), (32768, 64)]
    ours = [torch.randn(*s, generator=gen, device="cuda").requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    kwargs = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    with deepspeed_arch_env():
        fused = FusedAdam(ours, adam_w_mode=True, **kwargs)  # the first construction builds or loads the op
    build_s = time.perf_counter() - start
    reference = torch.optim.AdamW(theirs, foreach=False, **kwargs)
    for _ in range(steps):
        for a, b in zip(ours, theirs, strict=True):
            g = torch.randn(a.shape, generator=gen, device="cuda")
            a.grad, b.grad = g, g.clone()
        fused.step()
        reference.step()
    diff = max(_max_diff(a.detach(), b.detach()) for a, b in zip(ours, theirs, strict=True))
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    return {
        "status": "ok" if diff < 1e-5 else "failed",
        "build_or_load_s": build_s,
        "steps": steps,
        "max_param_diff_vs_torch_adamw": diff,
        "tolerance": 1e-5,
        "extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"),
        "arch_list": arch,
        "arch_list_for_deepspeed": deepspeed_arch_list(arch) if arch is not None else None,
    }


# ---- dense matmul peak ----------------------------------------------------------------------------------


def matmul_shapes(device: str) -> list[tuple[int, int, int]]:
    """(m, k, n): large squares, then the matmuls of codeparrot (1.5B, 8 x 1024 tokens) and
    codeparrot-small (16 x 1024 tokens): QKV, MLP up, MLP down, LM head. Toy squares on the CPU."""
    if device != "cuda":
        return [(64, 64, 64), (128, 128, 128)]
    shapes = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 16384, 16384)]
    for rows, d in ((8192, 1600), (16384, 768)):
        shapes += [(rows, d, 3 * d), (rows, d, 4 * d), (rows, 4 * d, d), (rows, d, 32768)]
    return shapes


def matmul_peak(device: str, seconds: float) -> dict[str, Any]:
    """Best bf16 (CUDA) or fp32 (CPU) dense matmul rate over ``matmul_shapes``, each shape in both layouts of
    the second operand (``a @ b``, and ``a @ w.t()`` as nn.Linear stores it), the faster counted: the
    benchmarks' sweep (bench.matmul), every shape measured, 3 warm-up calls, then the wall clock between
    synchronisations, one after every 5 calls."""
    import torch

    from bench.matmul import matmul_sweep
    from training.metrics import peak_flops

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    precision = "bf16" if device == "cuda" else "fp32"
    torch.backends.cuda.matmul.allow_tf32 = False
    sweep = matmul_sweep(
        dtype, matmul_shapes(device), seconds, math.inf, device=device, warmup=3, calls_per_sync=5
    )
    rows = [
        {
            "shape": r["shape"],
            "tflops": r["gflops"] / 1e3,
            "layouts": {k: v / 1e3 for k, v in r["layouts"].items()},
        }
        for r in sweep
    ]
    best = max(rows, key=lambda r: r["tflops"])
    rated = peak_flops(precision, None) if device == "cuda" else None
    return {
        "status": "ok",
        "precision": precision,
        "shapes": rows,
        "best_tflops": best["tflops"],
        "best_shape": best["shape"],
        "rated_tflops": rated / 1e12 if rated else None,
        "best_vs_rated": best["tflops"] * 1e12 / rated if rated else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=("env", "kernels", "fused-adam", "matmul"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--seconds", type=float, default=0.25, help="matmul: timing per shape and layout")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    if args.check == "env":
        result = {"status": "ok", **env_info(args.device)}
    elif args.check == "kernels":
        result = kernel_checks(args.device)
    elif args.check == "fused-adam":
        result = fused_adam_check()
    else:
        result = matmul_peak(args.device, args.seconds)
    result["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("checks", "shapes")}))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

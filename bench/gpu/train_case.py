"""One training case of bench/gpu/gpu_bench.py: a few steps of the real DeepSpeed engine on one rank.

    python bench/gpu/train_case.py --preset codeparrot --micro 8 --seq 1024 --activation-checkpointing \
        --out case.json

The run goes through what pretrain_gpt.py uses: `LaunchEnv.read()` (no launcher variables: one rank, a free
local port) and its `init_distributed()` (NCCL on CUDA, gloo on CPU), `training.validate.validate` against
the DeepSpeed JSON, and `training.engine.build_engine` (the model's own initialisation, FusedAdam on CUDA,
ZeRO from the JSON). Validation reads only the tokenizer's vocabulary from the data, so the case points it at
a stub manifest that states the preset's vocabulary; the batches are random token ids drawn on the device,
so no loader cost enters the figures.

Writes ``--out``: tokens/s over the timed steps (after --warmup untimed ones), MFU
(model.flops.flops_per_token x tokens/s / the rated peak of training.metrics), peak memory
(torch.cuda.max_memory_allocated over the whole process: model, gradients, optimizer states, activations),
the kernels and optimizer that ran. A CUDA out of memory error is recorded as ``"status": "oom"`` (exit 0)
so that the driver can retry with a smaller micro batch in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The model config fields that choose an implementation per op; "torch" everywhere is the unfused baseline.
UNFUSED = {"attention": "torch", "layernorm": "torch", "bias_gelu": "torch", "cross_entropy": "torch"}

logger = logging.getLogger("bench.gpu.train_case")


def run_config(args: argparse.Namespace, data_dir: Path, save_dir: Path) -> dict[str, Any]:
    """The run config of this case (the sections of training.config.RunConfig)."""
    return {
        "model": {"preset": args.preset, "overrides": {} if args.fused else dict(UNFUSED)},
        "data": {"paths": [str(data_dir)], "seq_len": args.seq},
        "optim": {"warmup_steps": 1},
        "train": {
            "micro_batch": args.micro,
            "max_steps": args.warmup + args.steps,
            "precision": args.precision,
            "activation_checkpointing": args.activation_checkpointing,
            "eval_interval": 0,
            "save_dir": str(save_dir),
        },
    }


def stub_data(where: Path, vocab_size: int) -> Path:
    """A directory whose manifest states only the tokenizer's vocabulary: all validation reads of the data."""
    where.mkdir(parents=True, exist_ok=True)
    manifest = {
        "splits": {},
        "tokenizer": {"vocab_size": vocab_size, "sha256": "synthetic"},
        "dtype": "uint16",
    }
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


def kernels_used(model: Any, device_type: str) -> dict[str, str]:
    """What each kernel choice of the model config resolved to on this device."""
    from model.kernels.attention import resolve_attention
    from model.kernels.bias_gelu import resolve_bias_gelu
    from model.kernels.cross_entropy import resolve_cross_entropy
    from model.kernels.layernorm import resolve_layernorm

    resolvers = {
        "attention": resolve_attention,
        "layernorm": resolve_layernorm,
        "bias_gelu": resolve_bias_gelu,
        "cross_entropy": resolve_cross_entropy,
    }
    return {op: fn(getattr(model, op), device_type) for op, fn in resolvers.items()}


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def peak_memory(device_type: str) -> dict[str, Any]:
    import torch

    if device_type == "cuda":
        return {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "memory_kind": "torch.cuda.max_memory_allocated",
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"peak_memory_bytes": rss, "peak_reserved_bytes": None, "memory_kind": "process max RSS (CPU)"}


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Build the engine, run warm-up and timed steps; the figures of this case."""
    import torch

    from launch.env import LaunchEnv
    from model.flops import flops_per_token, param_count
    from model.presets import get_preset
    from training.config import from_dict
    from training.engine import build_engine
    from training.metrics import peak_flops
    from training.validate import load_ds_config, validate

    launch = LaunchEnv.read()
    launch.init_distributed()
    device_type = launch.device_type
    vocab = get_preset(args.preset).vocab_size
    run = from_dict(run_config(args, stub_data(tmp / "data", vocab), tmp / "save"))
    resolved = validate(run, load_ds_config(args.ds), args.ds, launch.world, device_type)
    cfg = resolved.model
    start = time.perf_counter()
    engine = build_engine(
        run, cfg, resolved.ds_config, resolved.zero_stage, args.warmup + args.steps, device_type
    )
    build_s = time.perf_counter() - start
    device = engine.device
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    step_s, losses = [], []
    for _ in range(args.warmup + args.steps):
        tokens = torch.randint(0, cfg.vocab_size, (args.micro, args.seq + 1), generator=gen, device=device)
        x, y = tokens[:, :-1], tokens[:, 1:]
        sync()
        t0 = time.perf_counter()
        _, loss = engine(x, y)
        engine.backward(loss)
        engine.step()
        sync()
        step_s.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = step_s[args.warmup :]
    tokens_per_s = args.micro * args.seq * len(timed) / sum(timed)
    fpt = flops_per_token(cfg, args.seq)
    peak = peak_flops(resolved.precision.precision, None)
    client = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return {
        "status": "ok",
        "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "params": param_count(cfg),
        "precision": resolved.precision.precision,
        "zero_stage": resolved.zero_stage,
        "kernels": kernels_used(cfg, device_type),
        "optimizer": type(client).__name__,
        "engine_build_s": build_s,
        "step_s": step_s,
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "tokens_per_step": args.micro * args.seq,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "rated_peak_tflops": peak / 1e12 if peak else None,
        "mfu": fpt * tokens_per_s / peak if peak else None,
        "losses": losses,
        **peak_memory(device_type),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, help="model/presets.py name")
    p.add_argument("--micro", type=int, required=True, help="micro batch (sequences per step)")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--ds", default="ds_configs/zero2.json", help="DeepSpeed JSON")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True, help="fused kernels")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument(
        "--torch-adamw",
        action="store_true",
        help="use torch AdamW, as model.optim does when FusedAdam cannot be built (the driver passes it when "
        "the FusedAdam check failed, so that each case does not retry a minutes-long compile)",
    )
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from training.metrics import setup_logging

    setup_logging(0)
    if args.torch_adamw:
        import model.optim

        model.optim._fused_adam = lambda *a, **k: None  # build_optimizer's own fallback path
    with tempfile.TemporaryDirectory(prefix="gpu_bench_case_") as tmp:
        try:
            result = measure(args, Path(tmp))
        except Exception as err:
            if not is_oom(err):
                raise
            logger.warning("out of memory at micro batch %d: %s", args.micro, err)
            result = {"status": "oom", "error": str(err)[:2000]}
    result.update(preset=args.preset, micro_batch=args.micro, seq_len=args.seq, fused=args.fused)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    logger.info("case result: %s", json.dumps({k: v for k, v in result.items() if k != "step_s"}))
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without the process-group and CUDA teardown (seconds, and DeepSpeed threads can abort it): the
    # result is written and flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

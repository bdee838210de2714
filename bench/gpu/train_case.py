"""One training case of bench/gpu/gpu_bench.py: the real DeepSpeed engine on one rank, as a run trains.

    python -m bench.gpu.train_case --preset codeparrot --micro-batch 8 --grad-accum 64 --seq-len 1024 \
        --activation-checkpointing --out case.json

The run goes through what pretrain_gpt.py uses: `LaunchEnv.read()` (no launcher variables: one rank, a free
local port) and its `init_distributed()` (NCCL on CUDA, gloo on CPU), `training.validate.validate` against
the DeepSpeed JSON (``--zero-stage`` writes a copy with another stage), and `training.engine.build_engine`
(the model's own initialisation, FusedAdam on CUDA, ZeRO from the JSON, ``train.compile``). Validation
reads only the tokenizer's vocabulary from the data, so the case points it at a stub manifest that states
the preset's vocabulary; the batches are random token ids drawn on the device, so no loader cost enters.

Each optimizer step is ``--grad-accum`` micro-batches (forward, backward, ``engine.step()``, as
training/loop.py's ZeRO step), DeepSpeed stepping the optimizer at the accumulation boundary. After
``--warmup`` untimed micro-batches, ``--steps x --grad-accum`` consecutive micro-batches are timed: a window
that holds exactly ``--steps`` optimizer steps wherever it starts (checked against the engine's
``global_steps``). The window is timed by the wall clock between two synchronisations; each micro-batch by
CUDA events (no synchronisation inside the window), which shows what the optimizer step adds.

Writes ``--out``: tokens/s, MFU (model.flops.flops_per_token, attention counted, x tokens/s / the rated
peak of training.metrics), HFU (the FLOPs executed, recomputation included: bench/gpu/cases.py), peak memory
(torch.cuda.max_memory_allocated over the process: model, gradients, optimizer states, activations), the
kernels and optimizer that ran, the losses. A CUDA out of memory error is recorded as ``"status": "oom"``
(exit 0) so that the driver can retry with a smaller micro batch in a fresh process.
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

from bench.gpu.cases import UNFUSED

logger = logging.getLogger("bench.gpu.train_case")


def run_config(args: argparse.Namespace, data_dir: Path, save_dir: Path) -> dict[str, Any]:
    """The run config of this case (the sections of training.config.RunConfig)."""
    return {
        "model": {"preset": args.preset, "overrides": {} if args.fused else dict(UNFUSED)},
        "data": {"paths": [str(data_dir)], "seq_len": args.seq},
        "optim": {"warmup_steps": 1},
        "train": {
            "micro_batch": args.micro,
            "grad_accum": args.accum,
            "max_steps": total_steps(args),
            "precision": args.precision,
            "activation_checkpointing": args.activation_checkpointing,
            "compile": args.compile,
            "eval_interval": 0,
            "save_dir": str(save_dir),
        },
    }


def total_steps(args: argparse.Namespace) -> int:
    """Optimizer steps begun by the warm-up and the timed window (the schedule's length)."""
    return -(-(args.warmup + args.steps * args.accum) // args.accum)


def ds_config_path(args: argparse.Namespace, where: Path) -> str:
    """``--ds_config``, or with ``--zero-stage`` a copy of it that sets that ZeRO stage (the JSON stays the
    owner of every other setting)."""
    if args.zero_stage is None:
        return args.ds
    from training.validate import load_ds_config

    ds = load_ds_config(args.ds)
    ds.setdefault("zero_optimization", {})["stage"] = args.zero_stage
    path = where / f"{Path(args.ds).stem}_stage{args.zero_stage}.json"
    path.write_text(json.dumps(ds, indent=1) + "\n")
    return str(path)


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


class MicroBatchTimer:
    """Marks between micro-batches: CUDA events (recorded on the stream, read after the window's final
    synchronisation) on the GPU, the wall clock on the CPU."""

    def __init__(self, device_type: str) -> None:
        self.cuda = device_type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_s(self) -> list[float]:
        """Seconds between consecutive marks (call after synchronising)."""
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def step_breakdown(micro_s: list[float], warmup: int, accum: int) -> dict[str, Any]:
    """The window's micro-batch times split at the optimizer steps: a boundary micro-batch (the
    ``accum``-th of a step, counted from the first of the run) also reduces, clips and steps."""
    boundary = [i for i in range(len(micro_s)) if (warmup + i + 1) % accum == 0]
    inner = sorted(t for i, t in enumerate(micro_s) if i not in boundary)
    median = inner[len(inner) // 2] if inner else None
    step = [micro_s[i] for i in boundary]
    return {
        "boundary_micro_batches": boundary,
        "micro_batch_median_s": median,
        "optimizer_step_extra_s": (sum(step) / len(step) - median) if step and median is not None else None,
    }


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Build the engine, run warm-up and timed micro-batches; the figures of this case."""
    import torch

    from bench.gpu.cases import executed_flops_per_token
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
    ds_path = ds_config_path(args, tmp)
    resolved = validate(run, load_ds_config(ds_path), ds_path, launch.world, device_type)
    cfg = resolved.model
    start = time.perf_counter()
    engine = build_engine(run, cfg, resolved.ds_config, resolved.zero_stage, total_steps(args), device_type)
    build_s = time.perf_counter() - start
    device = engine.device
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)

    def micro_batch() -> torch.Tensor:
        tokens = torch.randint(0, cfg.vocab_size, (args.micro, args.seq + 1), generator=gen, device=device)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()  # the optimizer steps at the accumulation boundary
        return loss.detach().float()

    started = time.perf_counter()
    warmup_losses = [micro_batch().item() for _ in range(args.warmup)]
    warmup_s = time.perf_counter() - started
    timer, losses = MicroBatchTimer(device_type), []
    sync()
    steps_before, t0 = engine.global_steps, time.perf_counter()
    timer.mark()
    for _ in range(args.steps * args.accum):
        losses.append(micro_batch())
        timer.mark()
    sync()
    window_s = time.perf_counter() - t0
    micro_s = timer.intervals_s()
    optimizer_steps = engine.global_steps - steps_before
    if optimizer_steps != args.steps:
        raise RuntimeError(
            f"the timed window of {args.steps} x {args.accum} micro-batches held {optimizer_steps} optimizer "
            f"steps, not {args.steps}: DeepSpeed's gradient_accumulation_steps is not {args.accum}"
        )
    tokens = args.micro * args.seq * len(micro_s)
    tokens_per_s = tokens / window_s
    fpt = flops_per_token(cfg, args.seq)
    executed = executed_flops_per_token(cfg, args.seq, args.activation_checkpointing)
    peak = peak_flops(resolved.precision.precision, None)
    client = getattr(engine.optimizer, "optimizer", engine.optimizer)
    window_losses = torch.stack(losses).tolist()
    return {
        "status": "ok",
        "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "params": param_count(cfg),
        "precision": resolved.precision.precision,
        "zero_stage": resolved.zero_stage,
        "grad_accum": resolved.grad_accum,
        "activation_checkpointing": args.activation_checkpointing,
        "compile": args.compile,
        "kernels": kernels_used(cfg, device_type),
        "optimizer": type(client).__name__,
        "engine_build_s": build_s,
        "warmup_micro_batches": args.warmup,
        "warmup_s": warmup_s,
        "timed_micro_batches": len(micro_s),
        "timed_optimizer_steps": optimizer_steps,
        "window_s": window_s,
        "micro_batch_s": micro_s,
        **step_breakdown(micro_s, args.warmup, args.accum),
        "tokens_per_micro_batch": args.micro * args.seq,
        "tokens_per_step": args.micro * args.accum * args.seq,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "executed_flops_per_token": executed,
        "rated_peak_tflops": peak / 1e12 if peak else None,
        "mfu": fpt * tokens_per_s / peak if peak else None,
        "hfu": executed * tokens_per_s / peak if peak else None,
        "warmup_losses": warmup_losses,
        "loss_first": window_losses[0],
        "loss_mean": sum(window_losses) / len(window_losses),
        **peak_memory(device_type),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, help="model/presets.py name")
    p.add_argument("--micro-batch", dest="micro", type=int, required=True, help="sequences per micro-batch")
    p.add_argument("--grad-accum", dest="accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", dest="seq", type=int, default=1024)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--ds_config", dest="ds", default="ds_configs/zero2.json", help="DeepSpeed JSON")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), help="instead of the JSON's stage")
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile the model")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True, help="fused kernels")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--warmup", type=int, default=2, help="untimed micro-batches")
    p.add_argument(
        "--steps", type=int, default=1, help="timed optimizer steps (of --grad-accum micro-batches)"
    )
    p.add_argument(
        "--torch-adamw",
        action="store_true",
        help="use torch AdamW, as model.optim does when FusedAdam cannot be built (a case of its own, and "
        "the driver passes it when the FusedAdam check failed, so that no case retries a failing build)",
    )
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cmdline.logs import setup_logging

    setup_logging(rank=0)
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
    result.update(
        preset=args.preset, micro_batch=args.micro, accum=args.accum, seq_len=args.seq, fused=args.fused
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    logger.info("case result: %s", json.dumps({k: v for k, v in result.items() if k != "micro_batch_s"}))
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without the process-group and CUDA teardown (seconds, and DeepSpeed threads can abort it): the
    # result is written and flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

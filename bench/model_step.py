"""Training-step throughput of our GPT vs transformers' GPT2LMHeadModel, same shape, same process.

One step = forward + loss + backward + AdamW step (model.optim's torch AdamW, fused on CPU, the same
parameter groups for both models), on the same weights (ours exported to HF) and the same batches. HF runs
with its default attention (SDPA), "gelu_pytorch_tanh" (GPT-2's tanh GELU as one fused op; "gelu_new"
computes the same function from several) and use_cache=False, as for training. With --compile both models
also run under torch.compile, timed beside the eager pair: eager is compared with eager, compiled with
compiled.

Per precision (fp32, bf16 autocast): warm-up steps, then rounds over the timed batches. On each batch every
model steps once, in an order that alternates from batch to batch (ours first, then HF first, ...) so that
machine noise and cache effects hit both sides alike. Figures:

    tokens/s       = tokens per step / step time: median over the timed steps (spread: min-max over steps)
    ratio ours/hf  = median over the timed batches of t_hf / t_ours, the two steps on a batch back to back

A precision this CPU does not run natively (bf16 without AMX or AVX512-BF16: torch emulates it, about 20x
slower than fp32 on AVX2-only CPUs; see training/precision.py) is still measured and marked, but with
--emulated-micro-batch sequences, --emulated-rounds rounds and one warm-up step, so that the run stays short.

    python -m bench.model_step                # 4 layers, width 256, seq 256, vocab 8192, micro-batch 8
    python -m bench.model_step --compile      # also both models under torch.compile

Prints a line per precision and mode, writes bench/results/model_step_<date>_<cpu>.json, and ends with the
ratio in the precision train.precision="auto" picks on this machine, e.g.
``ratio ours/hf (fp32, the precision auto picks on this CPU, eager): 1.08x``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    HF_KWARGS,
    RESULTS_DIR,
    PrecisionSupport,
    Run,
    args_record,
    gpt_config,
    make_step,
    precision_record,
    precision_support,
)
from model.gpt2 import GPT
from model.hf import to_hf

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HOW = "median over {n} batches of t_hf / t_ours, both steps back to back in one process, order alternating"


@dataclass
class Runner:
    """One model's training step closure and the step times measured for it."""

    side: str  # "ours" or "hf"
    mode: str  # "eager" or "compiled"
    step: Step
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Method:
    """How one precision is measured: full size, or reduced where the precision is emulated here."""

    support: PrecisionSupport
    batch: int
    warmup: int
    steps: int
    rounds: int
    reduced: bool


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", dest="ctx", type=int, default=256, help="tokens per sample (n_positions)")
    p.add_argument("--vocab-size", dest="vocab", type=int, default=8192)
    p.add_argument("--micro-batch", dest="batch", type=int, default=8, help="sequences per step")
    p.add_argument("--dropout", type=float, default=0.0, help="all three dropouts, both models")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model and precision")
    p.add_argument("--steps", type=int, default=4, help="distinct batches timed per round")
    p.add_argument("--rounds", type=int, default=5, help="passes over the timed batches")
    p.add_argument("--emulated-micro-batch", dest="emulated_batch", type=int, default=1, help="non-native")
    p.add_argument("--emulated-rounds", type=int, default=1, help="rounds for a non-native precision")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    return p.parse_args(argv)


def method_for(args: argparse.Namespace, support: PrecisionSupport) -> Method:
    if support.native:
        return Method(support, args.batch, args.warmup, args.steps, args.rounds, reduced=False)
    batch, rounds = min(args.emulated_batch, args.batch), min(args.emulated_rounds, args.rounds)
    return Method(support, batch, min(args.warmup, 1), args.steps, rounds, reduced=True)


def time_step(runner: Runner, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds for one training step of ``runner``."""
    start = time.perf_counter()
    runner.step(*batch).item()  # .item() synchronises and would surface a NaN early
    return time.perf_counter() - start


def build_runners(args: argparse.Namespace, precision: str) -> list[Runner]:
    """Fresh models (same weights) and optimizers: ours and HF eager, then (--compile) both compiled."""
    config = gpt_config(args, args.dropout)
    runners = []
    for mode in ("eager", "compiled") if args.compile else ("eager",):
        torch.manual_seed(args.seed)
        ours = GPT(config).train()
        hf = to_hf(ours, **HF_KWARGS).train()
        if mode == "compiled":
            ours, hf = torch.compile(ours), torch.compile(hf)
        runners += [
            Runner("ours", mode, make_step(ours, False, precision)),
            Runner("hf", mode, make_step(hf, True, precision)),
        ]
    return runners


def spread(tokens_per_step: int, times: list[float]) -> dict[str, Any]:
    return {
        "step_s": times,
        "median_tps": tokens_per_step / statistics.median(times),
        "min_tps": tokens_per_step / max(times),
        "max_tps": tokens_per_step / min(times),
    }


def run_precision(args: argparse.Namespace, method: Method) -> dict[str, Any]:
    """Warm-up, then every model steps on each batch, the order alternating from batch to batch."""
    g = torch.Generator().manual_seed(args.seed)
    shape = (method.warmup + method.steps, method.batch, args.ctx + 1)
    tokens = torch.randint(0, args.vocab, shape, generator=g)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    runners = build_runners(args, method.support.precision)
    for runner in runners:
        for batch in batches[: method.warmup]:
            time_step(runner, batch)
    timed = batches[method.warmup :]
    for r in range(method.rounds):
        for i, batch in enumerate(timed):
            for runner in runners if (r * len(timed) + i) % 2 == 0 else runners[::-1]:
                runner.times.append(time_step(runner, batch))
    tokens_per_step = method.batch * args.ctx
    modes: dict[str, Any] = {}
    for mode in dict.fromkeys(r.mode for r in runners):
        ours, hf = (next(r for r in runners if r.mode == mode and r.side == s) for s in ("ours", "hf"))
        modes[mode] = {
            "ours": spread(tokens_per_step, ours.times),
            "hf": spread(tokens_per_step, hf.times),
            "ratio": statistics.median(h / o for h, o in zip(hf.times, ours.times, strict=True)),
            "pairs": len(ours.times),
        }
    return {
        "native": method.support.native,
        "vs_fp32": method.support.vs_fp32,
        "reduced": method.reduced,
        "batch": method.batch,
        "warmup": method.warmup,
        "steps": method.steps,
        "rounds": method.rounds,
        "tokens_per_step": tokens_per_step,
        "modes": modes,
    }


def precision_lines(args: argparse.Namespace, method: Method, fig: dict[str, Any]) -> list[str]:
    p = method.support.precision
    lines = [
        f"{method.support.label}: micro-batch {method.batch}, {method.warmup} warm-up + {method.rounds} "
        f"rounds x {method.steps} timed steps per model"
        + (
            f" (reduced from micro-batch {args.batch}, {args.warmup} warm-up, {args.rounds} rounds: not "
            "native here, so the run stays short)"
            if method.reduced
            else ""
        )
    ]
    for mode, m in fig["modes"].items():
        o, h = m["ours"], m["hf"]
        lines.append(
            f"{p} {mode}: ours {o['median_tps']:,.0f} tok/s ({o['min_tps']:,.0f}-{o['max_tps']:,.0f}) | "
            f"hf {h['median_tps']:,.0f} tok/s ({h['min_tps']:,.0f}-{h['max_tps']:,.0f}) | "
            f"ratio ours/hf {m['ratio']:.2f}x"
        )
    return lines


def table_rows(
    args: argparse.Namespace, figures: dict[str, Any], support: dict[str, PrecisionSupport]
) -> list:
    rows = []
    for p, fig in figures.items():
        for mode, m in fig["modes"].items():
            setting = (
                f"{args.layers} layers x {args.width}, ctx {args.ctx}, vocab {args.vocab}, micro-batch "
                f"{fig['batch']}, {torch.get_num_threads()} threads, {mode}"
            )
            rows.append(
                {
                    "benchmark": "bench/model_step.py",
                    "setting": setting,
                    "precision": p,
                    "native": support[p].note,
                    "baseline": f"GPT2LMHeadModel {m['hf']['median_tps']:,.0f} tok/s",
                    "ours": f"{m['ours']['median_tps']:,.0f} tok/s",
                    "ratio": round(m["ratio"], 3),
                    "how": HOW.format(n=m["pairs"]),
                }
            )
    return rows


def final_ratio(figures: dict[str, Any], auto: str, mode: str) -> str:
    """The last line: the ratio in the precision "auto" picks here (else the first measured, named so)."""
    if auto in figures:
        p, why = auto, "the precision auto picks on this CPU"
    else:
        p = next(iter(figures))
        why = f"auto would pick {auto} on this CPU, not measured"
    return f"ratio ours/hf ({p}, {why}, {mode}): {figures[p]['modes'][mode]['ratio']:.2f}x"


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the results JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    harness = Run("bench.model_step", argv)
    out = harness.out
    support, auto = precision_support(args.width, args.batch * args.ctx, torch.get_num_threads())
    out(f"precision auto here: {auto.precision} ({auto.reason})")
    out(
        f"model: {args.layers} layers, width {args.width}, {args.heads} heads, ctx {args.ctx}, "
        f"vocab {args.vocab}, dropout {args.dropout}; {torch.get_num_threads()} threads; HF with "
        f"{HF_KWARGS['activation_function']}, use_cache=False, SDPA attention"
        + ("; eager and torch.compile'd pairs" if args.compile else "; eager")
    )
    figures = {}
    for p in args.precision:
        method = method_for(args, support[p])
        figures[p] = run_precision(args, method)
        for line in precision_lines(args, method, figures[p]):
            out(line)
    out(
        "tok/s: median over timed steps (min-max over steps); ratio ours/hf: "
        + HOW.format(n="the timed")
        + ("; eager vs eager, compiled vs compiled" if args.compile else "")
    )
    mode = "compiled" if args.compile else "eager"
    out(
        "ratio ours/hf per precision ("
        + mode
        + "): "
        + ", ".join(f"{p} {fig['modes'][mode]['ratio']:.2f}x" for p, fig in figures.items())
    )
    return harness.finish(
        precision=precision_record(support, auto),
        figures={
            "args": args_record(args),
            "precisions": figures,
        },
        table=table_rows(args, figures, support),
        final_line=final_ratio(figures, auto.precision, mode),
        results_dir=args.results_dir,
    )


if __name__ == "__main__":
    main()

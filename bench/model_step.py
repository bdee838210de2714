"""Training-step throughput of our GPT vs transformers' GPT2LMHeadModel, same shape, same run.

One step = forward + loss + backward + AdamW step (torch AdamW, foreach, the same parameter groups for both
models), on the same weights (ours exported to HF) and the same batches. Each precision (fp32, bf16 autocast)
runs warmup steps, then timed steps alternating between the models (ours, HF, ours, ...) so that machine
noise hits both alike. Throughput is tokens / median step time; the ratio is the median over steps of the
two back-to-back step times. HF runs with its default attention (SDPA) and "gelu_new".

    python bench/model_step.py                       # 4 layers, width 256, ctx 256, vocab 8192, batch 8
    python bench/model_step.py --compile             # also times torch.compile(ours); HF stays eager

The last line is the ratio in the precision where ours is fastest, e.g.
``ratio ours/hf (best precision): 1.42x``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model.config import GPTConfig
from model.gpt2 import GPT
from model.hf import to_hf
from model.optim import build_optimizer

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Runner:
    """A named training step closure and the step times measured for it."""

    name: str
    step: Step
    times: list[float]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences per step)")
    p.add_argument("--dropout", type=float, default=0.0, help="all three dropouts, both models")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model and precision")
    p.add_argument("--steps", type=int, default=4, help="distinct batches timed per round")
    p.add_argument("--rounds", type=int, default=5, help="passes over the timed batches")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile(ours) (HF stays eager)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_step(model: torch.nn.Module, is_hf: bool, precision: str, lr: float = 1e-4) -> Step:
    """Closure running one optimizer step on (idx, targets) ``[B, T]``; returns the detached loss."""
    opt = build_optimizer(model, lr=lr, weight_decay=0.1)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def step(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast():
            if is_hf:
                # HF shifts labels itself: labels = idx gives the same next-token task as our targets.
                loss = model(input_ids=idx, labels=idx).loss
            else:
                _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def time_step(runner: Runner, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds for one training step of ``runner``."""
    start = time.perf_counter()
    runner.step(*batch).item()  # .item() synchronises and would surface a NaN early
    return time.perf_counter() - start


def build_runners(args: argparse.Namespace, precision: str) -> list[Runner]:
    """Fresh models (same weights) and optimizers for one precision: ours, HF, optionally compiled ours."""
    shape = dict(vocab_size=args.vocab, n_positions=args.ctx, n_embd=args.width, n_layer=args.layers)
    drop = dict(embd_pdrop=args.dropout, attn_pdrop=args.dropout, resid_pdrop=args.dropout)
    config = GPTConfig(**shape, **drop, n_head=args.heads)
    torch.manual_seed(args.seed)
    ours = GPT(config).train()
    hf = to_hf(ours).train()
    runners = [
        Runner("ours", make_step(ours, False, precision), []),
        Runner("hf", make_step(hf, True, precision), []),
    ]
    if args.compile:
        torch.manual_seed(args.seed)
        compiled = torch.compile(GPT(config).train())
        runners.append(Runner("ours+compile", make_step(compiled, False, precision), []))
    return runners


@dataclass
class Result:
    """Per runner: tokens/s at the median and at the best step; step-paired time ratio against HF."""

    median_tps: dict[str, float]
    best_tps: dict[str, float]
    speedup: dict[str, float]


def run_precision(args: argparse.Namespace, precision: str) -> Result:
    """Warmup, then steps alternating between the runners so that machine noise hits them alike."""
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, args.vocab, (args.warmup + args.steps, args.batch, args.ctx + 1), generator=g)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    runners = build_runners(args, precision)
    for runner in runners:
        for batch in batches[: args.warmup]:
            time_step(runner, batch)
    for _ in range(args.rounds):
        for batch in batches[args.warmup :]:
            for runner in runners:
                runner.times.append(time_step(runner, batch))
    tokens_per_step = args.batch * args.ctx
    hf_times = runners[1].times
    return Result(
        median_tps={r.name: tokens_per_step / statistics.median(r.times) for r in runners},
        best_tps={r.name: tokens_per_step / min(r.times) for r in runners},
        # Median over steps of t_hf / t_runner, each pair timed back to back: robust to slow drifts in load.
        speedup={
            r.name: statistics.median(h / t for h, t in zip(hf_times, r.times, strict=True)) for r in runners
        },
    )


def report(results: dict[str, Result]) -> None:
    """Prints one line per precision, then the ratio in the precision where ours is fastest (last line)."""
    for precision, res in results.items():
        line = ", ".join(
            f"{n} {v:,.0f} tok/s (best step {res.best_tps[n]:,.0f})" for n, v in res.median_tps.items()
        )
        print(f"{precision}: {line}; ours/hf {res.speedup['ours']:.2f}x (both eager)")
        if "ours+compile" in res.speedup:
            print(f"{precision}: torch.compile on ours only, HF eager: {res.speedup['ours+compile']:.2f}x")
    best = max(results, key=lambda p: results[p].median_tps["ours"])
    hf_best = max(results, key=lambda p: results[p].median_tps["hf"])
    print(
        f"fastest precision for ours: {best} ({results[best].median_tps['ours']:,.0f} tok/s, eager); "
        f"for HF: {hf_best} ({results[hf_best].median_tps['hf']:,.0f} tok/s)"
    )
    print(f"ratio ours/hf (best precision): {results[best].speedup['ours']:.2f}x")


def main(argv: Sequence[str] | None = None) -> dict[str, Result]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"model: {args.layers} layers, width {args.width}, {args.heads} heads, ctx {args.ctx}, "
        f"vocab {args.vocab}, micro-batch {args.batch}, dropout {args.dropout}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} timed steps "
        f"after {args.warmup} warmup"
    )
    results = {precision: run_precision(args, precision) for precision in args.precision}
    report(results)
    return results


if __name__ == "__main__":
    main()

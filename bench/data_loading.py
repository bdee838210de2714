"""Samples/s per rank of the training data path against what a training step consumes: the headroom.

    python -m bench.data_loading                       # seq 256, micro-batch 4, 2 ranks, 4 layers x 256
    python -m bench.data_loading --data out/ --batches 50 --step-repeats 2    # existing shards, shorter

In the same run, on the same shards (the standard library preprocessed with an 8,192-id tokenizer, as
bench/train_throughput.py trains on, bench.common.build_shards; or --data):
  ours      the batches pretrain_gpt.py trains on: `training.data.RankData(...).train_batches(0)` for each of
            --ranks data-parallel ranks (memory-mapped shards -> packed samples -> shuffled order -> int64
            input and target tensors), --batches micro-batches per rank after one untimed; each rank's
            samples/s, and the slowest rank's as the figure; twice, left to right (data.fim_rate 0) and with
            fill-in-the-middle at --fim-rate (the default run's 0.5: each document chosen is decoded, split,
            encoded again in three parts);
  baseline  what a training step consumes: samples/s of one step of `model.gpt2.GPT` (forward, loss,
            backward, AdamW; dropout off) on one thread, as each rank of bench/train_throughput.py runs,
            at the same micro-batch and sequence length; the median of --steps steps after --warmup.

    headroom = slowest rank's loader samples/s / training-step samples/s     (FIM off, and FIM on)

A headroom >= 1 means the loader, run inline as pretrain_gpt.py runs it, can never starve the step; it is also
the factor by which the step could get faster before the loader would. Loader and step alternate over
--step-repeats rounds (loaders, step, step, loaders, ...), so that drifts in machine load hit both; the
figures are medians over the rounds, with min and max. The headrooms are printed last; the figures go to
bench/results/data_loading_<date>_<cpu>.json (bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    Run,
    add_training_shape_args,
    args_record,
    build_shards,
    run_config_model,
    torch_threads,
)

HOW = "slowest rank's loader samples/s / one-thread step samples/s, medians over {n} alternating rounds"


def run_config(args: argparse.Namespace, data: Path, save_dir: Path, fim_rate: float) -> Any:
    """The RunConfig pretrain_gpt.py would get for these settings (bench/train_throughput.py's shape)."""
    from training.config import from_dict

    return from_dict(
        {
            "model": run_config_model(args),
            "data": {"paths": [str(data)], "seq_len": args.seq, "fim_rate": fim_rate},
            "train": {"micro_batch": args.micro, "max_steps": 10**6, "save_dir": str(save_dir)},
        }
    )


def loader_rates(run: Any, ranks: int, batches: int) -> list[float]:
    """Samples/s of each rank's training batches (one untimed micro-batch first: opening, first epoch's
    permutation)."""
    from training.data import RankData

    rates = []
    for rank in range(ranks):
        it = RankData(run, rank, ranks, total_samples=10**6).train_batches(0)
        next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            x, y = next(it)
        rates.append(batches * x.shape[0] / (time.perf_counter() - t0))
    return rates


class Step:
    """One training step of our GPT on one thread: forward, loss, backward, AdamW."""

    def __init__(self, run: Any, vocab_size: int) -> None:
        import torch

        from model.gpt2 import GPT
        from model.optim import build_optimizer
        from model.presets import get_preset

        m = run.model
        config = get_preset(m.preset, **{**m.overrides, "vocab_size": vocab_size})
        torch.manual_seed(0)
        self.model = GPT(config).train()
        self.opt = build_optimizer(self.model, lr=1e-4, weight_decay=0.1, device_type="cpu")
        gen = torch.Generator().manual_seed(0)
        shape = (run.train.micro_batch, run.data.seq_len)
        self.x = torch.randint(0, vocab_size, shape, generator=gen)
        self.y = torch.randint(0, vocab_size, shape, generator=gen)

    def rate(self, warmup: int, steps: int) -> float:
        """Samples/s: the micro-batch over the median step time of `steps` steps after `warmup`."""
        times = []
        with torch_threads(1):
            for k in range(warmup + steps):
                t0 = time.perf_counter()
                _, loss = self.model(self.x, self.y)
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                if k >= warmup:
                    times.append(time.perf_counter() - t0)
        return self.x.shape[0] / statistics.median(times)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_shape_args(p)
    p.add_argument("--ranks", type=int, default=2, help="data-parallel ranks whose loaders are measured")
    p.add_argument("--batches", type=int, default=200, help="timed micro-batches per rank and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per round")
    p.add_argument("--step-repeats", type=int, default=3, help="alternating rounds of loader and step")
    p.add_argument("--data", type=Path, help="a preprocess output directory (default: build the shards)")
    p.add_argument("--fim-rate", type=float, default=0.5, help="data.fim_rate of the FIM-on loaders")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the results JSON's path."""
    from data_tools.manifest import load_manifest

    args = parse_args(argv)
    harness = Run("bench.data_loading", argv)
    out = harness.out
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        if args.data is None:
            out("building shards (standard library, 8,192-id tokenizer) ...")
        data = args.data or build_shards(tmp)
        vocab = load_manifest(data)["tokenizer"]["vocab_size"]
        runs = {
            "fim_off": run_config(args, data, tmp / "save", 0.0),
            "fim_on": run_config(args, data, tmp / "save", args.fim_rate),
        }
        step = Step(runs["fim_off"], vocab)
        out(
            f"run: {args.ranks} ranks' loaders, micro-batch {args.micro}, seq {args.seq}, FIM off and at "
            f"rate {args.fim_rate}; step: GPT {args.layers} layers x {args.width}, vocab {vocab}, 1 thread, "
            "fp32"
        )
        rounds: list[dict[str, Any]] = []
        for k in range(args.step_repeats):
            r: dict[str, Any] = {}
            for side in ("loader", "step") if k % 2 == 0 else ("step", "loader"):
                if side == "loader":
                    for mode, run in runs.items():
                        r[f"loader_per_rank_{mode}"] = loader_rates(run, args.ranks, args.batches)
                else:
                    r["step"] = step.rate(args.warmup if k == 0 else 0, args.steps)
            for mode in runs:
                r[f"headroom_{mode}"] = min(r[f"loader_per_rank_{mode}"]) / r["step"]
            rounds.append(r)
            off_rates, on_rates = (
                ", ".join(f"{v:,.0f}" for v in r[f"loader_per_rank_{mode}"]) for mode in runs
            )
            out(
                f"round {k + 1}: loader {off_rates} samples/s per rank, with FIM {on_rates} | "
                f"step {r['step']:.2f} samples/s | headroom {r['headroom_fim_off']:,.1f}x, with FIM "
                f"{r['headroom_fim_on']:,.1f}x"
            )
    step_rate = spread([r["step"] for r in rounds])
    modes = {
        mode: {
            "fim_rate": run.data.fim_rate,
            "loader_samples_per_s": spread([min(r[f"loader_per_rank_{mode}"]) for r in rounds]),
            "headroom": spread([r[f"headroom_{mode}"] for r in rounds]),
        }
        for mode, run in runs.items()
    }
    off, on = modes["fim_off"], modes["fim_on"]
    for name, m in (("FIM off", off), (f"FIM {args.fim_rate}", on)):
        h = m["headroom"]
        out(
            f"{name}: loader (slowest rank) {m['loader_samples_per_s']['median']:,.0f} samples/s | step "
            f"{step_rate['median']:.2f} samples/s | headroom {h['median']:,.1f}x "
            f"({h['min']:,.1f}-{h['max']:,.1f})"
        )
    setting = (
        f"{args.ranks} ranks, seq {args.seq}, micro-batch {args.micro}; step: {args.layers} layers x "
        f"{args.width}, vocab {vocab}, 1 thread, fp32"
    )
    table = [
        {
            "benchmark": "bench/data_loading.py",
            "setting": f"{setting}; {label}",
            "precision": "fp32",
            "native": "native",
            "baseline": f"training step {step_rate['median']:.2f} samples/s",
            "ours": f"RankData {m['loader_samples_per_s']['median']:,.0f} samples/s per rank",
            "ratio": round(m["headroom"]["median"], 3),
            "how": HOW.format(n=args.step_repeats),
        }
        for label, m in (("FIM off", off), (f"FIM rate {args.fim_rate}", on))
    ]
    figures = {
        "args": args_record(args),
        "vocab_size": vocab,
        "rounds": rounds,
        "step_samples_per_s": step_rate,
        # FIM off at the top (the record's layout before FIM), FIM on under "fim"
        "loader_samples_per_s": off["loader_samples_per_s"],
        "headroom": off["headroom"],
        "fim": on,
    }
    final = (
        f"headroom loader/step samples/s: FIM off {off['headroom']['median']:.2f}x, FIM rate {args.fim_rate} "
        f"{on['headroom']['median']:.2f}x"
    )
    return harness.finish(
        precision=None,
        figures=figures,
        table=table,
        final_line=final,
        results_dir=args.results_dir,
    )


if __name__ == "__main__":
    main()
    sys.exit(0)

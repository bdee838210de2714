"""Training throughput of pretrain_gpt.py against transformers' GPT2LMHeadModel under the same DeepSpeed run.

    python -m bench.train_throughput                      # 4 layers, width 256, seq 256, micro-batch 4
    python -m bench.train_throughput --precision bf16 --ds_config ds_configs/zero2_cpu.json --repeats 5
    python -m bench.train_throughput --vocab-size 32768 --heads 8 --micro-batch 8   # the 1.5B configs' vocab

Per precision, on the same shards (the standard library, a tokenizer of --vocab-size ids), each side runs in
its own `deepspeed --num_gpus R` launch:
  ours   pretrain_gpt.py itself (our GPT, ZeRO from the JSON); tokens/s per step from its metrics.jsonl;
  hf     a worker (this module, --worker): the same DeepSpeed JSON resolved the same way, the same batches
         (RankData), the same AdamW parameter groups, transformers' GPT2LMHeadModel of identical shape with
         "gelu_pytorch_tanh" (GPT-2's tanh GELU as one fused op) and use_cache=False.
The sides alternate over --repeats launches each (ours, hf, hf, ours, ours, hf, ...) so that slow drifts in
machine load hit both alike. A launch's figure is the median tokens/s over its timed steps (warm-up steps
excluded); each side's figure is the median over its launches, the spread the min-max over launches, and

    ratio ours/hf = median tokens/s of ours / median tokens/s of hf, over the alternating launches

With --compile both sides run compiled (ours: train.compile; hf: module.compile() before
deepspeed.initialize); the first step compiles and is a warm-up step.

MFU = tokens/s x FLOPs per token (6N + 12 L d T, model.flops) / peak, against two measured peaks, both
from one sweep of dense matmuls in that precision run on every rank at once with one thread per rank as in
training, summed over the ranks:
  large-matmul peak  the best shape of the sweep (squares 256-2048 and the model's shapes): what the CPU
                     can do at its best;
  achievable peak    the model's own training-step matmuls at micro-batch x seq rows (each linear's forward,
                     input and weight gradients, the LM head; bench.matmul.model_matmuls), their FLOPs over
                     the time they take at the rate measured for each shape: what a step of this model
                     could reach if it did nothing but its matmuls.
CPUs have no rated peak; for a known GPU the rated one (training.gpus.GPUS) is printed beside.

The shards' tokenizer has --vocab-size ids (default 8,192; 32,768 is the vocabulary of the shipped 1.5B
configs, where the LM head is most of a small model's FLOPs).

A precision this CPU does not run natively (bf16 without AMX or AVX512-BF16, see training/precision.py) is
still measured and marked, but at --emulated-micro-batch sequences, --emulated-repeats launches per side and
--emulated-steps timed steps after one warm-up step, so that the run stays short.

Prints per-launch and per-side figures for every precision, writes
bench/results/train_throughput_<date>_<cpu>.json, and ends with the ratio in the precision
train.precision="auto" picks on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCH_TIMEOUT_S = 1800
HOW = "median tok/s ours / median tok/s hf over {n} launch(es) per side, alternating"


@dataclass(frozen=True)
class Method:
    """How one precision is measured: full size, or reduced where the precision is emulated here."""

    precision: str
    label: str
    native: bool
    note: str
    micro: int
    warmup: int
    steps: int
    repeats: int
    reduced: bool


def method_for(args: argparse.Namespace, support: Any) -> Method:
    common = dict(precision=support.precision, label=support.label, native=support.native, note=support.note)
    if support.native:
        return Method(
            **common,
            micro=args.micro,
            warmup=args.warmup,
            steps=args.steps,
            repeats=args.repeats,
            reduced=False,
        )
    return Method(
        **common,
        micro=min(args.emulated_micro, args.micro),
        warmup=min(args.warmup, 1),
        steps=min(args.emulated_steps, args.steps),
        repeats=min(args.emulated_repeats, args.repeats),
        reduced=True,
    )


def run_config(args: argparse.Namespace, method: Method, data: Path, save_dir: Path) -> dict:
    from bench.common import run_config_model

    return {
        "model": run_config_model(args),
        "data": {"paths": [str(data)], "seq_len": args.seq},
        "train": {
            "micro_batch": method.micro,
            "max_steps": method.warmup + method.steps,
            "precision": method.precision,
            "log_interval": 1,
            "eval_interval": 0,
            "save_interval": 10**9,
            "save_dir": str(save_dir),
            "compile": args.compile,
        },
    }


# ---- the HF worker (runs under the deepspeed launcher) -----------------------------------------------


def measure_peak(dtype: Any, n_embd: int, rows: int, vocab: int, n_layer: int) -> dict[str, Any]:
    """The matmul sweep on every rank at once (ranks agree on skipped shapes and start each together);
    per shape, the sum of the ranks' GFLOP/s. Two peaks from it: the best shape of the sweep (the
    large-matmul peak) and the achievable one of the model's own step shapes. Collective: every rank must
    call it."""
    import torch
    import torch.distributed as dist

    from bench.matmul import achievable_gflops, matmul_sweep, model_matmuls, peak_shapes

    def agree(x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # also a barrier: the ranks start the shape together
        return t.item()

    sweep = matmul_sweep(dtype, peak_shapes(n_embd, rows, vocab, n_layer), agree=agree)
    rates = torch.tensor([s["gflops"] or 0.0 for s in sweep], dtype=torch.float64)
    dist.all_reduce(rates)
    for s, total in zip(sweep, rates.tolist(), strict=True):
        s["total_gflops"] = total if s["gflops"] is not None else None
        s["rank0_gflops"] = s.pop("gflops")
    best = max((s for s in sweep if s["total_gflops"]), key=lambda s: s["total_gflops"])
    matmuls = model_matmuls(n_embd, rows, vocab, n_layer)
    achievable = achievable_gflops({tuple(s["shape"]): s["total_gflops"] for s in sweep}, matmuls)
    return {
        "sweep": sweep,
        "best_gflops": best["total_gflops"],
        "best_shape": best["shape"],
        "achievable_gflops": achievable,
        "model_matmuls": [{"shape": list(shape), "count": count} for shape, count in matmuls],
    }


def hf_worker(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import GPT2LMHeadModel

    from bench.common import HF_KWARGS
    from launch.env import LaunchEnv
    from model.hf import gpt2_config
    from model.optim import build_optimizer, param_groups
    from training.config import from_dict
    from training.data import RankData
    from training.validate import load_ds_config, validate

    run = from_dict(json.loads(Path(args.run_json).read_text()))
    LaunchEnv.read().init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    resolved = validate(run, load_ds_config(args.ds), args.ds, world, "cpu")
    m = resolved.model
    peak = None
    if args.peak:
        dtype = torch.bfloat16 if run.train.precision == "bf16" else torch.float32
        rows = run.train.micro_batch * run.data.seq_len
        peak = measure_peak(dtype, m.n_embd, rows, m.vocab_size, m.n_layer)
    hf = GPT2LMHeadModel(gpt2_config(m, **HF_KWARGS))
    if run.train.compile:
        hf.compile()  # nn.Module.compile: in place, so DeepSpeed wraps the compiled module
    optimizer = build_optimizer(param_groups(hf, run.optim.weight_decay), run.optim.lr, device_type="cpu")
    engine, _, _, _ = deepspeed.initialize(model=hf, optimizer=optimizer, config=resolved.ds_config)
    batches = RankData(run, rank, world, 10**6).train_batches(0)
    times = []
    for _ in range(run.train.max_steps):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(resolved.grad_accum):
            x, _ = next(batches)
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        tokens = resolved.global_batch * run.data.seq_len
        steps_tps = [tokens / t for t in times[args.warmup :]]
        Path(args.out).write_text(json.dumps({"steps_tps": steps_tps, "peak": peak}))


# ---- the driver ----------------------------------------------------------------------------------------


def launch(cmd: list[str], tmp: Path) -> None:
    """One launch (bench.launcher), 1 thread per rank, the extension and inductor caches under ``tmp``
    (shared by the launches: later ones compile warm); raises with its output's tail on failure."""
    from bench.common import run_command
    from bench.launcher import deepspeed_env

    run_command(cmd, deepspeed_env(tmp), LAUNCH_TIMEOUT_S)


def launch_ours(
    args: argparse.Namespace, method: Method, data: Path, run_dir: Path, tmp: Path
) -> list[float]:
    from bench.launcher import pretrain_command
    from training.run_files import METRICS

    cfg = run_config(args, method, data, run_dir / "save")
    (run_dir / "run.json").write_text(json.dumps(cfg))
    launch(pretrain_command(run_dir / "run.json", args.ds, ranks=args.ranks), tmp)
    lines = [json.loads(x) for x in (run_dir / "save" / METRICS).read_text().splitlines()]
    return [x["tokens_per_s"] for x in lines if x["step"] > method.warmup]


def launch_hf(
    args: argparse.Namespace, method: Method, data: Path, run_dir: Path, tmp: Path, peak: bool
) -> dict[str, Any]:
    from bench.launcher import deepspeed_command

    cfg = run_config(args, method, data, run_dir / "save")
    (run_dir / "run.json").write_text(json.dumps(cfg))
    worker = [
        "--worker",
        "--run-json",
        run_dir / "run.json",
        "--ds_config",
        args.ds,
        "--out",
        run_dir / "hf.json",
    ]
    worker += ["--warmup", str(method.warmup), *(["--peak"] if peak else [])]
    launch(deepspeed_command("bench.train_throughput", *worker, ranks=args.ranks, module=True), tmp)
    return json.loads((run_dir / "hf.json").read_text())


def measure(args: argparse.Namespace, method: Method, data: Path, tmp: Path, out: Any) -> dict[str, Any]:
    """The alternating launches of one precision; per-launch, per-side, peak and MFU figures."""
    from bench.matmul import rated_peak_tflops
    from model.flops import flops_per_token
    from training.config import from_dict
    from training.validate import load_ds_config, validate

    launches: list[dict[str, Any]] = []
    peak = None
    for k in range(method.repeats):
        for side in ("ours", "hf") if k % 2 == 0 else ("hf", "ours"):
            run_dir = tmp / f"{method.precision}_{len(launches)}_{side}"
            run_dir.mkdir()
            start = time.perf_counter()
            if side == "ours":
                steps = launch_ours(args, method, data, run_dir, tmp)
            else:
                hf = launch_hf(args, method, data, run_dir, tmp, peak=peak is None)
                steps, peak = hf["steps_tps"], peak or hf["peak"]
            wall, tps = time.perf_counter() - start, statistics.median(steps)
            launches.append({"side": side, "steps_tps": steps, "tokens_per_s": tps, "wall_s": wall})
            out(
                f"{method.precision}: launch {len(launches)} {side:<4} {tps:,.0f} tok/s "
                f"(median of {len(steps)} steps, {wall:.0f} s launch)"
            )
    cfg = from_dict(run_config(args, method, data, tmp / "unused"))
    resolved = validate(cfg, load_ds_config(args.ds), args.ds, args.ranks, "cpu")
    fpt = flops_per_token(resolved.model, args.seq)
    sides = {}
    for side in ("ours", "hf"):
        tps = [x["tokens_per_s"] for x in launches if x["side"] == side]
        median = statistics.median(tps)
        sides[side] = {"median_tps": median, "min_tps": min(tps), "max_tps": max(tps), "launches": len(tps)}
        sides[side]["mfu"] = median * fpt / (peak["best_gflops"] * 1e9)
        achievable = peak.get("achievable_gflops")
        sides[side]["mfu_achievable"] = median * fpt / (achievable * 1e9) if achievable else None
    rated = rated_peak_tflops(method.precision)
    return {
        "native": method.native,
        "reduced": method.reduced,
        "micro": method.micro,
        "warmup": method.warmup,
        "steps": method.steps,
        "repeats": method.repeats,
        "flops_per_token": fpt,
        "launches": launches,
        "sides": sides,
        "ratio": sides["ours"]["median_tps"] / sides["hf"]["median_tps"],
        "peak": {**peak, "kind": "measured", "ranks": args.ranks, "threads_per_rank": 1},
        "rated_peak_tflops_per_device": rated,
    }


def precision_lines(args: argparse.Namespace, method: Method, r: dict[str, Any]) -> list[str]:
    o, h, pk = r["sides"]["ours"], r["sides"]["hf"], r["peak"]
    m, k, n = pk["best_shape"]
    rated = (
        f"rated {r['rated_peak_tflops_per_device']} TFLOP/s per device"
        if r["rated_peak_tflops_per_device"]
        else "no rated peak for CPUs"
    )
    over = [s for s, v in (("ours", o), ("hf", h)) if v["mfu"] > 1]
    note = (
        [
            f"{method.precision}: MFU over 100% ({', '.join(over)}): the peak measured below what training "
            "reached (a busy machine while the sweep ran, or a faster matmul path in training than in it)"
        ]
        if over
        else []
    )
    achievable = pk.get("achievable_gflops")
    pct = lambda x: f"{x:.1%}" if x is not None else "-"  # noqa: E731
    return [
        f"{method.precision}: ours {o['median_tps']:,.0f} tok/s ({o['min_tps']:,.0f}-{o['max_tps']:,.0f}, "
        f"MFU {o['mfu']:.1%}) | hf {h['median_tps']:,.0f} tok/s ({h['min_tps']:,.0f}-{h['max_tps']:,.0f}, "
        f"MFU {h['mfu']:.1%}) | ratio ours/hf {r['ratio']:.2f}x ({HOW.format(n=o['launches'])})",
        f"{method.precision}: large-matmul peak {pk['best_gflops']:,.1f} GFLOP/s: the best dense "
        f"{method.precision} matmul of the sweep ([{m}x{k}]x[{k}x{n}]), {args.ranks} ranks x 1 thread at "
        f"once; {rated}",
        f"{method.precision}: achievable peak {achievable or 0:,.1f} GFLOP/s (the model's own step "
        f"matmuls): MFU ours {pct(o.get('mfu_achievable'))}, hf {pct(h.get('mfu_achievable'))}",
        *note,
    ]


def method_line(args: argparse.Namespace, method: Method) -> str:
    order = ", ".join(("ours, hf", "hf, ours")[k % 2] for k in range(method.repeats))
    line = (
        f"{method.label}: {method.repeats} launch(es) per side ({order}), micro-batch {method.micro}, "
        f"{method.warmup} warm-up + {method.steps} timed steps per launch"
    )
    if method.reduced:
        line += (
            f" (reduced from micro-batch {args.micro}, {args.repeats} launch(es), {args.steps} steps: "
            "not native here, so the run stays short)"
        )
    return line


def table_rows(args: argparse.Namespace, methods: dict[str, Method], results: dict[str, Any]) -> list[dict]:
    rows = []
    for p, r in results.items():
        o, h, method = r["sides"]["ours"], r["sides"]["hf"], methods[p]
        mode = "compiled" if args.compile else "eager"
        peak = f"{r['peak']['best_gflops']:,.1f} GFLOP/s"
        if r["peak"].get("achievable_gflops"):
            achievable = r["peak"]["achievable_gflops"]
            peak += f" (achievable peak {achievable:,.1f}: MFU ours {o['mfu_achievable']:.1%})"
        rows.append(
            {
                "benchmark": "bench/train_throughput.py",
                "setting": f"{args.ds}, {args.ranks} ranks x 1 thread, {args.layers} layers x {args.width}, "
                f"{args.heads} heads, seq {args.seq}, vocab {args.vocab}, micro-batch {method.micro}, {mode}",
                "precision": p,
                "native": method.note,
                "baseline": f"GPT2LMHeadModel {h['median_tps']:,.0f} tok/s (MFU {h['mfu']:.1%})",
                "ours": f"{o['median_tps']:,.0f} tok/s (MFU {o['mfu']:.1%})",
                "ratio": round(r["ratio"], 3),
                "how": HOW.format(n=o["launches"]) + f"; MFU vs measured matmul peak {peak}",
            }
        )
    return rows


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if v is not None}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.common import add_training_shape_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_shape_args(p)
    p.add_argument("--vocab-size", dest="vocab", type=int, default=8192, help="ids of the shards' tokenizer")
    p.add_argument("--steps", type=int, default=3, help="timed steps per launch")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per launch")
    p.add_argument("--repeats", type=int, default=3, help="launches per side, alternating")
    p.add_argument("--emulated-micro-batch", dest="emulated_micro", type=int, default=1, help="non-native")
    p.add_argument("--emulated-steps", type=int, default=2, help="timed steps for a non-native precision")
    p.add_argument("--emulated-repeats", type=int, default=1, help="launches per side, non-native precision")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--ds_config", dest="ds", default="ds_configs/zero2_cpu.json", help="DeepSpeed JSON")
    p.add_argument("--compile", action="store_true", help="both sides under torch.compile")
    p.add_argument("--results-dir", type=Path, default=None, help="where the results JSON goes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-json", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        hf_worker(args)
        return 0
    from bench.common import HF_KWARGS, RESULTS_DIR, Run, build_shards, precision_record, precision_support
    from bench.targets import target_line, training_targets

    harness = Run("bench.train_throughput", argv)
    out = harness.out
    support, auto = precision_support(args.width, args.micro * args.seq, threads=1)  # 1 thread per rank
    out(f"precision auto here: {auto.precision} ({auto.reason})")
    out(
        f"run: {args.ds}, {args.ranks} ranks x 1 thread, {args.layers} layers x {args.width}, {args.heads} "
        f"heads, seq {args.seq}, {'compiled (both sides)' if args.compile else 'eager'}; HF with "
        f"{HF_KWARGS['activation_function']}, use_cache=False"
    )
    methods = {p: method_for(args, support[p]) for p in args.precision}
    results = {}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        out(f"building shards (standard library, {args.vocab:,}-id tokenizer) ...")
        data = build_shards(tmp, args.vocab)
        for p, method in methods.items():
            out(method_line(args, method))
            results[p] = measure(args, method, data, tmp, out)
            for line in precision_lines(args, method, results[p]):
                out(line)
            targets = training_targets(p, args.compile, method.native)
            if targets:
                out(f"{p}: {target_line(list(targets.values()))}")
    out("ratio ours/hf per precision: " + ", ".join(f"{p} {r['ratio']:.2f}x" for p, r in results.items()))
    if auto.precision in results:
        p, why = auto.precision, "the precision auto picks on this CPU"
    else:
        p, why = next(iter(results)), f"auto would pick {auto.precision} on this CPU, not measured"
    mode = "compiled" if args.compile else "eager"
    harness.finish(
        precision=precision_record(support, auto),
        figures={"args": args_record(args), "precisions": results},
        table=table_rows(args, methods, results),
        final_line=f"ratio ours/hf ({p}, {why}, {mode}): {results[p]['ratio']:.2f}x",
        results_dir=args.results_dir or RESULTS_DIR,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

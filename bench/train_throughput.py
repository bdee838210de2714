"""Training throughput of pretrain_gpt.py against transformers' GPT2LMHeadModel under the same DeepSpeed run.

    python bench/train_throughput.py                          # 4 layers, width 256, ctx 256, fp32 and bf16
    python bench/train_throughput.py --precision bf16 --ds ds_configs/zero2_cpu.json --ranks 2

For each precision, in the same run and on the same shards (the standard library, an 8,192-id tokenizer):
  ours   `deepspeed --num_gpus R pretrain_gpt.py` (the real entry point: our GPT, ZeRO from the JSON),
         tokens/s read from its metrics.jsonl, warm-up steps excluded;
  hf     the same launcher, the same DeepSpeed JSON resolved the same way, the same batches (RankData),
         the same AdamW parameter groups, transformers' GPT2LMHeadModel of identical shape;
  peak   a dense matmul of that precision on every rank at once (one thread each, as in training):
         the machine's achievable FLOP/s, for MFU.
MFU counts 6N + 12 L d T FLOPs per token (model.flops). The ratio ours/hf in the best precision is last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_config(args: argparse.Namespace, data: Path, save_dir: Path, precision: str) -> dict:
    return {
        "model": {
            "preset": "tiny",
            "overrides": {
                "n_layer": args.layers,
                "n_embd": args.width,
                "n_head": args.heads,
                "n_positions": args.seq,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
                "resid_pdrop": 0.0,
            },
        },
        "data": {"paths": [str(data)], "seq_len": args.seq},
        "train": {
            "micro_batch": args.micro,
            "max_steps": args.warmup + args.steps,
            "precision": precision,
            "log_interval": 1,
            "eval_interval": 0,
            "save_interval": 10**9,
            "save_dir": str(save_dir),
            "compile": args.compile,
        },
    }


# ---- the HF worker (runs under the deepspeed launcher) -----------------------------------------------


def matmul_peak(dtype, n: int = 1024, seconds: float = 2.0) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def hf_worker(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.optim import build_optimizer, param_groups
    from pretrain_gpt import init_distributed
    from training.config import from_dict
    from training.data import RankData
    from training.validate import load_ds_config, validate

    run = from_dict(json.loads(Path(args.run_json).read_text()))
    init_distributed(False)
    rank, world = dist.get_rank(), dist.get_world_size()
    resolved = validate(run, load_ds_config(args.ds), args.ds, world, "cpu")
    dtype = torch.bfloat16 if run.train.precision == "bf16" else torch.float32
    peak = torch.tensor([matmul_peak(dtype)])
    dist.all_reduce(peak)  # every rank measured at the same time: the machine's total
    m = resolved.model
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=m.vocab_size,
            n_positions=m.n_positions,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            n_head=m.n_head,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
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
        tokens = resolved.ds_config["train_batch_size"] * run.data.seq_len
        steady = times[args.warmup :]
        Path(args.out).write_text(
            json.dumps({"tokens_per_s": tokens / statistics.median(steady), "peak_flops": peak.item()})
        )


# ---- the driver ----------------------------------------------------------------------------------------


def launch(args: argparse.Namespace, script: list[str], tmp: Path) -> None:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=str(tmp / "ext"),
        PYTHONPATH=str(ROOT),
        TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
    )
    port = 29700 + os.getpid() % 200
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        str(args.ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *script,
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def build_data(tmp: Path) -> Path:
    from data_tools.preprocess import PreprocessConfig, preprocess
    from data_tools.sources import Problems, SourceConfig, iter_documents
    from data_tools.train_tokenizer import train

    docs = [d.text for d in iter_documents(SourceConfig(), Problems())]
    train(docs[::4], tmp / "tok", vocab_size=8192, show_progress=False)
    preprocess(PreprocessConfig(output=tmp / "data", tokenizer=tmp / "tok", show_progress=False, workers=2))
    return tmp / "data"


def measure(args: argparse.Namespace, data: Path, tmp: Path, precision: str) -> dict[str, float]:
    from model.flops import flops_per_token
    from training.config import from_dict
    from training.validate import load_ds_config, validate

    out = {}
    cfg = run_config(args, data, tmp / f"ours_{precision}", precision)
    run_json = tmp / f"run_{precision}.json"
    run_json.write_text(json.dumps(cfg))
    launch(
        args,
        [
            "bench/train_throughput.py",
            "--worker",
            "--run-json",
            str(run_json),
            "--ds",
            args.ds,
            "--out",
            str(tmp / "hf.json"),
            "--warmup",
            str(args.warmup),
        ],
        tmp,
    )
    hf = json.loads((tmp / "hf.json").read_text())
    launch(args, ["pretrain_gpt.py", "--config", str(run_json), "--ds_config", args.ds], tmp)
    lines = [json.loads(x) for x in (tmp / f"ours_{precision}" / "metrics.jsonl").read_text().splitlines()]
    out["ours"] = statistics.median(x["tokens_per_s"] for x in lines if x["step"] > args.warmup)
    out["hf"], out["peak"] = hf["tokens_per_s"], hf["peak_flops"]
    resolved = validate(from_dict(cfg), load_ds_config(args.ds), args.ds, args.ranks, "cpu")
    out["flops_per_token"] = flops_per_token(resolved.model, args.seq)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--ds", default="ds_configs/zero2_cpu.json")
    p.add_argument(
        "--compile",
        action="store_true",
        help="ours with train.compile (torch.compile; the first step compiles, outside the timing)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-json", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        hf_worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        print("building shards (standard library, 8,192-id tokenizer) ...", flush=True)
        data = build_data(tmp)
        results = {}
        for precision in args.precision:
            r = results[precision] = measure(args, data, tmp, precision)
            tag = " (compiled)" if args.compile else ""
            mfu = {k: r[k] * r["flops_per_token"] / r["peak"] for k in ("ours", "hf")}
            print(
                f"{precision}: ours{tag} {r['ours']:.0f} tok/s (MFU {mfu['ours']:.1%}) | "
                f"hf {r['hf']:.0f} tok/s (MFU {mfu['hf']:.1%}) | "
                f"matmul peak {r['peak'] / 1e9:.1f} GFLOP/s ({args.ranks} ranks, "
                f"{args.ds}, {args.layers} layers x {args.width}, seq {args.seq}, micro {args.micro})",
                flush=True,
            )
        best = max(results, key=lambda k: results[k]["ours"])
        print(f"ratio ours/hf ({best}, fastest for ours): {results[best]['ours'] / results[best]['hf']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Greedy generation time per new token with the KV cache (`GPT.generate`) vs without (a full forward over
the whole sequence at every step, the baseline written out below), same model, same prompt, same process.

With the cache a step runs the model on one token (plus attention over the cached keys), so the time per
token stays about flat as the generation grows; without it, step t runs the model on T0 + t tokens, so the
time per token grows with the length. Both sides must produce the same tokens (checked).

    python bench/generate.py                  # 4 layers, width 128, vocab 4096, prompt 16, 64..512 new tokens
    python bench/generate.py --threads 1      # on a machine shared with other jobs (2 threads contend)
    python bench/generate.py --layers 12 --width 768 --heads 12 --vocab 32768   # codeparrot-small's shape

Prints a line per length, writes bench/results/generate_<date>_<cpu>.json, and ends with the ratio at the
longest length, e.g. ``ratio no-cache/cache (512 new tokens): 9.5x``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    Printer,
    command_line,
    describe_machine,
    finish,
    machine_info,
    now,
)
from model.config import GPTConfig  # noqa: E402
from model.gpt2 import GPT  # noqa: E402

HOW = "wall time of one greedy generation of each kind, after a warm-up; per token = time / new tokens"


@torch.no_grad()
def generate_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The baseline: greedy decoding that re-reads the whole sequence at every step."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.n_positions :])
        idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=1024, help="n_positions")
    p.add_argument("--batch", type=int, default=1, help="sequences generated together")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512], help="new tokens")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.prompt + max(args.lengths) > args.ctx:
        p.error(
            f"--prompt ({args.prompt}) + the longest length ({max(args.lengths)}) exceed --ctx ({args.ctx})"
        )
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the results JSON."""
    args = parse_args(argv)
    started = now()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Printer()
    machine = machine_info()
    out(describe_machine(machine))
    config = GPTConfig(
        vocab_size=args.vocab,
        n_positions=args.ctx,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
    )
    torch.manual_seed(args.seed)
    model = GPT(config).eval()
    prompt = torch.randint(
        0, args.vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)
    )
    setting = (
        f"{args.layers} layers x {args.width}, {args.heads} heads, vocab {args.vocab}, ctx {args.ctx}, "
        f"batch {args.batch}, prompt {args.prompt}, fp32, {torch.get_num_threads()} threads"
    )
    out(f"model: {setting}; greedy")
    model.generate(prompt, 8, temperature=0)  # warm-up: allocator, kernels
    generate_without_cache(model, prompt, 8)
    rows, table = [], []
    for n in args.lengths:
        t_cache, ours = timed(model.generate, prompt, n, 0.0)
        t_base, base = timed(generate_without_cache, model, prompt, n)
        same = bool(torch.equal(ours, base))
        row = {
            "new_tokens": n,
            "cache_s": t_cache,
            "no_cache_s": t_base,
            "cache_ms_per_token": 1e3 * t_cache / n,
            "no_cache_ms_per_token": 1e3 * t_base / n,
            "ratio": t_base / t_cache,
            "same_tokens": same,
        }
        rows.append(row)
        out(
            f"{n:4d} new tokens: cache {row['cache_ms_per_token']:7.2f} ms/token | no cache "
            f"{row['no_cache_ms_per_token']:7.2f} ms/token | ratio no-cache/cache {row['ratio']:5.2f}x | "
            f"same tokens: {same}"
        )
        table.append(
            {
                "benchmark": "bench/generate.py",
                "setting": f"{setting}, {n} new tokens",
                "precision": "fp32",
                "native": "native",
                "baseline": f"no cache {row['no_cache_ms_per_token']:.2f} ms/token",
                "ours": f"KV cache {row['cache_ms_per_token']:.2f} ms/token",
                "ratio": round(row["ratio"], 3),
                "how": HOW,
            }
        )
    first, last = rows[0], rows[-1]
    out(
        f"per-token time from {first['new_tokens']} to {last['new_tokens']} new tokens: cache x"
        f"{last['cache_ms_per_token'] / first['cache_ms_per_token']:.2f}, no cache x"
        f"{last['no_cache_ms_per_token'] / first['no_cache_ms_per_token']:.2f}"
    )
    if not all(r["same_tokens"] for r in rows):
        out("WARNING: cached and uncached greedy tokens differ (float rounding between shapes near a tie)")
    return finish(
        out,
        benchmark="generate",
        command=command_line("bench/generate.py", argv),
        started=started,
        machine=machine,
        precision=None,
        figures={
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": rows,
        },
        table=table,
        final_line=f"ratio no-cache/cache ({last['new_tokens']} new tokens): {last['ratio']:.2f}x",
        results_dir=args.results_dir,
    )


if __name__ == "__main__":
    main()

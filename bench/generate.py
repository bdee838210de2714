"""Greedy generation time per new token with the KV cache (`GPT.generate`) vs without (a full forward over
the whole sequence at every step, the baseline written out below), and vs transformers'
`GPT2LMHeadModel.generate` with its own KV cache: same weights (model.hf.to_hf), same prompt, same process.

With the cache a step runs the model on one token (plus attention over the cached keys), so the time per
token stays about flat as the generation grows; without it, step t runs the model on T0 + t tokens, so the
time per token grows with the length. transformers' model runs greedy (do_sample=False, one beam), with
"gelu_pytorch_tanh" (GPT-2's tanh GELU as one fused op: its fastest form of our activation) and its
default attention (SDPA), for exactly as many new tokens (no end-of-text id). All three must produce the
same tokens (checked and printed; a difference at a near-tie of two logits is reported, not hidden).

Per length, each side runs --repeats times in an order that alternates (cache, no cache, transformers,
then the reverse, ...); a side's figure is its median time / new tokens, the spread min-max.

    python -m bench.generate                  # 4 layers, width 128, vocab 4096, prompt 16, 64..512 new tokens
    python -m bench.generate --threads 1      # on a machine shared with other jobs (2 threads contend)
    python -m bench.generate --layers 12 --width 768 --heads 12 --vocab-size 32768 --lengths 32 128 \
        --no-cache-up-to 32                  # codeparrot-small's shape: model work, not framework overhead

At the default toy shape (4 x 128, vocab 4,096) a step is mostly framework overhead (Python, dispatch,
cache bookkeeping); at codeparrot-small's shape it is mostly the model's matmuls, which both sides share.
The attention implementation each side ran is recorded (ours: the resolved `model.attention`; transformers:
its config's `_attn_implementation`). `--no-cache-up-to N` runs the no-cache baseline only at lengths up to
N (its cost grows with the square of the length: at codeparrot-small's shape 512 tokens take minutes).

Prints a line per length, writes bench/results/generate_<date>_<cpu>.json, and ends with the ratio
transformers/ours at the longest length (above 1: ours faster), e.g.
``ratio transformers/ours (KV cache both, 512 new tokens): 1.40x``; the line before it holds the ratio
no-cache/cache.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    RESULTS_DIR,
    Run,
    args_record,
    gpt_config,
)
from model.gpt2 import GPT
from model.hf import to_hf
from model.kernels.attention import resolve_attention

HOW = (
    "median over {n} greedy generations of each kind (order alternating, after a warm-up) of wall time / "
    "new tokens"
)
SIDES = ("cache", "no_cache", "hf")
LABELS = {"cache": "KV cache", "no_cache": "no cache", "hf": "transformers"}
HF_KWARGS = dict(activation_function="gelu_pytorch_tanh")


@torch.no_grad()
def generate_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The baseline: greedy decoding that re-reads the whole sequence at every step."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.n_positions :])
        idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


@torch.no_grad()
def generate_hf(hf_model, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """transformers' greedy generation with its KV cache, exactly ``max_new_tokens`` tokens."""
    out = hf_model.generate(
        input_ids=idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=0,
    )
    if out.shape[1] != idx.shape[1] + max_new_tokens:
        raise RuntimeError(
            f"transformers generated {out.shape[1] - idx.shape[1]} tokens, not {max_new_tokens}"
        )
    return out


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure_length(runners: dict, prompt: torch.Tensor, n: int, repeats: int) -> dict[str, Any]:
    """Every side ``repeats`` times at ``n`` new tokens, order alternating; per side median and spread of
    ms per token; the ratios no-cache/cache and transformers/cache; whether the tokens agree."""
    sides = tuple(s for s in SIDES if s in runners)
    times: dict[str, list[float]] = {s: [] for s in sides}
    tokens: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            t, tokens[side] = timed(runners[side], prompt, n)
            times[side].append(t)
    row: dict[str, Any] = {"new_tokens": n, "repeats": repeats, "no_cache": None}
    for side in sides:
        ms = [1e3 * t / n for t in times[side]]
        row[side] = {
            "seconds": times[side],
            "ms_per_token": statistics.median(ms),
            "min_ms_per_token": min(ms),
            "max_ms_per_token": max(ms),
        }
    no_cache = row["no_cache"]
    row["ratio"] = no_cache["ms_per_token"] / row["cache"]["ms_per_token"] if no_cache else None
    row["hf_ratio"] = row["hf"]["ms_per_token"] / row["cache"]["ms_per_token"]
    row["same_tokens"] = bool(torch.equal(tokens["cache"], tokens["no_cache"])) if no_cache else None
    row["hf_same_tokens"] = bool(torch.equal(tokens["cache"], tokens["hf"]))
    return row


def length_line(row: dict[str, Any]) -> str:
    def ms(side: str) -> str:
        x = row[side]
        return f"{x['ms_per_token']:7.2f} ({x['min_ms_per_token']:.2f}-{x['max_ms_per_token']:.2f}) ms/token"

    no_cache = (
        f"no cache {ms('no_cache')} | no-cache/cache {row['ratio']:5.2f}x"
        if row["no_cache"]
        else "no cache not run (--no-cache-up-to)"
    )
    return (
        f"{row['new_tokens']:4d} new tokens: cache {ms('cache')} | transformers {ms('hf')} | {no_cache} | "
        f"transformers/ours {row['hf_ratio']:5.2f}x | same tokens: no cache {row['same_tokens']}, "
        f"transformers {row['hf_same_tokens']}"
    )


def table_rows(row: dict[str, Any], setting: str, repeats: int) -> list[dict[str, Any]]:
    """Two README rows per length: ours vs no cache, ours vs transformers' generate."""

    def cell(side: str) -> str:
        x = row[side]
        return (
            f"{LABELS[side]} {x['ms_per_token']:.2f} ms/token "
            f"({x['min_ms_per_token']:.2f}-{x['max_ms_per_token']:.2f})"
        )

    n, how = row["new_tokens"], HOW.format(n=repeats)
    common = {"benchmark": "bench/generate.py", "precision": "fp32", "native": "native", "how": how}
    vs_no_cache = lambda: {  # noqa: E731
        **common,
        "setting": f"{setting}, {n} new tokens",
        "baseline": cell("no_cache"),
        "ours": cell("cache"),
        "ratio": round(row["ratio"], 3),
    }
    return [
        *([vs_no_cache()] if row["no_cache"] else []),
        {
            **common,
            "setting": f"{setting}, {n} new tokens, vs transformers' generate",
            "baseline": cell("hf") + " (GPT2LMHeadModel.generate, its KV cache)",
            "ours": cell("cache"),
            "ratio": round(row["hf_ratio"], 3),
        },
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab-size", dest="vocab", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=1024, help="n_positions")
    p.add_argument("--batch", type=int, default=1, help="sequences generated together")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512], help="new tokens")
    p.add_argument("--repeats", type=int, default=3, help="generations per side and length, alternating")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-cache-up-to", type=int, default=None, help="no-cache baseline only up to N tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats ({args.repeats}) must be at least 1")
    if args.prompt + max(args.lengths) > args.ctx:
        p.error(
            f"--prompt ({args.prompt}) + the longest length ({max(args.lengths)}) exceed --ctx ({args.ctx})"
        )
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the results JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    harness = Run("bench.generate", argv)
    out = harness.out
    config = gpt_config(args)
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
    hf = to_hf(model, **HF_KWARGS).eval()
    attention = {"ours": resolve_attention(config.attention, "cpu"), "hf": hf.config._attn_implementation}
    out(f"attention: ours {attention['ours']}, transformers {attention['hf']}")
    runners = {
        "cache": lambda p, n: model.generate(p, n, 0.0),
        "no_cache": lambda p, n: generate_without_cache(model, p, n),
        "hf": lambda p, n: generate_hf(hf, p, n),
    }
    for run in runners.values():  # warm-up: allocator, kernels, transformers' generation set-up
        run(prompt, 8)
    rows, table = [], []
    for n in args.lengths:
        run_no_cache = args.no_cache_up_to is None or n <= args.no_cache_up_to
        chosen = {k: v for k, v in runners.items() if k != "no_cache" or run_no_cache}
        row = measure_length(chosen, prompt, n, args.repeats)
        rows.append(row)
        out(length_line(row))
        table += table_rows(row, setting, args.repeats)
    first, last = rows[0], rows[-1]
    grown = [s for s in SIDES if first[s] and last[s]]
    out(
        f"per-token time from {first['new_tokens']} to {last['new_tokens']} new tokens: "
        + ", ".join(f"{LABELS[s]} x{last[s]['ms_per_token'] / first[s]['ms_per_token']:.2f}" for s in grown)
    )
    if any(r["same_tokens"] is False for r in rows):
        out("WARNING: cached and uncached greedy tokens differ (float rounding between shapes near a tie)")
    if not all(r["hf_same_tokens"] for r in rows):
        out("WARNING: our and transformers' greedy tokens differ (float rounding between kernels near a tie)")
    longest = [r for r in rows if r["no_cache"]][-1:]
    for r in longest:
        out(f"ratio no-cache/cache ({r['new_tokens']} new tokens): {r['ratio']:.2f}x")
    return harness.finish(
        precision=None,
        figures={
            "args": args_record(args),
            "hf_kwargs": HF_KWARGS,
            "attention": attention,
            "rows": rows,
        },
        table=table,
        final_line=f"ratio transformers/ours (KV cache both, {last['new_tokens']} new tokens): "
        f"{last['hf_ratio']:.2f}x",
        results_dir=args.results_dir,
    )


if __name__ == "__main__":
    main()

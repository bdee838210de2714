"""Where a training step's time goes, ours and transformers' GPT2LMHeadModel, and what that bounds.

    python -m bench.profile_step              # model_step.py's shape, micro-batch 4, 1 thread
    python -m bench.profile_step --width 128  # the demo's width
    python -m bench.profile_step --precision bf16 --vocab-size 32768 --heads 8 --micro-batch 8  # bf16

Runs the same step as bench/model_step.py (forward, loss, backward, AdamW) under the torch profiler for both
models (in bf16 as DeepSpeed's bf16 mode runs it: bf16 weights, forward and backward, then AdamW on fp32
master copies of the weights, the gradients copied up and the weights copied back down), after warm-up
steps, and groups the operators' self time into matmul (mm, addmm, bmm, linear), attention (SDPA kernels),
GELU, softmax and loss, LayerNorm, optimizer, dtype copies, and the rest. Then prints the bound
it implies for any ratio ours/hf at the same FLOPs:

    bound = t_hf / t_ours_matmul

the ratio ours would reach if every operator of its step but the matmuls took no time at all (the matmuls
already run at the measured peak: a model cannot do the same matmuls in less time). The last line is that
bound. Not a benchmark with a results JSON: a diagnosis for bench/NOTES.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.profiler import profile

from bench.common import HF_KWARGS, describe_machine, gpt_config, machine_info, make_step
from model.gpt2 import GPT
from model.hf import to_hf

CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::linear")),
    ("attention", ("scaled_dot_product",)),
    ("gelu", ("gelu",)),
    ("softmax+loss", ("softmax", "log_softmax", "aten::exp", "nll_loss", "cross_entropy")),
    ("layernorm", ("layer_norm",)),
    ("optimizer", ("_fused_adamw", "_foreach_", "aten::lerp", "aten::addcdiv", "aten::addcmul")),
    ("dtype copies", ("aten::copy_", "aten::_to_copy")),
)


def bf16_step(model: torch.nn.Module, is_hf: bool):
    """One step as DeepSpeed's bf16 mode takes it: bf16 weights, AdamW on fp32 masters."""
    from model.optim import build_optimizer, param_groups

    model.to(torch.bfloat16)
    groups = param_groups(model, 0.1)
    params = [p for g in groups for p in g["params"]]
    masters = [p.detach().float().requires_grad_() for p in params]
    index = {id(p): m for p, m in zip(params, masters, strict=True)}
    opt = build_optimizer([{**g, "params": [index[id(p)] for p in g["params"]]} for g in groups], lr=1e-4)

    def step(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = model(input_ids=idx, labels=idx).loss if is_hf else model(idx, targets)[1]
        loss.backward()
        for p, m in zip(params, masters, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(params, masters, strict=True):
                p.copy_(m)
        return loss.detach()

    return step


def category(name: str) -> str:
    for label, keys in CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other"


def profile_step(step, batch, steps: int) -> tuple[dict[str, float], float]:
    """Seconds per step by category (operators' self CPU time) and in total (wall)."""
    import time

    with profile() as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(*batch).item()
        wall = (time.perf_counter() - start) / steps
    shares: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "Optimizer")) or "scaled_dot" in event.key:
            shares[category(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return dict(shares), wall


def main(argv: Sequence[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", dest="ctx", type=int, default=256, help="tokens per sample (n_positions)")
    p.add_argument("--vocab-size", dest="vocab", type=int, default=8192)
    p.add_argument("--micro-batch", dest="batch", type=int, default=4, help="sequences per step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe_machine(machine_info()))
    config = gpt_config(args)
    torch.manual_seed(0)
    ours = GPT(config).train()
    hf = to_hf(ours, **HF_KWARGS).train()
    tokens = torch.randint(
        0, args.vocab, (args.batch, args.ctx + 1), generator=torch.Generator().manual_seed(0)
    )
    batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    hf_batch = (tokens[:, :-1].contiguous(), tokens[:, :-1].contiguous())  # HF shifts the labels itself
    results = {}
    for side, model, is_hf, b in (("ours", ours, False, batch), ("hf", hf, True, hf_batch)):
        step = make_step(model, is_hf, "fp32") if args.precision == "fp32" else bf16_step(model, is_hf)
        for _ in range(args.warmup):
            step(*b)
        results[side] = profile_step(step, b, args.steps)
    labels = [c for c, _ in CATEGORIES] + ["other"]
    print(f"{'ms per step':<14}" + "".join(f"{s:>18}" for s in results))
    for label in labels:
        cells = "".join(
            f"{1e3 * shares.get(label, 0.0):>10.1f} ({shares.get(label, 0.0) / wall:5.1%})"
            for shares, wall in results.values()
        )
        print(f"{label:<14}{cells}")
    print(f"{'wall':<14}" + "".join(f"{1e3 * wall:>18.1f}" for _, wall in results.values()))
    (ours_shares, ours_wall), (_, hf_wall) = results["ours"], results["hf"]
    print(f"ratio ours/hf in this run: {hf_wall / ours_wall:.2f}x")
    bound = hf_wall / ours_shares["matmul"]
    print(f"bound on ours/hf at these FLOPs (t_hf / t_ours_matmul, every other operator free): {bound:.2f}x")
    return bound


if __name__ == "__main__":
    main()

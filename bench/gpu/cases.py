"""The training cases of bench/gpu/gpu_bench.py: what each measures, in the order the budget spends on them.

Every case trains as a real run does: a shipped config's tokens per optimizer step, i.e. micro-batches with
gradient accumulation (one GPU: ``global_batch / micro`` of them per step), so that the optimizer step and
ZeRO's gradient handling are amortised as in training. The 1.5B's figures come from
configs/codeparrot_zero2.json (micro-batch 8, 512 sequences of 1,024 tokens: 524,288 tokens per step,
activation checkpointing); codeparrot-small has no shipped config and gets the same step.

The levers measured beside the shipped layout: no activation checkpointing (no recomputation: MFU equals
HFU) at a larger micro batch where memory allows, a larger micro batch with checkpointing, ZeRO stage 0/1
instead of 2 on a single GPU, torch AdamW instead of DeepSpeed's FusedAdam, torch.compile
(``train.compile``), unfused kernels. Checkpointing is all or nothing: the model checkpoints every block
(``activation_checkpointing`` is one flag), so selective checkpointing is not a case.

MFU counts model FLOPs (model.flops.flops_per_token: 6 N plus attention); HFU counts the FLOPs executed,
with checkpointing the blocks' forward once more (``executed_flops_per_token``, the planner's
``speed.executed_flops_per_token``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.config import GPTConfig

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = "configs/codeparrot_zero2.json"
# The model config fields that choose an implementation per op; "torch" everywhere is the unfused baseline
# (a case with fused=False: train_case.py's run config, the planner's --set).
UNFUSED = {"attention": "torch", "layernorm": "torch", "bias_gelu": "torch", "cross_entropy": "torch"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    """One training measurement (train_case.py's arguments) and its time allowance."""

    name: str  # short, for --cases
    lever: str  # what the case shows, in a few words
    preset: str
    micro: int
    global_batch: int  # sequences per optimizer step; one GPU: micro x accumulation
    seq: int
    activation_checkpointing: bool
    fused: bool = True
    zero_stage: int | None = None  # None: the DeepSpeed JSON's
    torch_adamw: bool = False
    compile: bool = False
    precision: str = "bf16"
    ds: str = "ds_configs/zero2.json"
    warmup: int = 2  # untimed micro-batches (the first compiles the Triton kernels)
    steps: int = 1  # timed optimizer steps, each of accum(micro) micro-batches
    timeout_s: float = 150.0
    min_s: float = 40.0  # not started with less budget left (about what the case takes)

    def accum(self, micro: int) -> int:
        """Micro-batches per optimizer step at micro batch ``micro`` (the tokens per step stay the same)."""
        return max(1, self.global_batch // micro)

    def argv(self, micro: int) -> list[str]:
        argv = [
            f"--preset={self.preset}", f"--micro-batch={micro}", f"--grad-accum={self.accum(micro)}",
            f"--seq-len={self.seq}", f"--precision={self.precision}", f"--ds_config={self.ds}",
            f"--warmup={self.warmup}", f"--steps={self.steps}", "--fused" if self.fused else "--no-fused",
            "--activation-checkpointing" if self.activation_checkpointing
            else "--no-activation-checkpointing",
        ]  # fmt: skip
        argv += [f"--zero-stage={self.zero_stage}"] if self.zero_stage is not None else []
        argv += ["--torch-adamw"] if self.torch_adamw else []
        argv += ["--compile"] if self.compile else []
        return argv


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shipped:
    """The layout of a shipped run config: its preset, micro batch, global batch and checkpointing."""

    preset: str
    micro: int
    global_batch: int
    seq: int
    activation_checkpointing: bool


def shipped(path: Path = ROOT / SHIPPED_CONFIG) -> Shipped:
    """The 1.5B's shipped layout, read from its run config (the one owner of those numbers)."""
    cfg = json.loads(path.read_text())
    train = cfg["train"]
    return Shipped(
        preset=cfg["model"]["preset"],
        micro=train["micro_batch"],
        global_batch=train["global_batch"],
        seq=cfg["data"]["seq_len"],
        activation_checkpointing=train["activation_checkpointing"],
    )


def gpu_cases(ship: Shipped | None = None) -> list[Case]:
    """Most informative first: a case that no longer fits in the budget is skipped (and recorded); a later
    run picks others with --cases. Times: estimates on an H200 (1.5B: the engine build about a minute)."""
    s = ship or shipped()
    step = dict(global_batch=s.global_batch, seq=s.seq)
    large = dict(preset=s.preset, timeout_s=240, min_s=110, **step)
    small = dict(preset="codeparrot-small", micro=16, activation_checkpointing=False, timeout_s=90, min_s=30,
                 **step)  # fmt: skip
    no_ac = dict(micro=2 * s.micro, activation_checkpointing=False)
    return [
        Case(name="codeparrot-shipped", lever=f"the shipped layout ({SHIPPED_CONFIG})", micro=s.micro,
             activation_checkpointing=s.activation_checkpointing, **large),
        Case(name="codeparrot-no-ac", lever="no recomputation (MFU = HFU), larger micro batch", **no_ac,
             **large),
        Case(name="small", lever="codeparrot-small at the same tokens per step", **small),
        Case(name="codeparrot-micro32", lever="micro batch 32 with checkpointing", micro=32,
             activation_checkpointing=True, **large),
        Case(name="small-zero1", lever="ZeRO stage 1 on one GPU", zero_stage=1, **small),
        Case(name="small-zero0", lever="ZeRO stage 0 on one GPU", zero_stage=0, **small),
        Case(name="small-torch-adamw", lever="torch AdamW (fused) instead of FusedAdam", torch_adamw=True,
             **small),
        Case(name="small-compile", lever="torch.compile (train.compile)", compile=True,
             **{**small, "timeout_s": 180, "min_s": 90}),
        Case(name="small-unfused", lever="torch kernels instead of the fused ones", fused=False, **small),
        Case(name="codeparrot-no-ac-zero1", lever="no recomputation, ZeRO stage 1", zero_stage=1, **no_ac,
             **large),
        Case(name="codeparrot-no-ac-compile", lever="no recomputation, torch.compile", compile=True,
             **no_ac, **{**large, "timeout_s": 300, "min_s": 200}),
        Case(name="codeparrot-shipped-unfused", lever="the shipped layout with torch kernels", fused=False,
             micro=s.micro, activation_checkpointing=s.activation_checkpointing, **large),
    ]  # fmt: skip


def smoke_case(cpu: bool) -> Case:
    """The first, short stage: one small case end to end (accumulation, the timing, the report), torch AdamW
    so that it does not wait for FusedAdam's build; on the CPU the tiny preset in fp32."""
    if cpu:
        return Case(name="smoke", lever="tiny, 2 micro-batches per step", preset="tiny", micro=2,
                    global_batch=4, seq=64, activation_checkpointing=False, precision="fp32",
                    ds="ds_configs/zero2_cpu.json", warmup=1, steps=1, timeout_s=60, min_s=10)  # fmt: skip
    return Case(name="smoke", lever="codeparrot-small, 2 micro-batches per step, torch AdamW",
                preset="codeparrot-small", micro=8, global_batch=16, seq=1024, activation_checkpointing=False,
                torch_adamw=True, warmup=1, steps=1, timeout_s=75, min_s=20)  # fmt: skip


def cpu_cases() -> list[Case]:
    """--cpu-smoke: the tiny preset in fp32 through every option the GPU cases use but compile (inductor
    takes minutes on a small CPU): accumulation, checkpointing, a ZeRO stage override, torch AdamW, torch
    kernels."""
    tiny = dict(preset="tiny", micro=2, global_batch=4, seq=64, precision="fp32",
                ds="ds_configs/zero2_cpu.json", warmup=1, steps=2, timeout_s=120, min_s=10)  # fmt: skip
    return [
        Case(name="tiny", lever="fused kernels, checkpointing, ZeRO-2", activation_checkpointing=True,
             **tiny),
        Case(name="tiny-zero1-unfused", lever="ZeRO stage 1, torch kernels, torch AdamW", zero_stage=1,
             fused=False, torch_adamw=True, activation_checkpointing=False, **tiny),
    ]  # fmt: skip


def select(cases: list[Case], names: str | None) -> list[Case]:
    """The cases named in ``names`` (comma-separated, in the given order), or all; unknown names raise."""
    if not names:
        return cases
    by_name = {c.name: c for c in cases}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def executed_flops_per_token(cfg: GPTConfig, seq_len: int, activation_checkpointing: bool) -> int:
    """FLOPs executed per trained token: model.flops.flops_per_token plus, with activation checkpointing,
    the blocks' forward once more (2 N_blocks + 4 L d T), as plan/memory.py counts them."""
    from model.flops import block_params, flops_per_token

    flops = flops_per_token(cfg, seq_len)
    if activation_checkpointing:
        flops += 2 * cfg.n_layer * block_params(cfg.n_embd) + 4 * cfg.n_layer * cfg.n_embd * seq_len
    return flops

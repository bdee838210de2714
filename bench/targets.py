"""The project's benchmark targets, each written once, here. bench/suite.py judges every figure against them;
the benchmarks that have targets print them beside their ratios (bench.preprocess, bench.train_throughput,
bench.startup); bench/gpu's summary and planner flags read the GPU ones.

A figure whose spread (min-max over runs) reaches across its target is "not distinguishable": neither met
nor missed. The training targets apply where the precision runs natively; an emulated one is recorded only.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence

OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    figure: str  # what is measured, in words
    op: str  # ">=" or "<="
    value: float
    unit: str = "x"  # "x" (a ratio) or "%" (value is a fraction shown in percent)
    spread_bound: float | None = None  # where the spread's worse end must lie (default: value)

    def met(self, x: float) -> bool:
        return OPS[self.op](x, self.value)

    def judge(self, x: float, spread: Sequence[float] | None) -> str:
        """met, missed, or "not distinguishable" when the spread reaches across the target: the median
        meets it but the spread's worse end does not meet the spread bound, or the median misses it but
        the spread's better end meets it."""
        if spread is None:
            return "met" if self.met(x) else "missed"
        worse, better = (min(spread), max(spread)) if self.op == ">=" else (max(spread), min(spread))
        bound = self.value if self.spread_bound is None else self.spread_bound
        if self.met(x):
            return "met" if OPS[self.op](worse, bound) else "not distinguishable"
        return "not distinguishable" if self.met(better) else "missed"

    def __str__(self) -> str:
        text = f"{self.op} {self.value:.0%}" if self.unit == "%" else f"{self.op} {self.value:g}x"
        return text + (f", spread {self.op} {self.spread_bound:g}x" if self.spread_bound is not None else "")


TARGETS = {
    "preprocess_tokenize": Target(
        figure="preprocess, tokenize-only / the `tokenizers` limit", op=">=", value=2.0
    ),
    "preprocess_full": Target(figure="preprocess, whole job / the `tokenizers` limit", op=">=", value=1.0),
    "train_eager_fp32": Target(figure="training fp32 eager, ours / HF+DeepSpeed eager", op=">=", value=1.3),
    "train_mfu_fp32": Target(
        figure="training fp32, MFU of ours, of the large-matmul peak", op=">=", value=0.75, unit="%"
    ),
    "train_eager_bf16": Target(
        figure="training bf16 eager (where native), ours / HF+DeepSpeed eager",
        op=">=",
        value=1.3,
        spread_bound=1.2,
    ),
    "train_mfu_bf16": Target(
        figure="training bf16 (where native), MFU of ours, of the achievable peak",
        op=">=",
        value=0.60,
        unit="%",
    ),
    "train_compiled": Target(figure="training compiled, ours / HF+DeepSpeed compiled", op=">=", value=1.1),
    "startup": Target(figure="start-up, launch to step 1 / no-op launch to its barrier", op="<=", value=1.2),
}
# bench.preprocess's modes (its figures' keys) -> their targets.
PREPROCESS_TARGETS = {"tokenize_only": "preprocess_tokenize", "whole_job": "preprocess_full"}

# On one GPU (bench/gpu): MFU per preset in bf16 (model FLOPs, attention counted), and how close the
# planner's predictions must come to the measurements (measured/predicted within 1 +- this).
GPU_MFU_TARGETS = {"codeparrot": 0.50, "codeparrot-small": 0.40}
PLANNER_TOLERANCE = 0.15


def training_targets(precision: str, compiled: bool, native: bool) -> dict[str, str]:
    """The targets of bench.train_throughput's figures in ``precision``, by figure: "ratio" (ours/hf
    tokens/s), "mfu_large" or "mfu_achievable" (MFU against that peak: fp32 is judged against the
    large-matmul peak, bf16 against the achievable one); none where the precision is emulated here."""
    if not native:
        return {}
    peak = "mfu_large" if precision == "fp32" else "mfu_achievable"
    return {
        "ratio": "train_compiled" if compiled else f"train_eager_{precision}",
        peak: f"train_mfu_{precision}",
    }


def target_line(keys: Sequence[str]) -> str:
    """``targets (bench/targets.py): <figure> <target>; ...`` for the benchmarks' output."""
    return "targets (bench/targets.py): " + "; ".join(f"{TARGETS[k].figure} {TARGETS[k]}" for k in keys)

"""RunConfig: the one typed configuration of a training run.

Built once in `pretrain_gpt.main()`: defaults, then the `--config` JSON file, then `--set key=value`
overrides (dotted keys: `--set optim.lr=3e-4 train.max_steps=100 model.n_layer=4`). Unknown keys are errors
that list the valid ones. `validate()` checks the config against the DeepSpeed JSON, the data and the world
size before any engine is built, and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

Precision = Literal["fp32", "bf16", "fp16"]


@dataclasses.dataclass(kw_only=True)
class ModelSection:
    """A preset of model/presets.py plus field overrides of GPTConfig (vocab_size defaults to the data's)."""

    preset: str = "tiny"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class DataSection:
    """Preprocessed dataset directories (each with manifest.json) and their blend weights."""

    paths: list[str] = dataclasses.field(default_factory=lambda: ["runs/demo/data"])
    weights: list[float] | None = None  # None: proportional to nothing in particular, i.e. equal weights
    seq_len: int = 128
    shuffle: bool = True


@dataclasses.dataclass(kw_only=True)
class OptimSection:
    """AdamW, linear warmup then cosine decay to `min_lr`; no weight decay on biases and LayerNorm."""

    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 10
    decay_steps: int | None = None  # None: decay over the whole run (train.max_steps)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclasses.dataclass(kw_only=True)
class TrainSection:
    micro_batch: int = 8
    global_batch: int | None = None  # None: micro_batch x grad_accum x data-parallel size
    grad_accum: int | None = None  # None: derived from global_batch, else 1
    max_steps: int | None = 100
    max_tokens: int | None = None  # stop when this many tokens were trained on (whichever comes first)
    eval_interval: int = 50
    eval_iters: int = 10
    log_interval: int = 10
    save_interval: int = 100
    keep_last: int = 3
    save_dir: str = "runs/train"
    seed: int = 1234
    precision: Precision = "bf16"
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the model (ZeRO 0-2 without pipeline)
    pipeline_stages: int = 1
    max_bad_steps: int = 5  # consecutive non-finite losses before aborting
    peak_tflops: float | None = None  # per device, for MFU; None: looked up for known GPUs
    nan_loss_at_steps: list[int] = dataclasses.field(default_factory=list)  # fault injection, for tests


@dataclasses.dataclass(kw_only=True)
class RunConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """What makes two runs the same training: model, optimizer, batch and data settings. Intervals,
        paths and limits are left out (the data's content is compared by its manifest hash instead)."""
        d = self.to_dict()
        d["data"].pop("paths")
        for key in (
            "eval_interval",
            "eval_iters",
            "log_interval",
            "save_interval",
            "keep_last",
            "save_dir",
            "max_steps",
            "max_tokens",
            "max_bad_steps",
            "peak_tflops",
            "nan_loss_at_steps",
        ):
            d["train"].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """One or more configuration problems, each a sentence with the values and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run configuration:\n  - " + "\n  - ".join(problems))


_SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _section_cls(name: str) -> type:
    return {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}[name]


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Build from a nested mapping; unknown sections or keys raise ConfigError listing the valid ones."""
    problems, sections = [], {}
    for name in d:
        if name not in _SECTIONS:
            problems.append(f"unknown section {name!r}; valid sections: {sorted(_SECTIONS)}")
    for name in _SECTIONS:
        cls = _section_cls(name)
        values = d.get(name, {})
        if not isinstance(values, dict):
            problems.append(f"section {name!r} must be an object, got {values!r}")
            continue
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            problems.append(f"unknown key(s) {unknown} in {name!r}; valid keys: {sorted(valid)}")
            continue
        sections[name] = cls(**values)
    if problems:
        raise ConfigError(problems)
    return RunConfig(**sections)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a path or a preset name


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` (value parsed as JSON when it parses); `model.<field>=v` goes to overrides."""
    out = json.loads(json.dumps(d))
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2:
            problems.append(f"override {item!r} must look like section.key=value (e.g. optim.lr=3e-4)")
            continue
        section, name = parts
        if section == "model" and name != "preset":
            out.setdefault("model", {}).setdefault("overrides", {})[name] = _parse_value(value)
        else:
            out.setdefault(section, {})[name] = _parse_value(value)
    if problems:
        raise ConfigError(problems)
    return out


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    base: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError([f"--config {p}: file not found"])
        try:
            base = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError([f"--config {p}: not valid JSON ({e})"]) from e
    return from_dict(apply_overrides(base, overrides))


def lr_at(step: int, optim: OptimSection, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, cosine decay to min_lr, then flat."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay = optim.decay_steps or total_steps
    progress = min(max(step - optim.warmup_steps, 0) / max(decay - optim.warmup_steps, 1), 1.0)
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)

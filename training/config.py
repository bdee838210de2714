"""RunConfig: the one typed configuration of a training run.

Built once in `pretrain_gpt.main()`: defaults, then the `--config` JSON file, then `--set key=value`
overrides (dotted keys: `--set optim.lr=3e-4 train.max_steps=100 model.n_layer=4`). Unknown keys are errors
that list the valid ones. `validate()` checks the config against the DeepSpeed JSON, the data and the world
size before any engine is built, and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _f(
    default: Any = dataclasses.MISSING, *, factory: Any = None, resume: bool = False, **bounds: float
) -> Any:
    """A config field: its default, whether it belongs to the resume check (see `RunConfig.resume_values`),
    and numeric bounds checked per field (ge, gt, le, lt; for lists, each element)."""
    kwargs: dict[str, Any] = {"metadata": {"resume": resume, **bounds}}
    if factory is not None:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


@dataclasses.dataclass(kw_only=True)
class ModelSection:
    """A preset of model/presets.py plus field overrides of GPTConfig (vocab_size defaults to the data's).
    The overrides are checked by GPTConfig itself."""

    preset: str = _f("tiny", resume=True)
    overrides: dict[str, Any] = _f(factory=dict, resume=True)


@dataclasses.dataclass(kw_only=True)
class DataSection:
    """Preprocessed dataset directories (each with manifest.json) and their blend weights. The data's
    content belongs to the resume check through the manifests' hashes, not through the paths."""

    paths: list[str] = _f(factory=lambda: ["runs/demo/data"])
    weights: list[float] | None = _f(None, resume=True, gt=0)  # None: equal weights
    seq_len: int = _f(128, resume=True, ge=1)
    shuffle: bool = _f(True, resume=True)
    # Fill-in-the-middle (data_tools/fim.py): the share of documents rearranged as prefix/suffix/middle, and
    # the share of those written SPM rather than PSM. 0 trains left to right only, as before FIM existed
    # (checkpoints from then resume with 0). Validation stays left to right.
    fim_rate: float = _f(0.5, resume=True, ge=0, le=1)
    fim_spm_rate: float = _f(0.5, resume=True, ge=0, le=1)


@dataclasses.dataclass(kw_only=True)
class OptimSection:
    """AdamW, linear warmup then cosine decay to `min_lr`; no weight decay on biases and LayerNorm."""

    lr: float = _f(6e-4, resume=True, gt=0)
    min_lr: float = _f(6e-5, resume=True, ge=0)
    warmup_steps: int = _f(10, resume=True, ge=0)
    decay_steps: int | None = _f(None, resume=True, ge=1)  # None: decay over the whole run
    weight_decay: float = _f(0.1, resume=True, ge=0)
    beta1: float = _f(0.9, resume=True, ge=0, lt=1)
    beta2: float = _f(0.95, resume=True, ge=0, lt=1)
    eps: float = _f(1e-8, resume=True, gt=0)
    grad_clip: float = _f(1.0, resume=True, ge=0)  # 0: no clipping


@dataclasses.dataclass(kw_only=True)
class TrainSection:
    micro_batch: int = _f(8, resume=True, ge=1)
    global_batch: int | None = _f(None, resume=True, ge=1)  # None: micro_batch x grad_accum x dp size
    grad_accum: int | None = _f(None, resume=True, ge=1)  # None: derived from global_batch, else 1
    max_steps: int | None = _f(100, ge=1)
    max_tokens: int | None = _f(None, ge=1)  # stop when this many tokens were trained on (first of the two)
    eval_interval: int = _f(50, ge=0)  # 0: no evaluation
    eval_iters: int = _f(10, ge=0)
    log_interval: int = _f(10, ge=1)
    save_interval: int = _f(100, ge=1)
    keep_last: int = _f(3, ge=0)  # 0: keep every checkpoint
    save_dir: str = _f("runs/train")
    seed: int = _f(1234, resume=True, ge=0)
    # "auto": bf16 where the device runs it natively and faster than fp32, else fp32 (training/precision.py).
    # The resume check compares the precision the run resolved to.
    precision: Precision = _f("auto", resume=True)
    activation_checkpointing: bool = _f(False)
    compile: bool = _f(False)  # torch.compile the model (ZeRO 0-2 without pipeline)
    pipeline_stages: int = _f(1, resume=True, ge=1)
    max_bad_steps: int = _f(5, ge=1)  # consecutive non-finite losses before aborting
    # How long a collective may wait for a slow rank before the run fails (seconds); None: DeepSpeed's
    # default, 10 minutes (DEEPSPEED_TIMEOUT, in minutes, changes it). Raise it where a rank can be busy
    # alone for long (a checkpoint load from slow storage).
    dist_timeout_s: float | None = _f(None, gt=0)
    peak_tflops: float | None = _f(None, gt=0)  # per device, for MFU; None: looked up for known GPUs
    # HumanEval pass@1 (greedy, in the sandbox) on the first `humaneval_problems` problems every
    # `humaneval_interval` steps (0: never), on rank 0; the other ranks wait for it at the next collective.
    # `humaneval_budget_s` bounds its time: generation stops and the problems not yet judged count as failed.
    # It must be at most half the collective timeout (dist_timeout_s); ZeRO 0-2 without pipeline stages
    # only (training/humaneval.py).
    humaneval_interval: int = _f(0, ge=0)
    humaneval_problems: int = _f(20, ge=1, le=164)
    humaneval_max_new_tokens: int = _f(128, ge=1)
    humaneval_budget_s: float = _f(300.0, gt=0)
    # A transformers GPT-2 directory (e.g. from codeparrot-export) whose weights replace the initialisation
    # when the run starts afresh; a resume loads its checkpoint over them.
    init_from: str | None = _f(None)


@dataclasses.dataclass(kw_only=True)
class RunConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_values(self, precision: str) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it, as `{"section.key": value}`:
        the fields declared with `resume=True` (what the model computes, the optimizer and schedule, the
        batch and the order of the data), with train.precision replaced by the resolved `precision`.
        Everything else (intervals, paths, run length, logging, activation checkpointing, compile) may
        change between a run and its resume. The data and tokenizer are compared by their hashes."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            for f in dataclasses.fields(obj):
                if f.metadata.get("resume"):
                    out[f"{section.name}.{f.name}"] = getattr(obj, f.name)
        out["train.precision"] = precision
        return json.loads(json.dumps(out))  # plain JSON values, as a checkpoint stores them

    def problems(self) -> list[str]:
        """Per-field checks of every section (type, range) and the few within-section ones."""
        problems = [
            p
            for section in dataclasses.fields(self)
            for p in _field_problems(section.name, getattr(self, section.name))
        ]
        o, t, d = self.optim, self.train, self.data
        if not problems:
            if o.min_lr > o.lr:
                problems.append(f"optim.min_lr ({o.min_lr}) must not exceed optim.lr ({o.lr})")
            if t.max_steps is None and t.max_tokens is None:
                problems.append("set train.max_steps or train.max_tokens: the run needs a length")
            if not d.paths:
                problems.append("data.paths is empty: give at least one preprocessed dataset directory")
            if not t.save_dir.strip():
                problems.append(
                    f"train.save_dir ({t.save_dir!r}) is empty: give the directory for this run's "
                    "checkpoints and logs, e.g. runs/train (an empty path would mean the current directory)"
                )
        return problems


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether `value` (parsed JSON) fits the annotation `tp` (int, float, bool, str, Literal, list[X],
    dict[str, X], X | None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return "a list of " + plural.get(args[0], _describe(args[0]))
    if origin is dict:
        return "an object"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "null" if tp is type(None) else getattr(tp, "__name__", str(tp))
    )


_BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def _field_problems(section: str, obj: Any) -> list[str]:
    """Type and range problems of each field of one section, quoting the value."""
    hints = typing.get_type_hints(type(obj))
    problems = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{section}.{f.name}"
        if not _type_ok(value, hints[f.name]):
            hint = (
                f', e.g. ["{value}"]'
                if isinstance(value, str) and typing.get_origin(hints[f.name]) is list
                else ""
            )
            problems.append(f"{key} ({value!r}) must be {_describe(hints[f.name])}{hint}")
            continue
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            broken = [
                f"{op} {f.metadata[b]}"
                for b, (op, ok) in _BOUNDS.items()
                if b in f.metadata and not ok(v, f.metadata[b])
            ]
            if broken:
                every = ": every entry" if isinstance(value, list) else ""
                problems.append(f"{key} ({value!r}){every} must be {' and '.join(broken)}")
                break
    return problems


class ConfigError(ValueError):
    """One or more configuration problems, each a sentence with the values and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run configuration:\n  - " + "\n  - ".join(problems))


_SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _section_cls(name: str) -> type:
    return {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}[name]


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Build from a nested mapping and check every field; unknown sections or keys, wrong types and
    out-of-range values raise one ConfigError listing every problem (and the valid keys)."""
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
    run = RunConfig(**sections)
    problems = run.problems()
    if problems:
        raise ConfigError(problems)
    return run


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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a key given twice in one object is an error (json keeps the last silently,
    so the first value a user wrote would be ignored)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object ({out[key]!r}, then {value!r})")
        out[key] = value
    return out


def load_json_object(path: str | Path, flag: str, fix: str) -> dict[str, Any]:
    """The JSON object in the file `path` given as `flag`; ConfigError naming the file, what is wrong
    (missing, not JSON, a duplicate key, not an object) and `fix`."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "file not found"
        raise ConfigError([f"{flag} {p}: {state} ({fix})"])
    try:
        value = json.loads(p.read_text(), object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{flag} {p}: not valid JSON ({e}); {fix}"]) from e
    except ValueError as e:
        raise ConfigError([f"{flag} {p}: {e}; keep one of them"]) from e
    if not isinstance(value, dict):
        got = f"{type(value).__name__} {value!r:.60}"
        raise ConfigError([f"{flag} {p}: must hold a JSON object ({{...}}), got {got}; {fix}"])
    return value


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    base: dict[str, Any] = {}
    if path is not None:
        base = load_json_object(path, "--config", 'sections model, data, optim, train, e.g. {"train": {}}')
    return from_dict(apply_overrides(base, overrides))


def lr_at(step: int, optim: OptimSection, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, cosine decay to min_lr, then flat."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay = optim.decay_steps or total_steps
    progress = min(max(step - optim.warmup_steps, 0) / max(decay - optim.warmup_steps, 1), 1.0)
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)

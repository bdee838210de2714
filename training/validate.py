"""Check a run before any engine is built, and resolve the DeepSpeed JSON.

The DeepSpeed JSON stays the user's file: the run fills only what it owns (micro batch, accumulation, the
global batch, precision and clipping when the JSON leaves them out) and refuses contradictions rather than
overriding them. The ZeRO stage lives only in the JSON. Every problem is collected and reported at once.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import GPTConfig
from model.presets import get_preset
from training.config import ConfigError, RunConfig

PIPELINE_ZERO_MSG = (
    "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only: train.pipeline_stages is {stages} but "
    "{path} sets zero_optimization.stage {stage}. Use ds_configs/pipeline_zero1.json, or set "
    "train.pipeline_stages=1 to train with ZeRO-{stage}."
)


@dataclass(frozen=True)
class Resolved:
    """What validation decided: the model config, the filled DeepSpeed config, the batch split."""

    model: GPTConfig
    ds_config: dict[str, Any]
    dp_size: int
    grad_accum: int
    zero_stage: int
    vocab_from_data: int | None


def load_ds_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError([f"--ds_config {p}: file not found (see ds_configs/ for ready ones)"])
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError([f"--ds_config {p}: not valid JSON ({e})"]) from e


def _data_vocab(run: RunConfig, problems: list[str]) -> int | None:
    """The largest tokenizer vocabulary among the data paths (from their manifests)."""
    from data_tools.errors import DataError
    from data_tools.manifest import load_manifest

    vocabs = []
    for path in run.data.paths:
        if not Path(path).exists():
            problems.append(
                f"data path {path!r} does not exist (build it with `codeparrot-preprocess --output "
                f"{path}` or `make demo`)"
            )
            continue
        try:
            vocabs.append(load_manifest(path)["tokenizer"]["vocab_size"])
        except DataError as e:
            problems.append(str(e))
    if run.data.weights is not None and len(run.data.weights) != len(run.data.paths):
        problems.append(
            f"data.weights has {len(run.data.weights)} entries for {len(run.data.paths)} data.paths"
        )
    return max(vocabs) if vocabs else None


def _model_config(run: RunConfig, vocab: int | None, problems: list[str]) -> GPTConfig | None:
    overrides = dict(run.model.overrides)
    if vocab is not None:
        overrides.setdefault("vocab_size", vocab)
    if run.train.activation_checkpointing:
        overrides["activation_checkpointing"] = True
    try:
        return get_preset(run.model.preset, **overrides)
    except ValueError as e:
        problems.append(f"model: {e}")
        return None


def _fill(ds: dict[str, Any], key: str, value: Any, source: str, problems: list[str], path: str) -> None:
    """Set `key` to `value` unless the JSON already says something else (then: a contradiction)."""
    current = ds.get(key, "auto")
    if current == "auto":
        ds[key] = value
    elif current != value:
        problems.append(
            f"{path} sets {key}={current!r} but the run config gives {value!r} ({source}); "
            f"remove it from the JSON (the run fills it) or make them agree"
        )


def validate(
    run: RunConfig, ds_json: dict[str, Any], ds_path: str, world_size: int, device_type: str
) -> Resolved:
    """Every check of the run against itself, the DeepSpeed JSON, the data and the world. Raises
    ConfigError listing all problems."""
    problems: list[str] = []
    t, ds = run.train, copy.deepcopy(ds_json)
    vocab = _data_vocab(run, problems)
    model = _model_config(run, vocab, problems)
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    stages = t.pipeline_stages

    if stages < 1:
        problems.append(f"train.pipeline_stages ({stages}) must be >= 1")
        stages = 1
    if t.compile and (stages > 1 or stage == 3):
        problems.append(
            f"train.compile is supported with ZeRO stage 0-2 without pipeline stages, not with "
            f"train.pipeline_stages {stages} and {ds_path} (ZeRO stage {stage}); set train.compile=false"
        )
    if stages > 1 and stage >= 2:
        problems.append(PIPELINE_ZERO_MSG.format(stages=stages, path=ds_path, stage=stage))
    if world_size % stages:
        problems.append(f"world size ({world_size}) must be a multiple of train.pipeline_stages ({stages})")
    dp = max(world_size // stages, 1)
    if model is not None:
        if stages > model.n_layer:
            problems.append(
                f"train.pipeline_stages ({stages}) exceeds the model's n_layer ({model.n_layer}): "
                "every stage needs at least one block"
            )
        if run.data.seq_len > model.n_positions:
            problems.append(
                f"data.seq_len ({run.data.seq_len}) exceeds the model context n_positions "
                f"({model.n_positions}); lower data.seq_len or set model.n_positions"
            )
        if vocab is not None and vocab > model.vocab_size:
            problems.append(
                f"the data's tokenizer has {vocab} ids but model.vocab_size is {model.vocab_size}: "
                "token ids would index past the embedding; remove the vocab_size override"
            )

    accum = t.grad_accum
    if t.global_batch is not None:
        per_step = t.micro_batch * dp
        if accum is None:
            accum = max(t.global_batch // per_step, 1)
        if t.global_batch != t.micro_batch * accum * dp:
            problems.append(
                f"train.global_batch ({t.global_batch}) must equal micro_batch ({t.micro_batch}) x "
                f"grad_accum ({accum}) x data-parallel size ({dp}) = {t.micro_batch * accum * dp}"
            )
    accum = accum or 1
    global_batch = t.micro_batch * accum * dp

    if t.precision == "fp16" and device_type == "cpu":
        problems.append(
            "train.precision fp16 is not supported on CPU (DeepSpeed refuses it); use bf16 or fp32"
        )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(
                f"{ds_path} has an {key!r} section, but the run config owns the optimizer and the "
                "learning-rate schedule (section 'optim'); remove it from the JSON"
            )
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch, "train.micro_batch", problems, ds_path)
    _fill(ds, "gradient_accumulation_steps", accum, "train.grad_accum", problems, ds_path)
    _fill(ds, "train_batch_size", global_batch, "train.global_batch", problems, ds_path)
    _fill(ds, "gradient_clipping", run.optim.grad_clip, "optim.grad_clip", problems, ds_path)
    for name in ("bf16", "fp16"):
        enabled = ds.get(name, {}).get("enabled", False)
        want = t.precision == name
        if enabled == "auto" or name not in ds:
            ds.setdefault(name, {})["enabled"] = want
        elif bool(enabled) != want:
            problems.append(
                f"{ds_path} sets {name}.enabled={enabled} but train.precision is {t.precision!r}; "
                "make them agree (or drop the section and let the run fill it)"
            )
    if problems:
        raise ConfigError(problems)
    assert model is not None
    return Resolved(
        model=model, ds_config=ds, dp_size=dp, grad_accum=accum, zero_stage=stage, vocab_from_data=vocab
    )

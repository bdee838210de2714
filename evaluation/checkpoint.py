"""Load a trained model for evaluation, offline, on one process: from a training `train.save_dir` or from a
transformers GPT-2 directory (such as one written by `codeparrot-export`).

A training save_dir holds `run_config.json` (the resolved model config under "resolved"), `ds_config.json`
(the ZeRO stage), `latest` and one tag directory per checkpoint (`global_stepN/`, complete once it has a
`COMPLETE` marker; see training/checkpoint.py). Its weights come from:
- ZeRO 1-3: the fp32 master weights in the optimizer partitions, merged by DeepSpeed's own `zero_to_fp32`
  (any data-parallel size; exact fp32 even for a bf16 run);
- pipeline stages: the per-layer files `layer_XX-model_states.pt` (`model.pipeline.read_pipeline_checkpoint`),
  which hold the module's weights in the training precision;
- ZeRO 0: the module in `mp_rank_00_model_states.pt`, in the training precision.
The tokenizer is the one the data was made with: run_config.json's first data path -> its manifest.json ->
the tokenizer directory it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from model.config import GPTConfig
from model.gpt2 import GPT
from training.checkpoint import (
    COMPLETE,
    LATEST,
    complete_tags,
    damaged_files,
    latest_tag,
    tag_step,
)
from training.run_files import DS_CONFIG, RUN_CONFIG

logger = logging.getLogger(__name__)

HF_CONFIG = "config.json"


class CheckpointError(ValueError):
    """A directory that cannot be loaded: the message names it, what is missing and what to do."""


@dataclasses.dataclass
class Loaded:
    """A model ready for evaluation: ``model`` (fp32, eval mode, on the requested device), its ``config``,
    the ``tokenizer`` (``tokenizers.Tokenizer``) and end-of-document id ``eod_id`` the data used, and
    ``source``, a one-line description of where the weights came from."""

    model: GPT
    config: GPTConfig
    tokenizer: Any  # tokenizers.Tokenizer
    eod_id: int
    source: str


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); {what}") from e


def _complete_listing(save_dir: Path) -> str:
    tags = complete_tags(save_dir)
    if not tags:
        return (
            f"{save_dir} holds no complete checkpoint (tag directory with a {COMPLETE} marker): train longer"
        )
    return f"complete checkpoints in {save_dir}: {', '.join(tags)}; pass one with --tag (tag=...)"


def resolve_tag(save_dir: Path, tag: str | None) -> str:
    """``tag``, else the one ``latest`` names; checked to be a complete, undamaged checkpoint."""
    chosen = tag or latest_tag(save_dir)
    if chosen is None:
        raise CheckpointError(f"{save_dir} has no {LATEST} file: {_complete_listing(save_dir)}")
    tag_dir = save_dir / chosen
    named = f"tag {chosen}" if tag else f"{save_dir / LATEST} names {chosen}, but"
    if not tag_dir.is_dir():
        raise CheckpointError(f"{named} {tag_dir} does not exist. {_complete_listing(save_dir)}")
    if not (tag_dir / COMPLETE).exists():
        raise CheckpointError(
            f"{tag_dir} is incomplete (no {COMPLETE} marker: its save never finished on every rank). "
            f"{_complete_listing(save_dir)}"
        )
    damaged = damaged_files(tag_dir)
    if damaged:
        raise CheckpointError(
            f"checkpoint {tag_dir} is damaged: {'; '.join(damaged)}. {_complete_listing(save_dir)}"
        )
    return chosen


def _run_config(save_dir: Path) -> dict[str, Any]:
    if not save_dir.is_dir():
        raise CheckpointError(
            f"{save_dir} does not exist: pass a training train.save_dir (with {RUN_CONFIG} and "
            "global_stepN/) or a transformers GPT-2 directory (with config.json)"
        )
    path = save_dir / RUN_CONFIG
    if not path.exists():
        raise CheckpointError(
            f"{save_dir} has no {RUN_CONFIG}: not a train.save_dir of pretrain_gpt.py (it writes that file "
            "when training starts). Pass the run's train.save_dir, or a transformers directory (config.json)"
        )
    run = _read_json(path, "pretrain_gpt.py rewrites it when the run is resumed")
    if "model" not in run.get("resolved", {}):
        raise CheckpointError(
            f"{path} has no resolved model config ('resolved.model'); resume the run once to rewrite it"
        )
    return run


def _zero_state(tag_dir: Path, zero_stage: int) -> tuple[dict[str, torch.Tensor], str]:
    """The module's weights of a ZeRO checkpoint tag (plain GPT names) and where they came from."""
    if zero_stage == 0:
        files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{tag_dir} has no mp_rank_00_model_states.pt: not a DeepSpeed checkpoint")
        module = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in module.values()})
        return module, f"module weights ({', '.join(dtypes)})"
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress; the caller logs the result
        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return state, f"fp32 master weights (ZeRO-{zero_stage}, zero_to_fp32)"


def consolidate(
    save_dir: str | Path, tag: str | None = None
) -> tuple[dict[str, torch.Tensor], GPTConfig, dict[str, Any]]:
    """One fp32 state dict in plain ``model.gpt2.GPT`` names from a training save_dir's checkpoint.

    ``tag`` defaults to the one ``latest`` names. Works on CPU, offline, for ZeRO 0-3 checkpoints of any
    world size and for pipeline checkpoints. Returns ``(state, config, info)``; ``info`` holds save_dir,
    tag, step, zero_stage, pipeline_stages, precision and weights (where they were read from).

    Raises:
        CheckpointError: the directory, tag or a file is missing, incomplete or damaged (naming the
            complete tags).
    """
    save_dir = Path(save_dir)
    run = _run_config(save_dir)
    config = GPTConfig.from_dict(run["resolved"]["model"])
    chosen = resolve_tag(save_dir, tag)
    tag_dir = save_dir / chosen
    ds_path = save_dir / DS_CONFIG
    if not ds_path.exists():
        raise CheckpointError(f"{save_dir} has no {DS_CONFIG} (pretrain_gpt.py writes it with {RUN_CONFIG})")
    zero_stage = int(_read_json(ds_path, "").get("zero_optimization", {}).get("stage", 0))
    stages = int(run.get("train", {}).get("pipeline_stages", 1))
    if stages > 1:
        from model.pipeline import read_pipeline_checkpoint

        try:
            state = read_pipeline_checkpoint(tag_dir, config)
        except FileNotFoundError as e:
            raise CheckpointError(f"{e}. {_complete_listing(save_dir)}") from e
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
        weights = f"pipeline layer files ({', '.join(dtypes)})"
    else:
        state, weights = _zero_state(tag_dir, zero_stage)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    info = {
        "save_dir": str(save_dir),
        "tag": chosen,
        "step": tag_step(chosen),
        "zero_stage": zero_stage,
        "pipeline_stages": stages,
        "precision": run["resolved"].get("precision"),
        "weights": weights,
    }
    return state, config, info


def run_tokenizer(save_dir: str | Path) -> tuple[Any, int, Path]:
    """The tokenizer the run's data was made with: ``(tokenizers.Tokenizer, eod_id, tokenizer dir)``,
    found through run_config.json's first data path and its manifest.json (checked against its sha256)."""
    from data_tools.errors import DataError
    from data_tools.manifest import dataset_tokenizer

    save_dir = Path(save_dir)
    paths = _run_config(save_dir).get("data", {}).get("paths") or []
    if not paths:
        raise CheckpointError(f"{save_dir / RUN_CONFIG} lists no data.paths: the tokenizer cannot be found")
    data_dir = Path(paths[0])
    try:
        tok = dataset_tokenizer(data_dir)
    except DataError as e:
        raise CheckpointError(
            f"the tokenizer of {save_dir} comes from its data {data_dir} (run_config.json data.paths; "
            f"relative paths are taken from the current directory, as in training): {e}"
        ) from e
    return tok.tokenizer, tok.eod, tok.dir


def _from_save_dir(path: Path, tag: str | None) -> tuple[GPT, GPTConfig, Any, int, str]:
    state, config, info = consolidate(path, tag)
    tokenizer, eod, _ = run_tokenizer(path)
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = GPT(config)
    model.load_state_dict(state, strict=True, assign=True)
    source = f"{path / info['tag']} (step {info['step']}, {info['weights']})"
    return model, config, tokenizer, eod, source


def _from_hf_dir(path: Path) -> tuple[GPT, GPTConfig, Any, int, str]:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from model.hf import from_hf

    try:
        hf_model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: transformers could not load it offline ({e}). A GPT-2 directory needs config.json, "
            "model.safetensors (or pytorch_model.bin) and tokenizer files; write one with codeparrot-export"
        ) from e
    model = from_hf(hf_model)
    eod = hf_tokenizer.eos_token_id
    if eod is None:
        eod = hf_model.generation_config.eos_token_id or hf_model.config.eos_token_id
    if isinstance(eod, list):
        eod = eod[0]
    if eod is None:
        raise CheckpointError(
            f"{path}: no end-of-document token (the tokenizer's eos_token and config.json's eos_token_id are "
            "unset); set eos_token_id in config.json"
        )
    return model, model.config, hf_tokenizer.backend_tokenizer, int(eod), f"{path} (transformers GPT-2)"


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the model's weights (every tensor's name, dtype, shape and bytes, in state-dict order):
    the same weights give the same hash whether loaded from a checkpoint or from its export."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what maps text to ids in a ``tokenizers.Tokenizer`` (model, added tokens, normalizer,
    pre-tokenizer, decoder): equal for a tokenizer and its copy in an export, whose files may differ."""
    spec = json.loads(tokenizer.to_str())
    parts = {k: spec.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_model(path: str | Path, tag: str | None = None, device: str | torch.device = "cpu") -> Loaded:
    """The model, tokenizer and end-of-document id of a training save_dir (checkpoint ``tag``, default
    ``latest``) or of a transformers GPT-2 directory (``tag`` must be None), offline.

    Raises:
        CheckpointError: naming the directory, what is missing and the fix.
    """
    path = Path(path)
    if (path / RUN_CONFIG).exists() or not (path / HF_CONFIG).exists():
        # DeepSpeed's logger writes to the stdout it finds when first imported; importing it here with
        # stdout on stderr keeps a tool's own output (completions, scores) clean for pipes.
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed  # noqa: F401
        model, config, tokenizer, eod, source = _from_save_dir(path, tag)
    else:
        if tag is not None:
            raise CheckpointError(
                f"{path} is a transformers directory (config.json): it has no tags; drop tag"
            )
        model, config, tokenizer, eod, source = _from_hf_dir(path)
    model = model.to(device=device, dtype=torch.float32).eval()
    logger.info("loaded %s", source)
    return Loaded(model=model, config=config, tokenizer=tokenizer, eod_id=eod, source=source)

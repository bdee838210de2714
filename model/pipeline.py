"""The GPT of ``model.gpt2`` cut into a DeepSpeed ``PipelineModule``, from the same pieces.

Layer list (index: module):
    0        ``Embedding`` (``TiedLayerSpec`` "embed" when the head is tied)
    1..L     ``Block``
    L+1      final ``LayerNorm``
    L+2      head: the tied "embed" module called through ``tied_head_forward`` (no parameters of its own),
             or an ``LMHead`` when untied
The last stage returns logits ``[B, T, V]`` (real vocabulary only) and ``pipeline_loss`` reduces them with
the same cross-entropy as ``GPT.forward(idx, targets, return_logits=True)``. Unlike the plain model, the
pipeline materialises the last micro-batch's logits: labels reach only ``loss_fn``, after the head.

Parameter names differ from the plain model only by prefix, which ``pipeline_state_from_gpt`` and
``gpt_state_from_pipeline`` rewrite (``blocks.{i}.`` <-> ``{i+1}.``, ``ln_f.`` <-> ``{L+1}.``,
``embed.`` <-> ``tied_modules.embed.``, ``lm_head.`` <-> ``{L+2}.``). DeepSpeed's per-layer checkpoint files
``layer_{idx:02d}-model_states.pt`` use the same indices with keys relative to the layer:
``layer_states_from_gpt`` / ``gpt_state_from_layer_states`` / ``read_pipeline_checkpoint`` handle those.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

from model.config import GPTConfig
from model.gpt2 import Block, Embedding, LMHead, lm_logits
from model.kernels.cross_entropy import cross_entropy_from_logits
from model.kernels.layernorm import LayerNorm
from model.pipeline_cut import stage_bounds

TIED_KEY = "embed"


def tied_head_forward(embedding: Embedding, hidden: torch.Tensor) -> torch.Tensor:
    """Head of the last stage with the tied token embedding: ``[B, T, d] -> [B, T, V]`` logits."""
    return lm_logits(hidden, embedding.wte.weight, embedding.vocab_size)


def pipeline_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE of the last stage's ``[B, T, V]`` logits against ``[B, T]`` labels (-100 ignored)."""
    return cross_entropy_from_logits(logits, labels)


def pipeline_layers(config: GPTConfig) -> list[LayerSpec]:
    """Layer specs of the pipeline (see the module docstring for the index layout)."""
    L = config.n_layer
    if config.tie_word_embeddings:
        embed = TiedLayerSpec(TIED_KEY, Embedding, config, tied_weight_attr=["wte.weight"])
        head = TiedLayerSpec(
            TIED_KEY, Embedding, config, forward_fn=tied_head_forward, tied_weight_attr=["wte.weight"]
        )
    else:
        embed, head = LayerSpec(Embedding, config), LayerSpec(LMHead, config)
    blocks = [LayerSpec(Block, config) for _ in range(L)]
    final_norm = LayerSpec(LayerNorm, config.n_embd, config.layer_norm_epsilon, config.layernorm)
    return [embed, *blocks, final_norm, head]


def stage_partition(config: GPTConfig, num_stages: int) -> list[tuple[int, int]]:
    """The layer index range ``[start, stop)`` of each stage, as ``build_pipeline``'s default
    ``partition_method="parameters"`` cuts it (model/pipeline_cut.py, torch-free)."""
    return stage_bounds(config, num_stages)


def layer_name(config: GPTConfig, index: int) -> str:
    """A pipeline layer index's name in the plain model: embed, block i, ln_f or head."""
    L = config.n_layer
    return (
        "embed"
        if index == 0
        else f"block {index - 1}"
        if index <= L
        else "ln_f"
        if index == L + 1
        else "head"
    )


def build_pipeline(
    config: GPTConfig,
    num_stages: int,
    *,
    partition_method: str = "parameters",
    activation_checkpoint_func: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> PipelineModule:
    """A ``PipelineModule`` for ``config`` over ``num_stages`` stages (call after ``init_distributed``).

    With ``config.activation_checkpointing`` every ``Block`` is checkpointed on its own, and only blocks:
    DeepSpeed's default (reentrant) checkpoint loses the embedding's gradients when it wraps the first
    layer, whose input (token ids) needs no grad. ``seed_layers`` stays False: with True DeepSpeed seeds
    with numpy ints from its partition bounds and crashes on Python 3.11 (pass ``seed_layers`` and an
    int-casting ``seed_fn`` through ``kwargs`` if per-layer seeding is wanted).

    The engine's data iterator yields ``(idx, targets)`` pairs of ``[micro_batch, T]`` int64 tensors, targets
    already shifted as for ``GPT.forward`` (-100 ignored); ``engine.train_batch(it)`` returns the mean loss.

    Args:
        activation_checkpoint_func: replaces DeepSpeed's checkpoint function (e.g. its
            ``non_reentrant_checkpoint``); kwargs go to ``PipelineModule``.
    """
    ckpt: dict[str, Any] = {}
    if config.activation_checkpointing:
        ckpt = {"activation_checkpoint_interval": 1, "checkpointable_layers": [Block.__name__]}
        if activation_checkpoint_func is not None:
            ckpt["activation_checkpoint_func"] = activation_checkpoint_func
    return PipelineModule(
        layers=pipeline_layers(config),
        num_stages=num_stages,
        loss_fn=pipeline_loss,
        partition_method=partition_method,
        **ckpt,
        **kwargs,
    )


def _layer_prefixes(config: GPTConfig) -> list[tuple[str, int]]:
    """(plain-model prefix, pipeline layer index) of every layer that owns parameters."""
    L = config.n_layer
    pairs = [("embed.", 0)] + [(f"blocks.{i}.", i + 1) for i in range(L)] + [("ln_f.", L + 1)]
    if not config.tie_word_embeddings:
        pairs.append(("lm_head.", L + 2))
    return pairs


def _prefix_map(config: GPTConfig) -> list[tuple[str, str]]:
    """(plain-model prefix, PipelineModule prefix) pairs: the tied embedding lives under ``tied_modules``."""
    tied = config.tie_word_embeddings
    return [
        (src, f"tied_modules.{TIED_KEY}." if tied and idx == 0 else f"{idx}.")
        for src, idx in _layer_prefixes(config)
    ]


def _rename(state: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        match = [(src, dst) for src, dst in pairs if key.startswith(src)]
        if len(match) != 1:
            raise KeyError(f"parameter {key!r} matches no layer of this config (expected prefixes {pairs})")
        src, dst = match[0]
        out[dst + key[len(src) :]] = value
    return out


def pipeline_state_from_gpt(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Plain ``GPT`` state dict -> the names a (whole, all stages) ``PipelineModule`` uses."""
    return _rename(state, _prefix_map(config))


def gpt_state_from_pipeline(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Union of the stages' ``PipelineModule.state_dict()`` -> plain ``GPT`` state dict."""
    return _rename(state, [(dst, src) for src, dst in _prefix_map(config)])


def gpt_module_name(name: str, config: GPTConfig) -> str:
    """A ``PipelineModule`` submodule's name -> the same module's name in the plain ``GPT``
    (``"3.attn"`` -> ``"blocks.2.attn"``, ``"tied_modules.embed"`` -> ``"embed"``)."""
    (renamed,) = gpt_state_from_pipeline({name + ".": None}, config)
    return renamed.removesuffix(".")


def layer_states_from_gpt(
    state: dict[str, torch.Tensor], config: GPTConfig
) -> dict[int, dict[str, torch.Tensor]]:
    """Plain ``GPT`` state dict -> per pipeline layer index, that layer's own state dict.

    The form of DeepSpeed's pipeline checkpoint files ``layer_{idx:02d}-model_states.pt``; the tied head
    (layer L+2 when tied) has no file of its own, the embedding at layer 0 holds the shared weight.
    """
    named = _rename(state, [(src, f"{idx}.") for src, idx in _layer_prefixes(config)])
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in named.items():
        idx, name = key.split(".", 1)
        layers.setdefault(int(idx), {})[name] = value
    return layers


def gpt_state_from_layer_states(
    layers: dict[int, dict[str, torch.Tensor]], config: GPTConfig
) -> dict[str, torch.Tensor]:
    """Inverse of ``layer_states_from_gpt``; raises KeyError for a layer index this config lacks."""
    prefix = {idx: src for src, idx in _layer_prefixes(config)}
    unknown = sorted(set(layers) - set(prefix))
    if unknown:
        raise KeyError(
            f"layer indices {unknown} hold no parameters in this config (expected {sorted(prefix)})"
        )
    return {prefix[idx] + name: value for idx, layer in layers.items() for name, value in layer.items()}


def read_pipeline_checkpoint(ckpt_dir: str | Path, config: GPTConfig) -> dict[str, torch.Tensor]:
    """Plain ``GPT`` state dict from a DeepSpeed pipeline checkpoint tag directory (CPU tensors).

    Reads ``layer_{idx:02d}-*model_states.pt`` for every parameter-holding layer (the first match, as
    DeepSpeed's own loader does without tensor parallelism). ``zero_to_fp32`` does not apply to pipeline
    checkpoints: their weights live in these per-layer files.
    """
    ckpt_dir = Path(ckpt_dir)
    layers = {}
    for _, idx in _layer_prefixes(config):
        files = sorted(ckpt_dir.glob(f"layer_{idx:02d}-*model_states.pt"))
        if not files:
            raise FileNotFoundError(
                f"no layer_{idx:02d}-*model_states.pt in {ckpt_dir}: not a checkpoint of {config}"
            )
        layers[idx] = torch.load(files[0], map_location="cpu", weights_only=True)
    return gpt_state_from_layer_states(layers, config)


def load_gpt_state(pipe: PipelineModule, state: dict[str, torch.Tensor], config: GPTConfig) -> None:
    """Copy a plain ``GPT`` state dict into this stage's layers (each rank takes the keys it holds).

    Raises:
        KeyError: if a parameter of this stage is missing from ``state``.
    """
    full = pipeline_state_from_gpt(state, config)
    local = pipe.state_dict()
    missing = sorted(set(local) - set(full))
    if missing:
        raise KeyError(f"state dict lacks this stage's parameters {missing}")
    pipe.load_state_dict({k: full[k] for k in local}, strict=True)


def gather_gpt_state(pipe: PipelineModule, config: GPTConfig) -> dict[str, torch.Tensor]:
    """Collective over all ranks: the full plain ``GPT`` state dict (CPU tensors), on every rank.

    Every rank receives every stage's weights through ``all_gather_object``: meant for tests and small
    models; large ones should go through ``save_checkpoint`` and ``read_pipeline_checkpoint``.

    The tied "embed" module is taken from the stage that runs the embedding (layer 0): the last stage holds
    a replica for the head, whose ``wte`` DeepSpeed keeps in sync but whose ``wpe`` it never uses, so that
    copy of ``wpe`` goes stale (it only sees weight decay) and must not be read.
    """
    owns_embedding = pipe.stage_id == pipe.stage_owner(0)
    local = {
        k: v.detach().cpu()
        for k, v in pipe.state_dict().items()
        if owns_embedding or not k.startswith("tied_modules.")
    }
    parts: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        merged.update(part or {})
    return gpt_state_from_pipeline(merged, config)

"""Build the DeepSpeed engine: the plain GPT for ZeRO, the PipelineModule for pipelines.

With ZeRO-3 the model is constructed under `deepspeed.zero.Init`, so parameters are partitioned as each
module is built and the 1.5B is never whole on one rank. The model owns its initialisation
(`model.gpt2.init_weights`, each module's `reset_parameters`); training calls it after the build with the
run's seed, gathering one module at a time under ZeRO-3, so every layout starts from the same weights.
With `train.init_from` the weights of a transformers GPT-2 directory then replace those values, by the same
one-module-at-a-time route.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from model.config import GPTConfig
from model.gpt2 import GPT, init_weights
from model.optim import build_optimizer, param_groups
from training.config import RunConfig, lr_at

logger = logging.getLogger(__name__)


@contextmanager
def _zero3_gathered(module: nn.Module) -> Iterator[bool]:
    """A module's parameters made whole for initialisation: under ZeRO-3 gathered, written by rank 0 and
    re-partitioned (broadcast) on exit; otherwise already whole and written by every rank."""
    import deepspeed
    import torch.distributed as dist

    params = list(module.parameters())
    if not params or not hasattr(params[0], "ds_id"):
        yield True
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield dist.get_rank() == 0


def initialise(model: nn.Module, cfg: GPTConfig, seed: int) -> None:
    """The model's own GPT-2 initialisation (`model.gpt2.init_weights`) for a plain GPT, a ZeRO-3-partitioned
    one or a pipeline stage: every layout gets the values the whole plain model gets for this seed."""
    from model.pipeline import gpt_module_name

    def name(module_name: str) -> str:
        return module_name if isinstance(model, GPT) else gpt_module_name(module_name, cfg)

    init_weights(model, seed, gpt_name=name, gathered=_zero3_gathered)


def _pretrained_state(path: str) -> dict[str, torch.Tensor]:
    """A transformers GPT-2 directory's weights in plain GPT names, its vocabulary rows unpadded."""
    from transformers import GPT2LMHeadModel

    from model.hf import config_from_hf, from_hf_state_dict

    hf_model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    own = config_from_hf(hf_model.config, pad_vocab_to_multiple=1)
    return from_hf_state_dict(hf_model.state_dict(), own)


@torch.no_grad()
def load_pretrained(model: nn.Module, cfg: GPTConfig, path: str) -> None:
    """Copy the weights of the transformers GPT-2 directory `path` (`train.init_from`, checked against `cfg`
    by validation) into a plain GPT, a ZeRO-3-partitioned one or a pipeline stage. Where the directory's
    vocabulary is smaller than the model's, the rows of the extra ids keep their initialisation. Under
    ZeRO-3 only rank 0 reads the directory and writes each gathered module (see `_zero3_gathered`)."""
    import torch.distributed as dist

    from model.pipeline import pipeline_state_from_gpt

    zero3 = any(hasattr(p, "ds_id") for p in model.parameters())
    state: dict[str, torch.Tensor] = {}
    if not zero3 or dist.get_rank() == 0:
        state = _pretrained_state(path)
        if not isinstance(model, GPT):
            state = pipeline_state_from_gpt(state, cfg)
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(prefix=module_name, recurse=False))
        if not own:
            continue
        with _zero3_gathered(module) as write:
            if write:
                for name, param in own:
                    source = state[name]
                    param[: source.size(0)].copy_(source)
    logger.info("train.init_from: weights of %s", path)


def _starting_weights(model: nn.Module, cfg: GPTConfig, run: RunConfig) -> None:
    """The model's own initialisation, then (with train.init_from) the pretrained weights over it."""
    initialise(model, cfg, run.train.seed)
    if run.train.init_from is not None:
        load_pretrained(model, cfg, run.train.init_from)


def build_model(run: RunConfig, cfg: GPTConfig, ds_config: dict[str, Any], zero_stage: int) -> nn.Module:
    if run.train.pipeline_stages > 1:
        from deepspeed.runtime.activation_checkpointing.checkpointing import non_reentrant_checkpoint

        from model.pipeline import build_pipeline

        pipe = build_pipeline(
            cfg, run.train.pipeline_stages, activation_checkpoint_func=non_reentrant_checkpoint
        )
        _starting_weights(pipe, cfg, run)
        return pipe
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = GPT(cfg)
        _starting_weights(model, cfg, run)
        local = sum(p.ds_tensor.numel() for p in model.parameters())
        total = sum(p.ds_numel for p in model.parameters())
        logger.info("ZeRO-3: model built under zero.Init, %d of %d parameters on this rank", local, total)
        return model
    model = GPT(cfg)
    _starting_weights(model, cfg, run)
    if run.train.compile:
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the eager model.
        # The first step pays the compilation (tens of seconds on a CPU; cached in TORCHINDUCTOR_CACHE_DIR).
        model.compile()
        logger.info("model compiled with torch.compile (inductor)")
    return model


DEEPSPEED_MUON = "deepspeed.runtime.zero.muon.original_muon"


def defer_deepspeed_muon_compile() -> None:
    """Import DeepSpeed's Muon optimizer module with its kernels compiled on their first call, not at import.

    DeepSpeed (0.19) imports that module during `deepspeed.initialize` and in every ZeRO-1/2 gradient
    reduction, whatever the optimizer, and its module-level ``@torch.compile`` decorators import torch's
    inductor: 3.6 s of import per rank on a 2-core CPU host (python -X importtime), about 1.8 CPU s per
    rank of a 2-rank launch (bench/startup.py). The run's optimizer is AdamW (model.optim) or DeepSpeed's
    CPU Adam, never Muon (training.validate refuses a DeepSpeed JSON that names an optimizer), so the
    kernels are never called; were they, they would compile then. Only that module is affected:
    DeepSpeed's ``compiler.compile`` is restored before this returns. Nothing to do when the module is
    already imported (then inductor is too).
    """
    if DEEPSPEED_MUON in sys.modules:
        return
    from deepspeed.runtime import compiler

    eager = compiler.compile
    compiler.compile = lambda: _compile_on_first_call
    try:
        __import__(DEEPSPEED_MUON)
    finally:
        compiler.compile = eager


def _compile_on_first_call(fn: Callable) -> Callable:
    """``torch.compile(fn)``, built when first called (inside a compiled caller: ``fn`` itself, traced)."""
    compiled: list[Callable] = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not compiled:
            compiled.append(torch.compile(fn))
        return compiled[0](*args, **kwargs)

    return call


def build_engine(
    run: RunConfig,
    cfg: GPTConfig,
    ds_config: dict[str, Any],
    zero_stage: int,
    total_steps: int,
    device_type: str,
) -> Any:
    """deepspeed.initialize with AdamW (no decay on biases/LayerNorm) and warmup + cosine."""
    import deepspeed

    defer_deepspeed_muon_compile()  # before deepspeed.initialize: no inductor import
    model = build_model(run, cfg, ds_config, zero_stage)
    o = run.optim
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    groups = param_groups(model, o.weight_decay)
    # With the optimizer offloaded DeepSpeed wants its own CPU Adam (a C++ op, JIT-built once per extension
    # cache), unless the JSON sets zero_force_ds_cpu_optimizer false (the _cpu variant: torch AdamW).
    if offload == "cpu" and ds_config.get("zero_force_ds_cpu_optimizer", True):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(
            [{k: v for k, v in g.items() if k != "names"} for g in groups],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            adamw_mode=True,
        )
    else:
        optimizer = build_optimizer(
            groups, o.lr, betas=(o.beta1, o.beta2), eps=o.eps, device_type=device_type
        )

    # A factory, not a scheduler: DeepSpeed calls it with the optimizer it ends up stepping (ZeRO-3
    # regroups the client optimizer's parameter groups, which a scheduler built beforehand would miss).
    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, o, total_steps) / o.lr)

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine

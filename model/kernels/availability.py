"""Availability checks shared by the Triton-backed ops (cached: they never change within a process)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable


@functools.cache
def triton_importable() -> bool:
    """True when the ``triton`` package is installed (it is an optional extra: ``.[kernels]``)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def triton_usable(device_type: str) -> tuple[bool, str]:
    """Whether Triton kernels can run on tensors of ``device_type``, and why not if they cannot.

    Triton compiles for CUDA (and ROCm, which torch also calls "cuda"). On the CPU it runs only in its
    interpreter, enabled by ``TRITON_INTERPRET=1`` in the environment *before* triton is first imported;
    that mode is 50-100x slower than torch and meant for testing the kernels against their references.
    """
    if not triton_importable():
        return False, "triton is not installed (pip install '.[kernels]')"
    if device_type == "cuda":
        return True, "CUDA device"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, "CPU through the Triton interpreter (TRITON_INTERPRET=1)"
    return (
        False,
        f"Triton does not compile for device type {device_type!r} (set TRITON_INTERPRET=1 to interpret)",
    )


def choose_triton_or_torch(op: str, requested: str, device_type: str, logger: logging.Logger) -> str:
    """The choice rule of the Triton-backed ops: "torch" when asked; Triton when usable and either asked
    for or on CUDA ("auto"); else torch, logged (a warning when Triton was asked for explicitly)."""
    if requested == "torch":
        logger.info("%s: torch reference on %s (requested)", op, device_type)
        return "torch"
    ok, reason = triton_usable(device_type)
    if ok and (requested == "triton" or device_type == "cuda"):
        logger.info("%s: fused Triton kernel (%s)", op, reason)
        return "triton"
    level = logging.WARNING if requested == "triton" else logging.INFO
    logger.log(level, "%s: Triton not used on %s (%s); falling back to torch", op, device_type, reason)
    return "torch"


def kernel_choice(fn: Callable[[str, str], str]) -> Callable[[str, str], str]:
    """Decorator for the choice resolvers ``(requested, device_type) -> implementation``.

    Caches the resolver (so it logs once per choice) and marks the cached call as a constant for
    torch.compile, which then evaluates it once while tracing instead of tracing through the cache wrapper
    into the availability checks and logging calls (graph breaks). ``cache_clear`` is kept for tests.
    """
    cached = functools.cache(fn)

    @functools.wraps(fn)
    def resolve(requested: str, device_type: str) -> str:
        return cached(requested, device_type)

    # What torch.compiler.assume_constant_result(resolve) does (torch 2.1-2.13 set this one attribute),
    # without importing torch._dynamo, which costs 2-4 s at `import model.gpt2` in every tool that never
    # compiles (generation, export, evaluation). tests/model/test_gpt2.py checks that the model still
    # traces without graph breaks.
    resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]
    resolve.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return resolve

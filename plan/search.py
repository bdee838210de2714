"""codeparrot-plan's searches over layouts: the single changes that make a layout fit (``advice``) and, with
--suggest, every layout that fits ranked by predicted step time, communication included (``suggest``)."""

from __future__ import annotations

import dataclasses

from model.config import GPTConfig
from plan.comm import DEFAULT_NET_GBPS
from plan.memory import DEFAULT_MFU, GIB, Gpu, Layout, Plan, plan


def advice(p: Plan) -> list[str]:
    """Why it does not fit (the largest term) and single changes that would fit, each with its peak."""
    biggest = max(p.terms, key=lambda t: t.bytes)
    out = [f"largest term: {biggest.name} {biggest.bytes / GIB:.1f} GiB ({biggest.note})"]
    lay = p.layout
    tries: list[tuple[str, Layout]] = []
    for z in range(lay.zero_stage + 1, 4):
        if lay.pipeline_stages == 1 or z <= 1:
            tries.append((f"--zero {z}", dataclasses.replace(lay, zero_stage=z)))
    if not lay.activation_checkpointing:
        tries.append(("--activation-checkpointing", dataclasses.replace(lay, activation_checkpointing=True)))
    micro = lay.micro_batch
    while micro > 1:
        micro //= 2
        accum = lay.grad_accum * lay.micro_batch // micro
        tries.append(
            (
                f"--micro-batch {micro} (grad_accum {accum})",
                dataclasses.replace(lay, micro_batch=micro, grad_accum=accum),
            )
        )
    if lay.zero_stage >= 1:
        for factor in (2, 4, 8):
            dp = lay.dp * factor
            if lay.global_batch % (lay.micro_batch * dp) == 0:
                accum = lay.global_batch // (lay.micro_batch * dp)
                tries.append(
                    (
                        f"{dp * lay.pipeline_stages} GPUs (dp {dp})",
                        dataclasses.replace(lay, dp=dp, grad_accum=accum),
                    )
                )
        if lay.offload == "none":
            tries.append(("--offload optimizer", dataclasses.replace(lay, offload="optimizer")))
    for label, changed in tries:
        try:
            q = plan(p.model, changed, p.gpu, mfu=p.mfu, net_gbps=p.net_gbps)
        except ValueError:
            continue
        if q.fits:
            out.append(f"fits with {label}: peak {q.peak_bytes / GIB:.1f} GiB")
    if len(out) == 1:
        out.append("no single change fits: combine them, or use more GPUs with a higher ZeRO stage")
    return out


def suggest(
    model: GPTConfig,
    gpus: int,
    gpu: Gpu,
    base: Layout,
    mfu: float = DEFAULT_MFU,
    tokens: float | None = None,
    preset: str = "custom",
    net_gbps: float = DEFAULT_NET_GBPS,
) -> list[Plan]:
    """Every layout of ZeRO 1-3, pipeline 1/2/4/8 (ZeRO <= 1 only), micro-batch 1..32 and checkpointing on
    or off that fits on `gpus` GPUs with `base`'s global batch, sequence, precision and ds_config knobs
    (overlap_comm on unless the ds_config says otherwise, as the shipped ds_configs have it), fastest first
    (then the lower ZeRO stage, then the larger micro-batch)."""
    global_batch, overlap = base.global_batch, True if base.overlap_comm is None else base.overlap_comm
    fitting = []
    for zero in (1, 2, 3):
        for stages in (1, 2, 4, 8):
            if (stages > 1 and zero > 1) or gpus % stages or stages > model.n_layer:
                continue
            dp = gpus // stages
            for micro in range(1, 33):
                if global_batch % (micro * dp):
                    continue
                for ckpt in (False, True):
                    lay = dataclasses.replace(
                        base,
                        micro_batch=micro,
                        grad_accum=global_batch // (micro * dp),
                        dp=dp,
                        pipeline_stages=stages,
                        zero_stage=zero,
                        offload="none",
                        activation_checkpointing=ckpt,
                        overlap_comm=overlap,
                    )
                    p = plan(model, lay, gpu, mfu=mfu, tokens=tokens, preset=preset, net_gbps=net_gbps)
                    if p.fits:
                        fitting.append(p)
    fitting.sort(key=lambda p: (-round(p.tokens_per_s), p.layout.zero_stage, -p.layout.micro_batch))
    return fitting


def distinct(plans: list[Plan], top: int) -> list[Plan]:
    """The first (fastest) plan of each family (ZeRO stage, pipeline stages, checkpointing), at most `top`:
    micro-batch sizes of one family differ only in traffic per micro-batch: listing them says little."""
    seen, out = set(), []
    for p in plans:
        family = (p.layout.zero_stage, p.layout.pipeline_stages, p.layout.activation_checkpointing)
        if family not in seen:
            seen.add(family)
            out.append(p)
    return out[:top]

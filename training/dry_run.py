"""`pretrain_gpt.py --dry-run`: the plan of a launch, from the configs alone, without starting an engine.

    python pretrain_gpt.py --dry-run --world 32 --ranks-per-node 8 --device cuda \\
        --config configs/codeparrot_pipeline4_zero1.json --ds_config ds_configs/pipeline_zero1.json
"""

from __future__ import annotations

from model.config import GPTConfig
from training.config import RunConfig
from training.validate import RunSetup


def _params(config: GPTConfig) -> int:
    import torch

    from model.gpt2 import GPT

    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


def layout_text(run: RunConfig, setup: RunSetup, world: int, ranks_per_node: int, device: str) -> str:
    """World, pipeline stages and their layers, data parallelism and ZeRO, batch arithmetic, precision."""
    m, t = setup.model, run.train
    stages, dp = t.pipeline_stages, setup.dp_size
    nodes = -(-world // ranks_per_node)
    micro, accum, global_batch = t.micro_batch, setup.grad_accum, setup.global_batch
    tokens = global_batch * run.data.seq_len
    lines = [
        f"world: {world} ranks = {nodes} node(s) x {min(ranks_per_node, world)} ({device})",
        f"model: {run.model.preset}, {_params(m):,} parameters, {m.n_layer} layers, n_embd {m.n_embd}, "
        f"n_head {m.n_head}, context {m.n_positions}, vocab {m.vocab_size}"
        + (", activation checkpointing" if m.activation_checkpointing else ""),
        f"parallelism: {stages} pipeline stage(s) x {dp} data-parallel, ZeRO stage {setup.zero_stage}",
    ]
    if stages > 1:
        from model.pipeline import layer_name, stage_partition

        for i, (a, b) in enumerate(stage_partition(m, stages)):
            ranks = f"ranks {i * dp}-{(i + 1) * dp - 1}" if dp > 1 else f"rank {i}"
            lines.append(
                f"  stage {i} ({ranks}): layers {a}-{b - 1} = {layer_name(m, a)} .. {layer_name(m, b - 1)} "
                f"({b - a} layers)"
            )
    lines += [
        f"batch: micro_batch {micro} x grad_accum {accum} x data-parallel {dp} = {global_batch} sequences "
        f"of {run.data.seq_len} tokens = {tokens:,} tokens per step",
        f"precision: {setup.precision.precision} ({setup.precision.reason})",
    ]
    steps = setup.total_steps
    lines.append(f"length: {steps:,} steps = {steps * tokens:,} tokens")
    lines.append(f"checkpoints: {t.save_dir} every {t.save_interval} steps")
    return "\n".join(lines)

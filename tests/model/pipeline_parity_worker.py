"""One rank of the pipeline parity check, started by the real ``deepspeed`` launcher (test_pipeline.py).

2 stages, ZeRO-1, fp32, plain SGD, gradient clipping, activation checkpointing of the blocks. Every rank
builds the same plain GPT (same seed), loads it into its pipeline stage and then compares, on the same
batches: eval_batch loss, train_batch loss, the loss after one optimizer step, and the gathered weights after
that step (gathered from the stages, and read back from a saved checkpoint), against the plain model trained
by a torch loop. Rank 0 writes the numbers as JSON to ``out_path``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import deepspeed
import torch

from launch.env import LaunchEnv
from model.gpt2 import GPT
from model.pipeline import build_pipeline, gather_gpt_state, load_gpt_state, read_pipeline_checkpoint
from model.presets import get_preset

MICRO_BATCH, ACCUM, SEQ = 2, 2, 32
# Plain SGD with lr 1: the weights after one step differ from the plain model's by exactly the gradient
# difference (Adam's first step, lr * g / (|g| + eps), would hide a gradient scale error behind its
# normalisation and amplify float noise on near-zero gradients).
LR = 1.0
# DeepSpeed 0.19 clips gradients to norm 1.0 unless told otherwise; both sides clip, which also checks that
# the pipeline counts the tied embedding once in the global norm.
CLIP = 1.0


def batches(vocab: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``ACCUM`` micro-batches of (idx, targets) ``[MICRO_BATCH, SEQ]``; some targets ignored (-100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(ACCUM):
        tokens = torch.randint(0, vocab, (MICRO_BATCH, SEQ + 1), generator=g)
        idx, targets = tokens[:, :-1].clone(), tokens[:, 1:].clone()
        targets[0, :5] = -100
        out.append((idx, targets))
    return out


def plain_loss(model: GPT, data: list[tuple[torch.Tensor, torch.Tensor]], backward: bool) -> float:
    """Mean of the micro-batch losses (what the pipeline engine reports); accumulates grads if asked."""
    total = 0.0
    for idx, targets in data:
        _, loss = model(idx, targets)
        if backward:
            (loss / len(data)).backward()
        total += loss.item()
    return total / len(data)


def main(out_path: str, seed: int, data_seed: int) -> None:
    LaunchEnv.read().init_distributed()
    rank = torch.distributed.get_rank()
    config = get_preset("tiny", vocab_size=509, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    config = config.replace(activation_checkpointing=True)
    torch.manual_seed(seed)
    plain = GPT(config)
    pipe = build_pipeline(config, num_stages=2)
    load_gpt_state(pipe, plain.state_dict(), config)
    initial = {k: v.clone() for k, v in plain.state_dict().items()}
    ds_config = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": ACCUM,
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": CLIP,
        "zero_optimization": {"stage": 1},
        "steps_per_print": 1000,
    }
    optimizer = torch.optim.SGD(pipe.parameters(), lr=LR)
    engine, _, _, _ = deepspeed.initialize(model=pipe, optimizer=optimizer, config=ds_config)
    data = batches(config.vocab_size, seed=data_seed)
    result: dict[str, float] = {"parts": [int(p) for p in pipe.parts]}  # DeepSpeed's own cut

    plain.eval()
    with torch.no_grad():
        result["plain_eval"] = plain_loss(plain, data, backward=False)
    result["pipe_eval"] = engine.eval_batch(iter(data)).item()

    plain.train()
    opt = torch.optim.SGD(plain.parameters(), lr=LR)
    result["plain_train"] = plain_loss(plain, data, backward=True)
    result["plain_grad_norm"] = torch.nn.utils.clip_grad_norm_(plain.parameters(), CLIP).item()
    opt.step()
    result["pipe_train"] = engine.train_batch(iter(data)).item()
    result["pipe_grad_norm"] = float(engine.get_global_grad_norm())

    plain.eval()
    with torch.no_grad():
        result["plain_eval_after_step"] = plain_loss(plain, data, backward=False)
    result["pipe_eval_after_step"] = engine.eval_batch(iter(data)).item()

    gathered = gather_gpt_state(pipe, config)
    reference = plain.state_dict()
    result["n_params_gathered"] = len(gathered)
    result["n_params_plain"] = len(reference)
    result["max_weight_diff_after_step"] = max(
        (gathered[k] - reference[k]).abs().max().item() for k in reference
    )
    result["max_weight_change"] = max((reference[k] - v).abs().max().item() for k, v in initial.items())
    result["stages"] = len(pipe.parts) - 1
    ckpt_dir = Path(out_path).parent / "ckpt"
    engine.save_checkpoint(str(ckpt_dir), tag="step1")
    if rank == 0:
        from_files = read_pipeline_checkpoint(ckpt_dir / "step1", config)
        result["max_weight_diff_checkpoint"] = max(
            (from_files[k] - reference[k]).abs().max().item() for k in reference
        )
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_path")
    parser.add_argument("--seed", type=int, default=1234, help="the model's initialisation")
    parser.add_argument("--data-seed", type=int, default=7, help="the batches'")
    parser.add_argument("--local_rank", type=int, default=0)  # added by the deepspeed launcher
    args = parser.parse_args()
    main(args.out_path, args.seed, args.data_seed)

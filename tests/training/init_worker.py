"""One rank of the initialisation check, started by the real `deepspeed` launcher (test_init.py).

Builds the model the way training does (`training.engine.build_model`) as a plain GPT (ZeRO-2), under
`zero.Init` (ZeRO-3, partitioned across the ranks) and as a 2-stage PipelineModule, gathers each whole, and
compares it with the plain GPT initialised by the model's own `init_weights` for the run's seed. Rank 0
writes the maximum absolute difference per layout as JSON to the path given by --out=PATH.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from launch.env import LaunchEnv  # noqa: E402
from model.gpt2 import GPT, init_weights  # noqa: E402
from model.pipeline import gather_gpt_state  # noqa: E402
from model.presets import get_preset  # noqa: E402
from training.config import from_dict  # noqa: E402
from training.engine import build_model  # noqa: E402

SEED = 5


def max_diff(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert state.keys() == reference.keys(), sorted(set(state) ^ set(reference))
    return max((state[k].float() - reference[k].float()).abs().max().item() for k in reference)


def main(out: str) -> None:
    LaunchEnv.read().init_distributed()
    cfg = get_preset("tiny", vocab_size=600, n_layer=3)
    reference = GPT(cfg)
    init_weights(reference, SEED)
    ref = {k: v.clone() for k, v in reference.state_dict().items()}
    result = {}

    plain = build_model(from_dict({"train": {"seed": SEED}}), cfg, {}, zero_stage=2)
    result["plain"] = max_diff(plain.state_dict(), ref)

    ds3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    zero3 = build_model(from_dict({"train": {"seed": SEED}}), cfg, ds3, zero_stage=3)
    params = list(zero3.parameters())
    result["zero3_partitioned"] = all(p.ds_tensor.numel() < p.ds_numel for p in params if p.ds_numel > 1)
    with deepspeed.zero.GatheredParameters(params):
        result["zero3"] = max_diff({k: v.clone() for k, v in zero3.state_dict().items()}, ref)

    pipe = build_model(from_dict({"train": {"seed": SEED, "pipeline_stages": 2}}), cfg, {}, zero_stage=1)
    result["pipeline"] = max_diff(gather_gpt_state(pipe, cfg), ref)

    other = GPT(cfg)
    init_weights(other, SEED + 1)
    result["other_seed"] = max_diff(other.state_dict(), ref)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(next(a.removeprefix("--out=") for a in sys.argv if a.startswith("--out=")))

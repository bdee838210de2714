"""One rank of the planner's memory check, started by the real `deepspeed` launcher (test_planner.py).

For each DeepSpeed JSON of --ds=PATH[,PATH...] and each model of MODELS: builds the engine the way training
does (`training.engine.build_engine`), runs one training step on a random batch, drops the batch and the loss,
and sums the bytes of every tensor storage alive on the rank that was not alive before the engine was built
(unique storages, found through gc.get_objects()). Earlier engines stay referenced, so their memory is
neither counted again nor reused. Rank 0 writes {PATH: {model: [bytes of rank 0, bytes of rank 1, ...]}}
as JSON to --out=PATH. --precisions=fp32,bf16 (default fp32) are the runs' precisions (and the JSON's bf16),
each measured in turn: the JSON is then {precision: {PATH: {model: [...]}}}.
"""

from __future__ import annotations

import copy
import gc
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The models measured: (preset, GPTConfig overrides). Shared with test_planner.py, which predicts them.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("tiny", {}),
    "small": ("tiny", {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8192}),
}
MICRO_BATCH, SEQ_LEN = 2, 32


def live_storages() -> dict[int, int]:
    """data_ptr -> nbytes of every tensor storage reachable as a Python tensor object."""
    import torch

    out = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            if storage.nbytes():
                out[storage.data_ptr()] = storage.nbytes()
    return out


def measure(name: str, ds_json: dict[str, Any], keep: list[Any], precision: str) -> int:
    import torch

    from model.presets import get_preset
    from training.config import from_dict
    from training.engine import build_engine

    preset, overrides = MODELS[name]
    cfg = get_preset(preset, **overrides)
    run = from_dict(
        {
            "model": {"preset": preset, "overrides": overrides},
            "data": {"seq_len": SEQ_LEN},
            "train": {"micro_batch": MICRO_BATCH, "precision": precision},
        }
    )
    ds = copy.deepcopy(ds_json)
    # What training.validate fills: the run owns the batch split, precision and clipping.
    ds.update(
        train_micro_batch_size_per_gpu=MICRO_BATCH, gradient_accumulation_steps=1, gradient_clipping=1.0
    )
    ds["train_batch_size"] = MICRO_BATCH * torch.distributed.get_world_size()
    ds["bf16"], ds["fp16"] = {"enabled": precision == "bf16"}, {"enabled": False}
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    gc.collect()
    before = live_storages()
    engine = build_engine(run, cfg, ds, stage, total_steps=10, device_type="cpu")
    x = torch.randint(0, cfg.vocab_size, (MICRO_BATCH, SEQ_LEN))
    y = torch.randint(0, cfg.vocab_size, (MICRO_BATCH, SEQ_LEN))
    _, loss = engine(x, y)
    engine.backward(loss)
    engine.step()
    del x, y, loss
    keep.append(engine)
    gc.collect()
    after = live_storages()
    return sum(n for ptr, n in after.items() if ptr not in before)


def main(out: str, ds_paths: list[str], precisions: list[str]) -> None:
    import torch.distributed as dist

    from launch.env import LaunchEnv
    from training.validate import load_ds_config

    LaunchEnv.read().init_distributed()
    keep: list[Any] = []
    mine: dict[str, dict[str, dict[str, int]]] = {}
    for prec in precisions:
        for path in ds_paths:
            ds = load_ds_config(path)
            mine.setdefault(prec, {})[path] = {name: measure(name, ds, keep, prec) for name in MODELS}
    every: list[dict[str, dict[str, dict[str, int]]]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, mine)
    if dist.get_rank() == 0:
        result = {
            prec: {path: {name: [r[prec][path][name] for r in every] for name in MODELS} for path in ds_paths}
            for prec in precisions
        }
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    args = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    main(args["out"], args["ds"].split(","), args.get("precisions", "fp32").split(","))
    # As pretrain_gpt.py leaves: after ZeRO-3 a library thread can still be joinable at interpreter exit
    # and its C++ destructor aborts the process (SIGABRT) although the work is done and written.
    from pretrain_gpt import _exit_now

    _exit_now(0)

"""Pretrain a GPT-2 code model with DeepSpeed.

    deepspeed --hostfile hosts pretrain_gpt.py --config run.json --ds_config ds_configs/zero2.json
    deepspeed --num_gpus 8 pretrain_gpt.py --config run.json --ds_config ds_configs/zero3.json
    python pretrain_gpt.py --ds_config ds_configs/zero2_cpu.json --set train.max_steps=20     # one rank

Config: defaults, then --config (JSON with sections model, data, optim, train), then --set overrides
(`--set optim.lr=3e-4 model.n_layer=4`). The DeepSpeed JSON owns the ZeRO stage and its tuning; the run
fills micro batch, accumulation, global batch, precision and clipping, and refuses contradictions.
Everything is validated before an engine is built. Checkpoints in train.save_dir resume automatically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

from training.config import ConfigError, load_run_config

logger = logging.getLogger("pretrain_gpt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="run config JSON (sections: model, data, optim, train)")
    p.add_argument(
        "--ds_config",
        "--deepspeed_config",
        dest="ds_config",
        default="ds_configs/zero2_cpu.json",
        help="DeepSpeed JSON (default: ds_configs/zero2_cpu.json)",
    )
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.max_steps=10"
    )
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even if the data or tokenizer differ from the checkpoint's",
    )
    p.add_argument(
        "--cpu-shm-allreduce",
        action="store_true",
        help="on CPU, build DeepSpeed's shared-memory all-reduce op (a 40-90 s compile)",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def _single_process_env() -> None:
    """`python pretrain_gpt.py` without a launcher: one rank on this host (MPI launches set their own)."""
    if any(v in os.environ for v in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")):
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def init_distributed(cpu_shm_allreduce: bool) -> None:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and not cpu_shm_allreduce:
        # On the CPU accelerator the first init_distributed JIT-compiles a shared-memory all-reduce op
        # (40-90 s of g++, a 66 MiB /dev/shm buffer per launch). There is no switch: build_shm_op() in
        # deepspeed/comm/torch.py builds it when ops.__compatible_ops__["deepspeed_shm_comm"] is true, and
        # that dict persists edits. gloo's all-reduce is used instead.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _single_process_env()
    from training.metrics import setup_logging

    setup_logging(int(os.environ.get("RANK", 0)), args.verbose)
    try:
        run = load_run_config(args.config, args.set)
        from training.validate import load_ds_config, validate

        ds_json = load_ds_config(args.ds_config)
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1)))
        resolved = validate(run, ds_json, args.ds_config, world, device_type)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return train(run, resolved, args)


def agree_on_precision(run, resolved, args: argparse.Namespace):
    """Collective: every rank measured its device; all must train in one precision. If "auto" resolved
    differently on some rank (mixed hosts, or a measurement at the margin), every rank takes fp32. Rank 0
    logs the choice, its reason and a warning for an explicit bf16 that runs slowly here."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from training.validate import load_ds_config, validate

    choice = resolved.precision
    ranks_bf16 = torch.tensor([1.0 if choice.precision == "bf16" else 0.0])
    low, high = ranks_bf16.clone(), ranks_bf16.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        logger.warning(
            "train.precision auto resolved to bf16 on some ranks and fp32 on others (this rank: %s); "
            "training in fp32 on every rank. Set train.precision explicitly to choose",
            choice.reason,
        )
        fp32 = dataclasses.replace(run, train=dataclasses.replace(run.train, precision="fp32"))
        world = dist.get_world_size()
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        again = validate(fp32, load_ds_config(args.ds_config), args.ds_config, world, device_type)
        reason = "ranks disagreed on auto; fp32 everywhere"
        return dataclasses.replace(again, precision=dataclasses.replace(again.precision, reason=reason))
    logger.info("precision %s (train.precision %s): %s", choice.precision, choice.requested, choice.reason)
    if choice.warning and dist.get_rank() == 0:
        logger.warning("%s", choice.warning)
    return resolved


def train(run, resolved, args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from data_tools.manifest import load_manifest, manifest_hash
    from training.checkpoint import seed_everything
    from training.engine import build_engine
    from training.loop import StopRequest, Trainer, TrainingAborted, total_steps

    stop = StopRequest()  # installed before the slow start-up, so an early SIGTERM is not lost
    init_distributed(args.cpu_shm_allreduce)
    rank = dist.get_rank()
    resolved = agree_on_precision(run, resolved, args)
    seed_everything(run.train.seed + 1000 * rank)  # a resume then restores each rank's saved state
    expected = {
        "resume_config": run.resume_values(resolved.precision.precision),
        "tokenizer": ",".join(load_manifest(p)["tokenizer"]["sha256"][:16] for p in run.data.paths),
        "data_manifest": ",".join(manifest_hash(p)[:16] for p in run.data.paths),
        "data_paths": list(run.data.paths),
    }
    if rank == 0:
        os.makedirs(run.train.save_dir, exist_ok=True)
        with open(os.path.join(run.train.save_dir, "run_config.json"), "w") as f:
            resolved_fields = {"model": resolved.model.to_dict(), "precision": resolved.precision.precision}
            json.dump({**run.to_dict(), "resolved": resolved_fields}, f, indent=2)
        with open(os.path.join(run.train.save_dir, "ds_config.json"), "w") as f:
            json.dump(resolved.ds_config, f, indent=2)
    steps = total_steps(run, resolved.ds_config["train_batch_size"])
    engine = build_engine(run, resolved.model, resolved.ds_config, resolved.zero_stage, steps)
    try:
        trainer = Trainer(run, resolved, engine, expected, args.force_resume)
        result = trainer.fit(stop)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingAborted as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    logger.info("done: %s", json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _exit_now(code: int) -> None:
    """Leave without running C++ static destructors. After ZeRO-3 (seen with optimizer or parameter offload
    on CPU ranks) a library thread can still be joinable at interpreter exit, and its destructor calls
    std::terminate ("terminate called without an active exception", SIGABRT) although the run finished
    and saved. Everything of ours is flushed and closed by now."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
